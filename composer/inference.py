"""Read a model's answers, choice picks and target losses on examples, batched.

On causal models :func:`read_examples` gets all three from one read of each prompt (the
choices and the target follow it in its row, the answer is decoded from the KV cache; what
every prompt begins with, such as few-shot demonstrations, is read once for all of them);
:func:`generate_answers`, :func:`choice_picks` and :func:`sequence_logprobs` are the separate
passes (seq2seq models use them), :func:`mean_loss` the mean target-token loss. The model is
used as it is: attach a LoRA (PEFT or the composer's runtime) before calling. What the
readings score is :mod:`composer.metrics`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from composer.batching import (
    can_pack,
    make_batch,
    packed_length,
    prefix_groups,
    target_token_losses,
)
from composer.data import (
    EncodedExample,
    Example,
    encode_target,
    fit_example,
    prompt_ids,
)
from composer.models import LoadedModel


@torch.no_grad()
def mean_loss(
    loaded: LoadedModel, encoded: Sequence[EncodedExample], batch_size: int = 16,
    *, packed: bool = True,
) -> float:
    """Mean target-token cross-entropy over ``encoded`` (all tokens weigh the same), in
    batches of ``batch_size`` examples, packed or right-padded (see ``make_batch``)."""
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = make_batch(chunk, loaded.model, packed=packed).to(loaded.device)
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


@dataclass
class Readings:
    """What one read of each prompt gives, per example (see :func:`read_examples`)."""

    answers: list[str | None]  # greedy answer; None when nothing was generated
    picks: list[str | None]  # the picked choice; None for an example without choices
    target_nll: list[float]  # summed target-token cross-entropy of the example's target
    target_tokens: list[int]  # how many target tokens that sum covers
    prompt_cut: list[bool]  # the prompt was longer than max_length and lost its beginning


@dataclass
class _Row:
    """One prompt of ``example`` and what continues it: its first ``n_choices`` options are the
    example's choices; when ``answers``, the answer is generated from this prompt and the last
    option is the target."""

    options: list[EncodedExample]
    example: int
    n_choices: int
    answers: bool


def _rows(
    loaded: LoadedModel,
    examples: Sequence[Example],
    encoded: Sequence[EncodedExample],
    full_prompts: Sequence[tuple[int, ...]],
    max_length: int,
) -> list[_Row]:
    tok = loaded.tokenizer
    rows: list[_Row] = []
    for i, (ex, enc, full) in enumerate(zip(examples, encoded, full_prompts, strict=True)):
        # The answer is generated from, and the target scored after, the prompt as
        # encode_examples cuts it (leaving room for the target); the choices follow the
        # prompt as choice_picks cuts it. They are one row unless the two cuts differ.
        choices = [EncodedExample(full[-max_length:], tuple(encode_target(tok, c, seq2seq=False)))
                   for c in ex.choices or ()]
        if choices and choices[0].prompt_ids != enc.prompt_ids:
            rows.append(_Row(choices, i, len(choices), answers=False))
            choices = []
        rows.append(_Row([*choices, enc], i, len(choices), answers=True))
    return rows


def shared_prefix(prompts: Sequence[tuple[int, ...]]) -> int:
    """How many leading tokens every prompt has in common, leaving each at least its last
    token (whose logits start its answer)."""
    if not prompts:
        return 0
    # The common prefix of a set of sequences is that of its lexicographic extremes.
    common = 0
    for a, b in zip(min(prompts), max(prompts), strict=False):
        if a != b:
            break
        common += 1
    return max(min(common, min(map(len, prompts)) - 1), 0)


@dataclass
class _Prefix:
    """The tokens every row begins with, read once: their KV cache for a batch of one."""

    length: int
    cache: Any

    def for_batch(self, size: int) -> Any:
        """A copy of the cache for ``size`` rows, to extend with each row's own tokens."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(size)
        return cache


def _read_prefix(loaded: LoadedModel, ids: Sequence[int]) -> _Prefix:
    from composer.batching import causal_logits_at

    device = loaded.device
    _, cache = causal_logits_at(
        loaded.model,
        input_ids=torch.tensor([list(ids)], device=device),
        attention_mask=torch.ones((1, 1, len(ids), len(ids)), dtype=torch.bool,
                                  device=device).tril(),
        position_ids=torch.arange(len(ids), device=device)[None],
        rows=torch.zeros(1, dtype=torch.long, device=device),
        cols=torch.full((1,), len(ids) - 1, device=device),
        use_cache=True,
    )
    return _Prefix(len(ids), cache)


@torch.inference_mode()
def read_examples(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    demonstrations: Sequence[Example] = (),
    use_chat_template: bool = True,
    max_length: int = 1024,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    max_tokens: int = 8192,
    share_prefix: bool = True,
    progress: Any = None,
) -> Readings:
    """Greedy answers, picked choices and target losses, reading each prompt once.

    Gives what :func:`generate_answers` (on :func:`composer.data.encode_examples` prompts),
    :func:`choice_picks` and :func:`mean_loss` give, to float rounding, for a causal model.
    Each prompt is one row of the batch with its choices and target after it, each seeing
    the prompt and itself only (:func:`composer.batching.pack_causal`); rows of similar
    length are left-padded together (:func:`composer.batching.stack_packed`), and the greedy
    answer is decoded from the batch's KV cache, each new token seeing its prompt and its own
    earlier tokens. The tokens every prompt begins with (few-shot demonstrations, a chat
    template's system turn) are read once, and every row attends to their KV cache: a 5-shot
    evaluation reads little more than a zero-shot one (``share_prefix=False`` reads each
    prompt whole). ``max_new_tokens=0`` generates nothing; None means the longest target +
    8. A forward reads at most ``batch_size`` rows and, unless one row is longer,
    ``max_tokens`` of their own tokens (padding included). A sliding-window model (Gemma 3)
    gets the window in our masks (:func:`composer.batching.windowed_masks`). Seq2seq models
    take the separate passes, and so do examples longer than the window of a sliding-window
    model whose masks cannot carry it.
    """
    tok = loaded.tokenizer
    # Each prompt is rendered once; encode_examples' cut of it comes from fit_example.
    full = [prompt_ids(tok, ex.input, demonstrations=demonstrations,
                       use_chat_template=use_chat_template) for ex in examples]
    encoded = [
        fit_example(f, encode_target(tok, ex.target, seq2seq=loaded.is_seq2seq),
                    seq2seq=loaded.is_seq2seq, max_length=max_length)
        for f, ex in zip(full, examples, strict=True)
    ]
    cut = [len(f) > len(e.prompt_ids) for f, e in zip(full, encoded, strict=True)]
    if max_new_tokens is None:
        max_new_tokens = max((len(e.target_ids) for e in encoded), default=0) + 8
    # The greedy answer is read from the prompt's cache: all of it must fit a sliding window.
    longest = [max(len(f), len(e.prompt_ids) + len(e.target_ids)) + max_new_tokens
               for f, e in zip(full, encoded, strict=True)]
    if (loaded.is_seq2seq or any(not e.prompt_ids for e in encoded)
            or not can_pack(loaded.model, longest)):
        return _read_separately(
            loaded, examples, encoded, cut, demonstrations=demonstrations,
            use_chat_template=use_chat_template, max_length=max_length,
            max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
        )
    rows = _rows(loaded, examples, encoded, full, max_length)
    readings = Readings([None] * len(examples), [None] * len(examples),
                        [0.0] * len(examples), [0] * len(examples), cut)
    # What the prompts that were not cut begin with is read once; a cut prompt lost its
    # beginning and is read whole.
    uncut = [o.prompt_ids for r in rows if not cut[r.example] for o in r.options]
    common = shared_prefix(uncut) if share_prefix else 0
    head = uncut[0][:common] if common else ()
    after: list[_Row] = []
    whole: list[_Row] = []
    for r in rows:
        starts = common > 0 and all(len(o.prompt_ids) > common and o.prompt_ids[:common] == head
                                    for o in r.options)
        (after if starts else whole).append(r)
    parts: list[tuple[list[_Row], _Prefix | None]] = [(whole, None)]
    if after:
        tails = [_Row([EncodedExample(o.prompt_ids[common:], o.target_ids) for o in r.options],
                      r.example, r.n_choices, r.answers) for r in after]
        parts.append((tails, _read_prefix(loaded, head)))
    for part, prefix in parts:
        _read_in_batches(loaded, examples, part, prefix, batch_size=batch_size,
                         max_tokens=max_tokens, max_new_tokens=max_new_tokens,
                         readings=readings, progress=progress)
    return readings


def _read_in_batches(
    loaded: LoadedModel,
    examples: Sequence[Example],
    rows: Sequence[_Row],
    prefix: _Prefix | None,
    *,
    batch_size: int,
    max_tokens: int,
    max_new_tokens: int,
    readings: Readings,
    progress: Any,
) -> None:
    """Read ``rows`` in batches of similar length, at most ``batch_size`` rows and (unless one
    row is longer) ``max_tokens`` tokens each, padding included."""
    sizes = [packed_length(r.options) for r in rows]
    chunk: list[_Row] = []
    for r in sorted(range(len(rows)), key=sizes.__getitem__):
        if chunk and (len(chunk) == batch_size or (len(chunk) + 1) * sizes[r] > max_tokens):
            _read_rows(loaded, examples, chunk, prefix, max_new_tokens, readings, progress)
            chunk = []
        chunk.append(rows[r])
    if chunk:
        _read_rows(loaded, examples, chunk, prefix, max_new_tokens, readings, progress)


def _read_rows(
    loaded: LoadedModel,
    examples: Sequence[Example],
    rows: Sequence[_Row],
    prefix: _Prefix | None,
    max_new_tokens: int,
    readings: Readings,
    progress: Any,
) -> None:
    """Read a batch of rows; with ``prefix``, the rows are what follows it, and every token
    sees the prefix's cached keys and values as well."""
    from composer.batching import causal_logits_at, pack_causal, stack_packed

    tok = loaded.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = stack_packed([pack_causal(r.options) for r in rows], pad_id).to(loaded.device)
    # One prompt per row: its span, and the logits after it give each answer's first token.
    assert len(batch.prompt_spans) == len(rows) and batch.attention_mask is not None
    assert batch.position_ids is not None
    last = torch.tensor([start + length - 1 for start, length in batch.prompt_spans],
                        device=loaded.device)
    mask, positions, cache, before = batch.attention_mask, batch.position_ids, None, 0
    keys = positions  # the position of every key a token may see
    if prefix is not None:
        before = prefix.length
        seen = torch.ones((*mask.shape[:3], before), dtype=torch.bool, device=mask.device)
        mask = torch.cat([seen, mask], dim=-1)
        positions = positions + before
        ahead = torch.arange(before, device=positions.device).expand(len(rows), before)
        keys = torch.cat([ahead, positions], dim=1)
        cache = prefix.for_batch(len(rows))
    logits, cache = causal_logits_at(
        loaded.model,
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=positions,
        rows=torch.cat([batch.target_rows, torch.arange(len(rows), device=loaded.device)]),
        cols=torch.cat([batch.target_cols, last]),
        cache=cache,
        use_cache=max_new_tokens > 1 or cache is not None,
        key_positions=keys,
    )
    n_target = len(batch.target_ids)
    losses = torch.nn.functional.cross_entropy(
        logits[:n_target].float(), batch.target_ids, reduction="none"
    )
    nll = torch.zeros(batch.n_examples, dtype=torch.float64, device=losses.device)
    nll.index_add_(0, batch.target_example, losses.double())
    counts = torch.bincount(batch.target_example, minlength=batch.n_examples).tolist()
    sums = nll.tolist()
    answering = [b for b, r in enumerate(rows) if r.answers]
    answers = (
        _decode_greedy(loaded, logits[n_target:], cache, batch.prompt_spans, keys,
                       max_new_tokens, answering, before=before)
        if max_new_tokens > 0 else {}
    )
    first = 0  # index of the row's first option among the batch's examples
    for b, row in enumerate(rows):
        i = row.example
        if row.answers:
            target = first + len(row.options) - 1
            readings.target_nll[i] = sums[target]
            readings.target_tokens[i] = counts[target]
        choices = examples[i].choices
        if row.n_choices and choices:
            own = [-sums[first + c] for c in range(row.n_choices)]
            readings.picks[i] = choices[max(range(len(own)), key=own.__getitem__)]
        if b in answers:
            readings.answers[i] = answers[b]
        first += len(row.options)
    if progress is not None:
        progress.update(sum(r.answers for r in rows))


def _decode_greedy(
    loaded: LoadedModel,
    first_logits: torch.Tensor,
    cache: Any,
    spans: Sequence[tuple[int, int]],
    keys: torch.Tensor,
    max_new_tokens: int,
    rows: Sequence[int],
    *,
    before: int = 0,
) -> dict[int, str]:
    """Greedy continuations of the prompts of ``rows`` of a cached batch.

    ``keys`` holds the positions of the cached tokens, ``before`` of them that every prompt
    begins with and then the batch's columns; row b's prompt sits at ``spans[b]`` (start,
    length) among the columns, with what follows it (choices, targets) hidden from the new
    tokens. Step t feeds every row's last token at position ``before + length + t - 1``, as
    batched generation with padding does. Rows that are done (or not asked for) go on reading
    end tokens no one looks at.
    """
    from composer.batching import causal_logits_at

    eos = loaded.tokenizer.eos_token_id
    device = loaded.device
    n = len(spans)
    tokens = [[int(t)] for t in first_logits.argmax(dim=-1).tolist()]
    asked = set(rows)
    done = [b not in asked for b in range(n)]
    prompt_mask = torch.zeros(keys.shape, dtype=torch.bool, device=device)
    prompt_mask[:, :before] = True
    for b, (start, length) in enumerate(spans):
        prompt_mask[b, before + start : before + start + length] = True
    lengths = torch.tensor([before + length for _, length in spans], device=device)
    for step in range(1, max_new_tokens):
        done = [d or t[-1] == eos for d, t in zip(done, tokens, strict=True)]
        if all(done):
            break
        mask = torch.cat([prompt_mask, torch.ones((n, step), dtype=torch.bool, device=device)],
                         dim=1)
        ids = torch.tensor([[eos if d else t[-1]] for d, t in zip(done, tokens, strict=True)],
                           device=device)
        position = (lengths + step - 1)[:, None]
        keys = torch.cat([keys, position], dim=1)
        logits, cache = causal_logits_at(
            loaded.model,
            input_ids=ids,
            attention_mask=mask[:, None, None, :],
            position_ids=position,
            rows=torch.arange(n, device=device),
            cols=torch.zeros(n, dtype=torch.long, device=device),
            cache=cache,
            use_cache=True,
            key_positions=keys,
        )
        for b, t in enumerate(logits.argmax(dim=-1).tolist()):
            if not done[b]:
                tokens[b].append(int(t))
    texts = loaded.tokenizer.batch_decode([tokens[b] for b in rows], skip_special_tokens=True)
    return dict(zip(rows, texts, strict=True))


def _read_separately(
    loaded: LoadedModel,
    examples: Sequence[Example],
    encoded: Sequence[EncodedExample],
    prompt_cut: list[bool],
    *,
    demonstrations: Sequence[Example],
    use_chat_template: bool,
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    progress: Any,
) -> Readings:
    answers: list[str | None] = [None] * len(examples)
    if max_new_tokens > 0:
        answers = list(generate_answers(
            loaded, [e.prompt_ids for e in encoded], max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        ))
    picks = choice_picks(loaded, examples, demonstrations=demonstrations,
                         use_chat_template=use_chat_template, max_length=max_length,
                         batch_size=batch_size)
    nll = [-x for x in sequence_logprobs(loaded, encoded, batch_size)]
    if progress is not None:
        progress.update(len(examples))
    # Without a prompt a causal model cannot predict the first target token.
    skipped = 0 if loaded.is_seq2seq else 1
    counts = [len(e.target_ids) - (0 if e.prompt_ids else skipped) for e in encoded]
    return Readings(answers, picks, nll, counts, prompt_cut)


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
        prompt = prompt_ids(tok, ex.input, demonstrations=demonstrations,
                            use_chat_template=use_chat_template)[-max_length:]
        options.extend(
            EncodedExample(prompt, tuple(encode_target(tok, c, seq2seq=loaded.is_seq2seq)))
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
