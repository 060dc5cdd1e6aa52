"""Evaluate a model (with or without a LoRA) on a task file.

- exact match after :func:`composer.data.normalize_answer`, from batched greedy generation
  (left padding for causal models);
- for examples with ``choices``: multiple-choice accuracy, picking the choice whose tokens
  (plus end-of-sequence) have the highest log-likelihood after the prompt;
- the mean target-token loss.

The model is used as it is: attach a LoRA (PEFT or the composer's runtime) before calling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from composer.batching import make_batch, packed_length, prefix_groups, target_token_losses
from composer.data import (
    EncodedExample,
    Example,
    encode_examples,
    encode_prompt,
    encode_target,
    normalize_answer,
    render_prompt,
)
from composer.models import LoadedModel


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run."""

    batch_size: int = field(default=16, metadata={"help": "prompts per generation batch"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "generation length (default: longest target + 8)"}
    )
    few_shot: int = field(default=0, metadata={"help": "in-context demonstrations per prompt"})
    use_chat_template: bool = field(default=True, metadata={"help": "render with chat template"})
    max_length: int = field(default=1024, metadata={"help": "max prompt tokens"})
    generate: bool = field(default=True, metadata={"help": "compute exact match by generation"})


@dataclass
class EvalReport:
    """Metrics of one evaluation, plus the predictions."""

    n_examples: int
    loss: float
    exact_match: float | None = None
    choice_accuracy: float | None = None
    n_choice_examples: int = 0
    predictions: list[dict[str, Any]] = field(default_factory=list)
    label_distribution: dict[str, int] = field(default_factory=dict)
    majority_label: str | None = None
    majority_rate: float | None = None

    def summary(self) -> dict[str, Any]:
        """The metrics as a JSON-friendly dict (no per-example predictions)."""
        out: dict[str, Any] = {
            "n_examples": self.n_examples,
            "loss": round(self.loss, 6),
            "exact_match": None if self.exact_match is None else round(self.exact_match, 6),
        }
        if self.n_choice_examples:
            out["choice_accuracy"] = round(self.choice_accuracy or 0.0, 6)
            out["n_choice_examples"] = self.n_choice_examples
        if self.label_distribution:
            out["predicted_labels"] = dict(self.label_distribution)
        if self.majority_label is not None:
            out["majority_label"] = self.majority_label
            out["majority_rate"] = round(self.majority_rate or 0.0, 6)
        return out


@torch.inference_mode()
def mean_loss(
    loaded: LoadedModel, encoded: Sequence[EncodedExample], batch_size: int = 16
) -> float:
    """Mean target-token cross-entropy over ``encoded`` (all tokens weigh the same)."""
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = make_batch(encoded[start : start + batch_size], loaded.model).to(loaded.device)
        losses = target_token_losses(loaded.model, batch)
        total += float(losses.sum())
        count += losses.numel()
    return total / max(count, 1)


@torch.inference_mode()
def sequence_logprobs(
    loaded: LoadedModel,
    encoded: Sequence[EncodedExample],
    batch_size: int = 16,
    max_tokens: int = 1024,
) -> list[float]:
    """Sum of target-token log-probabilities of each encoded example.

    Put the choices of one question next to each other with the same prompt: a causal model
    then reads the prompt once for all of them (see :func:`composer.batching.pack_causal`).
    A forward reads at most ``batch_size`` prompts and ``max_tokens`` packed tokens; the
    choices of one prompt are never split (a prompt longer than ``max_tokens`` goes alone).
    """
    scores: list[float] = []
    for chunk in _chunks(encoded, batch_size, max_tokens, loaded.is_seq2seq):
        batch = make_batch(chunk, loaded.model).to(loaded.device)
        losses = target_token_losses(loaded.model, batch)
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=losses.device)
        sums.index_add_(0, batch.target_example, losses.double())
        scores.extend((-sums).tolist())
    return scores


def _chunks(
    encoded: Sequence[EncodedExample], batch_size: int, max_tokens: int, seq2seq: bool
) -> list[Sequence[EncodedExample]]:
    if seq2seq:  # padded rows, one per sequence: plain fixed-size batches
        return [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    chunks: list[Sequence[EncodedExample]] = []
    start, prompts, tokens = 0, 0, 0
    for group in prefix_groups(encoded):
        size = packed_length([encoded[i] for i in group])
        if prompts and (prompts == batch_size or tokens + size > max_tokens):
            chunks.append(encoded[start : group[0]])
            start, prompts, tokens = group[0], 0, 0
        prompts += 1
        tokens += size
    if start < len(encoded):
        chunks.append(encoded[start:])
    return chunks


@torch.inference_mode()
def generate_answers(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Any = None,
) -> list[str]:
    """Greedy answers for tokenised prompts, batched (left padding for causal models)."""
    tok = loaded.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        width = max(1, max(len(p) for p in chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            if loaded.is_seq2seq:  # encoders take right padding
                ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
                mask[i, : len(p)] = 1
            elif p:
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
        model: Any = loaded.model
        out = model.generate(
            input_ids=ids.to(loaded.device),
            attention_mask=mask.to(loaded.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            eos_token_id=tok.eos_token_id,
        )
        new = out if loaded.is_seq2seq else out[:, width:]
        answers.extend(tok.batch_decode(new, skip_special_tokens=True))
        if progress is not None:
            progress.update(len(chunk))
    return answers


def evaluate_examples(
    loaded: LoadedModel,
    examples: Sequence[Example],
    config: EvalConfig | None = None,
    *,
    demonstrations: Sequence[Example] = (),
    progress: bool = True,
) -> EvalReport:
    """Loss, exact match and (when examples have choices) multiple-choice accuracy."""
    from tqdm.auto import tqdm

    config = config or EvalConfig()
    tok = loaded.tokenizer
    loaded.model.eval()
    encoded = encode_examples(
        tok,
        examples,
        seq2seq=loaded.is_seq2seq,
        max_length=config.max_length,
        use_chat_template=config.use_chat_template,
        demonstrations=demonstrations,
    )
    loss = mean_loss(loaded, encoded, config.batch_size)
    report = EvalReport(n_examples=len(examples), loss=loss)
    n_choice = sum(1 for ex in examples if ex.choices)
    total_work = (len(examples) if config.generate else 0) + n_choice
    bar = tqdm(total=total_work, desc="eval", unit="ex", disable=not progress or total_work == 0)
    try:
        if config.generate:
            longest = max(len(e.target_ids) for e in encoded)
            answers = generate_answers(
                loaded,
                [e.prompt_ids for e in encoded],
                max_new_tokens=config.max_new_tokens or longest + 8,
                batch_size=config.batch_size,
                progress=bar,
            )
            hits = 0
            for ex, answer in zip(examples, answers, strict=True):
                ok = normalize_answer(answer) == normalize_answer(ex.target)
                hits += ok
                report.predictions.append(
                    {"input": ex.input, "target": ex.target, "prediction": answer, "correct": ok}
                )
            report.exact_match = hits / len(examples) if examples else 0.0
        if n_choice:
            correct, labels = _choice_accuracy(loaded, examples, config, demonstrations, bar)
            report.choice_accuracy = correct / n_choice
            report.n_choice_examples = n_choice
            report.label_distribution = dict(labels.most_common())
            # What always answering the commonest target scores: the bar a model must beat.
            targets = Counter(ex.target for ex in examples if ex.choices)
            report.majority_label, top = targets.most_common(1)[0]
            report.majority_rate = top / n_choice
    finally:
        bar.close()
    return report


def choice_picks(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    demonstrations: Sequence[Example] = (),
    use_chat_template: bool = True,
    max_length: int = 1024,
    batch_size: int = 16,
) -> list[str | None]:
    """The choice with the highest log-likelihood after each example's prompt (the first of
    equal scores), or None for an example without choices."""
    tok = loaded.tokenizer
    options: list[EncodedExample] = []
    for ex in examples:
        if not ex.choices:
            continue
        prompt = render_prompt(
            tok, ex.input, demonstrations=demonstrations, use_chat_template=use_chat_template
        )
        prompt_ids = tuple(encode_prompt(tok, prompt, use_chat_template=use_chat_template)
                           [-max_length:])
        options.extend(
            EncodedExample(prompt_ids, tuple(encode_target(tok, c, seq2seq=loaded.is_seq2seq)))
            for c in ex.choices
        )
    scores = iter(sequence_logprobs(loaded, options, batch_size) if options else [])
    picks: list[str | None] = []
    for ex in examples:
        if not ex.choices:
            picks.append(None)
            continue
        own = [next(scores) for _ in ex.choices]
        picks.append(ex.choices[max(range(len(own)), key=own.__getitem__)])
    return picks


def _choice_accuracy(
    loaded: LoadedModel,
    examples: Sequence[Example],
    config: EvalConfig,
    demonstrations: Sequence[Example],
    bar: Any,
) -> tuple[int, Counter[str]]:
    correct = 0
    labels: Counter[str] = Counter()
    with_choices = [ex for ex in examples if ex.choices]
    for start in range(0, len(with_choices), config.batch_size):
        chunk = with_choices[start : start + config.batch_size]
        picks = choice_picks(
            loaded, chunk, demonstrations=demonstrations,
            use_chat_template=config.use_chat_template, max_length=config.max_length,
            batch_size=config.batch_size,
        )
        for ex, picked in zip(chunk, picks, strict=True):
            assert picked is not None
            labels[picked] += 1
            correct += picked == ex.target
        bar.update(len(chunk))
    return correct, labels
