"""The `choice` search objective against a direct computation on a tiny model."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from composer.data import EncodedExample, Example, encode_prompt, encode_target, render_prompt
from composer.inference import sequence_logprobs
from composer.objectives import ChoiceObjective, get_objective
from loradex.errors import ConfigError

EXAMPLES = [
    Example("yes or no?", "yes", ("yes", "no")),
    Example("the cat sat on the", "mat", ("mat", "sky", "four")),
    Example("one two three", "four", ("four", "five")),
]


def _direct(loaded, examples: list[Example], normalized: bool) -> float:
    """Mean -log softmax(choice log-likelihoods)[correct], scored like `loradex eval` does."""
    tok = loaded.tokenizer
    total = 0.0
    for ex in examples:
        assert ex.choices is not None
        prompt = tuple(encode_prompt(tok, render_prompt(tok, ex.input), use_chat_template=True))
        options = [EncodedExample(prompt, tuple(encode_target(tok, c, seq2seq=False)))
                   for c in ex.choices]
        scores = sequence_logprobs(loaded, options)
        if normalized:
            scores = [s / len(o.target_ids) for s, o in zip(scores, options, strict=True)]
        logz = math.log(sum(math.exp(s) for s in scores))
        total += logz - scores[ex.choices.index(ex.target)]
    return total / len(examples)


@pytest.mark.parametrize("normalized", [False, True])
def test_choice_objective_equals_direct_computation(
    tiny_causal_dir: Path, load_tiny: Callable[..., object], normalized: bool
) -> None:
    loaded = load_tiny(tiny_causal_dir)
    objective = ChoiceObjective(length_normalized=normalized)
    objective.prepare(loaded, EXAMPLES, use_chat_template=True)
    got = objective.losses(1)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(_direct(loaded, EXAMPLES, normalized), rel=1e-4)
    # A repeated batch (one group per CMA-ES candidate) gives the same loss in every group.
    assert torch.allclose(objective.losses(3), got.repeat(3), rtol=1e-5)


def test_choice_objective_is_registered_and_refuses_free_form(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    assert isinstance(get_objective("choice"), ChoiceObjective)
    loaded = load_tiny(tiny_causal_dir)
    with pytest.raises(ConfigError, match="needs 'choices' on every example"):
        get_objective("choice").prepare(
            loaded, [*EXAMPLES, Example("past tense of walk", "walked")], use_chat_template=True
        )


def test_eval_majority_rate_on_a_constructed_example(
    tiny_causal_dir: Path, load_tiny: Callable[..., object]
) -> None:
    from composer.metrics import EvalConfig, evaluate_examples

    loaded = load_tiny(tiny_causal_dir)
    rows = [Example(f"yes or no {i}?", {"y": "yes", "n": "no"}[t], ("yes", "no"))
            for i, t in enumerate("yyyn")]
    rows.append(Example("past tense of walk", "walked"))  # no choices: not counted
    report = evaluate_examples(loaded, rows, EvalConfig(generate=False), progress=False)
    assert report.n_choice_examples == 4
    assert (report.majority_label, report.majority_rate) == ("yes", 0.75)
    assert sum(report.label_distribution.values()) == 4
