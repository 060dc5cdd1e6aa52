"""Score a model on a task file: exact match, multiple-choice accuracy, labels, loss.

- exact match after :func:`composer.data.normalize_answer`, of the greedy answer;
- for examples with ``choices``: multiple-choice accuracy, picking the choice whose tokens
  (plus end-of-sequence) have the highest log-likelihood after the prompt, the distribution of
  the picked labels and the majority rate (what always answering the commonest target scores);
- the mean target-token loss.

:func:`evaluate_examples` reads the model once (:func:`composer.inference.read_examples`) and
scores what it read with the small functions here, which take plain answers and targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from composer.data import Example, normalize_answer

if TYPE_CHECKING:
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
    prompts_cut: int = 0  # prompts longer than max_length, cut from the left

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
        if self.prompts_cut:
            out["prompts_cut"] = self.prompts_cut
        return out


def answer_matches(answer: str | None, target: str) -> bool:
    """Whether a greedy answer (None: nothing generated) is the target, once both are
    normalised (:func:`composer.data.normalize_answer`)."""
    return normalize_answer(answer or "") == normalize_answer(target)


def accuracy(hits: Sequence[bool]) -> float:
    """The share of true ``hits``; 0.0 when there are none to count."""
    return sum(hits) / len(hits) if hits else 0.0


def label_distribution(labels: Iterable[str]) -> dict[str, int]:
    """How often each label occurs, commonest first (ties by label, so runs compare equal)."""
    counts = Counter(labels)
    return {k: counts[k] for k in sorted(counts, key=lambda t: (-counts[t], t))}


def majority(targets: Iterable[str]) -> tuple[str | None, float]:
    """The commonest target and its share: what always answering it scores, the bar a model
    must beat. ``(None, 0.0)`` for no targets."""
    counts = Counter(targets)
    if not counts:
        return None, 0.0
    label = min(counts, key=lambda t: (-counts[t], t))  # ties by label: deterministic
    return label, counts[label] / counts.total()


def evaluate_examples(
    loaded: LoadedModel,
    examples: Sequence[Example],
    config: EvalConfig | None = None,
    *,
    demonstrations: Sequence[Example] = (),
    progress: bool = True,
) -> EvalReport:
    """Loss, exact match and (when examples have choices) multiple-choice accuracy, from one
    read of each prompt (:func:`composer.inference.read_examples`)."""
    # Imported here so that the metric functions above load without torch.
    from tqdm.auto import tqdm

    from composer.inference import read_examples

    config = config or EvalConfig()
    loaded.model.eval()
    bar = tqdm(total=len(examples), desc="eval", unit="ex", disable=not progress or not examples)
    try:
        read = read_examples(
            loaded, examples, demonstrations=demonstrations,
            use_chat_template=config.use_chat_template, max_length=config.max_length,
            max_new_tokens=(config.max_new_tokens or None) if config.generate else 0,
            batch_size=config.batch_size, progress=bar,
        )
    finally:
        bar.close()
    loss = sum(read.target_nll) / max(sum(read.target_tokens), 1)
    report = EvalReport(n_examples=len(examples), loss=loss, prompts_cut=sum(read.prompt_cut))
    if config.generate:
        hits = [answer_matches(answer, ex.target)
                for ex, answer in zip(examples, read.answers, strict=True)]
        report.predictions = [
            {"input": ex.input, "target": ex.target, "prediction": answer, "correct": ok}
            for ex, answer, ok in zip(examples, read.answers, hits, strict=True)
        ]
        report.exact_match = accuracy(hits)
    picked = [(ex, p) for ex, p in zip(examples, read.picks, strict=True) if p is not None]
    if picked:
        report.n_choice_examples = len(picked)
        report.choice_accuracy = accuracy([p == ex.target for ex, p in picked])
        report.label_distribution = label_distribution(p for _, p in picked)
        report.majority_label, report.majority_rate = majority(ex.target for ex, _ in picked)
    return report
