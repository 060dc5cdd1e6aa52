"""A row's per-example scores and the metrics computed from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from benchmarks.study.settings import DEFAULT_MAX_LENGTH
from benchmarks.study.stats import label_distribution

if TYPE_CHECKING:
    from composer.data import Example
    from composer.models import LoadedModel

# What a row records per test example; a row extended to a larger split joins these.
PER_EXAMPLE = ("answers", "em_correct", "mc_picks")
# Computed from the per-example scores (or the run): recomputed, not carried over, on extension.
_DERIVED = ("exact_match", "mc_correct", "choice_accuracy", "mc_labels", "generated_labels",
            "seconds", "newly_scored")


def score_test(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    demonstrations: Sequence[Example] = (),
    use_chat_template: bool = True,
    batch_size: int = 16,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> dict[str, Any]:
    """Per-example results of the model as it is: greedy answers, exact match, picked choices
    (and ``prompts_cut``, how many prompts were over ``max_length`` tokens, when any were).

    ``composer.inference.read_examples`` gives them, as ``loradex eval`` does: prompts rendered
    the same way, each read once for its answer and its choices.
    """
    from composer.data import normalize_answer
    from composer.inference import read_examples

    loaded.model.eval()
    read = read_examples(
        loaded, examples, demonstrations=demonstrations, use_chat_template=use_chat_template,
        max_length=max_length, batch_size=batch_size,
    )
    answers = [normalize_answer(a or "") for a in read.answers]
    scored: dict[str, Any] = {
        "answers": answers,
        "em_correct": [int(a == normalize_answer(ex.target))
                       for a, ex in zip(answers, examples, strict=True)],
        "mc_picks": read.picks,
    }
    if any(read.prompt_cut):
        scored["prompts_cut"] = sum(read.prompt_cut)
    return scored


def cell_metrics(result: dict[str, Any], targets: Sequence[str], has_choices: bool) -> None:
    """Add exact match, choice accuracy and label distributions to a system's result."""
    result["exact_match"] = sum(result["em_correct"]) / len(targets)
    if has_choices:
        correct = [int(p == t) for p, t in zip(result["mc_picks"], targets, strict=True)]
        result["mc_correct"] = correct
        result["choice_accuracy"] = sum(correct) / len(targets)
        result["mc_labels"] = label_distribution(p for p in result["mc_picks"] if p is not None)
    result["generated_labels"] = label_distribution(result["answers"])


def extended_row(old: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """A prior row over its first examples joined with the scores of the rest (metrics are
    recomputed by the caller); what the prior row recorded (weights, search) is kept."""
    row = {k: v for k, v in old.items() if k not in PER_EXAMPLE and k not in _DERIVED}
    row.update({k: list(old[k]) + list(scored[k]) for k in PER_EXAMPLE})
    if scored.get("prompts_cut"):
        row["prompts_cut"] = row.get("prompts_cut", 0) + scored["prompts_cut"]
    row["extended_from"] = len(old["em_correct"])
    row["seconds_before_extension"] = old.get("seconds", 0.0)
    return row
