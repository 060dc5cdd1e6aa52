"""The cross-validation guard: keep the search's start point unless the search beats it on
held-out few-shot examples (``--guard cv``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import composer.crossval as crossval
from composer.candidates import read_candidate
from composer.compose import ComposeConfig, ComposeSession, compose, write_composition
from composer.data import Example
from composer.methods import get_method
from composer.objectives import get_objective
from composer.search import SearchConfig, SearchResult
from loradex.errors import ConfigError
from tests.support.tiny_models import FEW_SHOT

EXAMPLES = [Example(r["input"], r["target"], tuple(r["choices"]) if "choices" in r else None)
            for r in FEW_SHOT]
START = [1.0, 0.0]  # the best single candidate, on every fold and on all examples
SEARCHED = [0.6, 0.7]


class _Session:
    """Held-out loss per point: ``start_loss`` at START, ``search_loss`` at SEARCHED."""

    def __init__(self, start_loss: float, search_loss: float) -> None:
        self.table = {tuple(START): start_loss, tuple(SEARCHED): search_loss}

    def losses(self, scorer: object, points: np.ndarray) -> np.ndarray:
        return np.array([self.table.get(tuple(p), 9.0) for p in np.asarray(points)])


def _run(objective: object, seed: int, desc: str) -> SearchResult:
    """A search that tried zero and both candidates alone first, then moved to SEARCHED."""
    first = [([0.0, 0.0], 3.0, 3.0), (START, 1.0, 1.05), ([0.0, 1.0], 2.0, 2.05)]
    history = [{"step": i + 1, "weights": w, "loss": loss, "objective": obj}
               for i, (w, loss, obj) in enumerate(first)]
    history.append({"step": 4, "weights": SEARCHED, "loss": 0.2, "objective": 0.265})
    return SearchResult(np.array(SEARCHED), 0.2, 0.265, history)


@pytest.fixture()
def no_tokenising(monkeypatch):
    monkeypatch.setattr(crossval, "prepared", lambda loaded, config, examples: list(examples))


@pytest.mark.parametrize(("start_loss", "search_loss", "kept"),
                         [(1.0, 2.0, "start"), (1.0, 0.5, "search"), (1.0, 1.0, "start")])
def test_the_guard_keeps_the_start_unless_the_search_wins_held_out(
    no_tokenising, start_loss, search_loss, kept
):
    config = ComposeConfig(start="best-single", guard="cv", search=SearchConfig(budget=10))
    picked = crossval.cross_validated_search(
        _Session(start_loss, search_loss), _run, None, config, EXAMPLES[:4], None, n_first=3,
        zero_loss=3.0)
    guard = picked.guard
    assert guard is not None and guard.kept == kept
    assert guard.start_fold_losses == [start_loss] * 4  # leave-one-out: 4 folds
    assert guard.search_fold_losses == [search_loss] * 4
    if kept == "search":
        assert picked.weights.tolist() == SEARCHED and picked.loss == 0.2
    else:  # the full search's start point, with its own loss and objective
        assert picked.weights.tolist() == START
        assert (picked.loss, picked.objective) == (1.0, 1.05)
    assert picked.search.curve[-1] == 0.265  # the curve plotted is still the search's


def test_a_guarded_search_from_zero_falls_back_to_zero_weights(no_tokenising):
    config = ComposeConfig(guard="cv", search=SearchConfig(budget=10))
    session = _Session(start_loss=9.0, search_loss=9.5)  # zero weights score 9.0 (the default)
    picked = crossval.cross_validated_search(session, _run, None, config, EXAMPLES[:3], None,
                                             n_first=0, zero_loss=9.0)
    assert picked.guard.kept == "start"
    assert picked.weights.tolist() == [0.0, 0.0] and picked.loss == picked.objective == 9.0


def test_the_guard_needs_two_examples_and_a_known_setting():
    with pytest.raises(ConfigError, match="--guard must be one of off, cv"):
        ComposeConfig(guard="yes").make_method()
    with pytest.raises(ConfigError, match=r"--guard cv\) needs at least 2"):
        crossval.cv_folds(1)


def test_guard_on_a_tiny_model_records_both_sides_in_the_provenance(
    tiny_causal_dir, tiny_loras, load_tiny, tmp_path
):
    loaded = load_tiny(tiny_causal_dir)
    cands = [read_candidate(p) for p in tiny_loras[:3]]
    examples = EXAMPLES[:3]
    config = ComposeConfig(start="best-single", guard="cv",
                           search=SearchConfig(budget=8, seed=3))
    result = compose(loaded, cands, examples, config, progress=False)
    guard = result.guard
    assert guard is not None and result.folds == 3 and result.restarts == []
    # Fold 0's start: the best of zero and each candidate alone on examples 1-2, scored on 0.
    fit, held = get_objective("lm"), get_objective("lm")
    fit.prepare(loaded, examples[1:], use_chat_template=True)
    held.prepare(loaded, examples[:1], use_chat_template=True)
    points = np.vstack([np.zeros((1, 3)), np.eye(3)])
    with ComposeSession(loaded, cands, get_method("lorahub")) as session:
        fit_objective = [float(session.losses(fit, p[None])[0]) + 0.05 * np.abs(p).sum()
                         for p in points]
        start0 = points[int(np.argmin(fit_objective))]
        assert guard.start_fold_losses[0] == pytest.approx(
            float(session.losses(held, start0[None])[0]), abs=1e-6)
    assert guard.kept == ("search" if guard.search_cv_loss < guard.start_cv_loss else "start")
    plain = compose(loaded, cands, examples,
                    ComposeConfig(start="best-single", search=SearchConfig(budget=8, seed=3)),
                    progress=False)
    if guard.kept == "search":
        np.testing.assert_allclose(result.weights, plain.weights)
    else:
        assert sorted(np.abs(result.weights).tolist()) in ([0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    folder = write_composition(result, loaded, tmp_path / "out")
    block = json.loads((folder / "loradex_provenance.json").read_text())["composition"]
    assert block["guard"] == "cv" and block["guard_cv"]["kept"] == guard.kept
    assert len(block["guard_cv"]["start_fold_losses"]) == 3
    assert "## Guard" in (folder / "README.md").read_text()
