"""Cross-validation on the few-shot examples: scoring restarts, and the guard that keeps the
start point when the search does not beat it on held-out examples.

With up to 5 examples the folds are leave-one-out (search on 4, score the one left out), with
more, 5 folds. Every search of a fold starts where the full search does (zero weights, or the
best of zero and each candidate alone on that fold's examples), so the start point of each
fold is known without extra evaluations: it is the best of the search's first points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from composer.data import Example
from composer.models import LoadedModel
from composer.objectives import Objective, get_objective
from composer.search import SearchResult, l1_penalty
from loradex.errors import ConfigError

if TYPE_CHECKING:
    from composer.compose import ComposeConfig, ComposeSession

MAX_FOLDS = 5
RESTART_PICKS = ("best", "average")
# off: keep what the search found (the paper). cv: keep the start point unless the search
# beats it in cross-validation on the few-shot examples. auto: cv for a search started from
# the best single candidate (where the control measured it to help), given 2+ examples.
GUARDS = ("off", "cv", "auto")

Run = Callable[[Objective, int, str], SearchResult]


@dataclass
class RestartRecord:
    """One restart of the search: its seed, cross-validated loss and (when run) full search."""

    seed: int
    cv_loss: float  # mean held-out loss over the folds
    fold_losses: list[float]
    loss: float | None = None  # few-shot loss of its search on all examples
    weights: list[float] | None = None


@dataclass
class GuardRecord:
    """The search against its start point, both scored on the held-out example(s) of each
    fold; ``kept`` is ``search`` only when the search's mean held-out loss is lower."""

    start_cv_loss: float
    search_cv_loss: float
    start_fold_losses: list[float]
    search_fold_losses: list[float]
    kept: str

    def summary(self) -> dict[str, Any]:
        """What was kept and the two mean held-out losses (a command's JSON, a study row)."""
        return {"kept": self.kept, "search_cv_loss": round(self.search_cv_loss, 6),
                "start_cv_loss": round(self.start_cv_loss, 6)}


@dataclass
class Picked:
    """The weights a compose run keeps, with the search whose curve is plotted."""

    search: SearchResult
    weights: np.ndarray
    loss: float
    objective: float
    records: list[RestartRecord] = field(default_factory=list)
    guard: GuardRecord | None = None

    @classmethod
    def of(cls, search: SearchResult, records: list[RestartRecord] | None = None) -> Picked:
        return cls(search, search.weights, search.loss, search.objective, records or [])


def cv_folds(n_examples: int) -> list[np.ndarray]:
    """Indices of the held-out examples of each fold: leave-one-out up to 5 examples, else 5."""
    if n_examples < 2:
        raise ConfigError(
            "cross-validation (--restarts > 1 or --guard cv) needs at least 2 few-shot examples"
        )
    return list(np.array_split(np.arange(n_examples), min(n_examples, MAX_FOLDS)))


def resolved_guard(guard: str, start: str, n_examples: int) -> str:
    """``off`` or ``cv``: what ``auto`` means for this start and number of examples."""
    if guard != "auto":
        return guard
    return "cv" if start == "best-single" and n_examples >= 2 else "off"


def prepared(loaded: LoadedModel, config: ComposeConfig, examples: Sequence[Example]) -> Objective:
    """The configured objective, tokenised for ``examples``."""
    objective = get_objective(config.objective)
    objective.prepare(loaded, examples, use_chat_template=config.use_chat_template)
    return objective


def start_of(search: SearchResult, n_first: int) -> np.ndarray:
    """The weights a search started from: the best of its ``n_first`` first points (by loss +
    penalty, as the search chose it), or zero weights when it had none."""
    if n_first == 0:
        return np.zeros(len(search.weights))
    return np.asarray(_best_first(search, n_first)["weights"], dtype=np.float64)


def _best_first(search: SearchResult, n_first: int) -> dict[str, Any]:
    return min(search.history[:n_first], key=lambda h: h["objective"])


def cross_validated_search(
    session: ComposeSession,
    run: Run,
    loaded: LoadedModel,
    config: ComposeConfig,
    examples: Sequence[Example],
    objective: Objective,
    n_first: int,
    zero_loss: float,
) -> Picked:
    """Score seeds ``seed .. seed+N-1`` by cross-validation, search all the examples with the
    picked seed (or every seed, for ``average``), then apply the guard. ``n_first``: how many
    first points each search tries; ``zero_loss``: the loss of zero weights on all examples."""
    folds = cv_folds(len(examples))
    # Each fold's (fit, score) objectives are tokenised once and serve every restart.
    fold_objectives: list[tuple[Objective, Objective]] = []
    for held in folds:
        left_out = set(held.tolist())
        keep = [e for i, e in enumerate(examples) if i not in left_out]
        fold_objectives.append((
            prepared(loaded, config, keep),
            prepared(loaded, config, [examples[i] for i in sorted(left_out)]),
        ))
    records: list[RestartRecord] = []
    start_fold_losses: list[float] = []
    for r in range(config.restarts):
        seed = config.search.seed + r
        fold_losses = []
        for k, (fitter, scorer) in enumerate(fold_objectives):
            fit = run(fitter, seed, f"restart {r + 1}/{config.restarts} fold {k + 1}/{len(folds)}")
            fold_losses.append(_held_out(session, scorer, fit.weights))
            if r == 0 and config.guard == "cv":
                # Every seed starts from the same first points: score the start once.
                start_fold_losses.append(_held_out(session, scorer, start_of(fit, n_first)))
        records.append(RestartRecord(seed, float(np.mean(fold_losses)), fold_losses))

    best = min(records, key=lambda rec: rec.cv_loss)
    searches: dict[int, SearchResult] = {}
    for rec in records if config.restart_pick == "average" else [best]:
        searches[rec.seed] = run(objective, rec.seed, f"seed {rec.seed}, all examples")
        rec.loss = searches[rec.seed].loss
        rec.weights = [float(x) for x in searches[rec.seed].weights]
    if config.restart_pick == "best":
        picked = Picked.of(searches[best.seed], records)
        search_fold_losses = best.fold_losses
    else:
        weights = np.mean([found.weights for found in searches.values()], axis=0)
        loss = _held_out(session, objective, weights)
        penalty = float(l1_penalty(weights[None], config.search.l1, config.search.l1_form)[0])
        picked = Picked(searches[best.seed], weights, loss, loss + penalty, records)
        # The averaged weights were not cross-validated; each fold's mean over the seeds
        # stands in for them.
        search_fold_losses = np.mean([rec.fold_losses for rec in records], axis=0).tolist()
    if config.guard == "cv":
        picked = _guarded(picked, start_fold_losses, search_fold_losses, n_first, zero_loss)
    return picked


def _guarded(
    picked: Picked,
    start_fold_losses: list[float],
    search_fold_losses: list[float],
    n_first: int,
    zero_loss: float,
) -> Picked:
    """Keep the start point of the full search unless the search won in cross-validation."""
    start_cv, search_cv = float(np.mean(start_fold_losses)), float(np.mean(search_fold_losses))
    kept = "search" if search_cv < start_cv else "start"
    picked.guard = GuardRecord(start_cv, search_cv, start_fold_losses,
                               list(search_fold_losses), kept)
    if kept == "search":
        return picked
    picked.weights = start_of(picked.search, n_first)
    if n_first == 0:  # zero weights: no penalty
        picked.loss = picked.objective = zero_loss
    else:
        start = _best_first(picked.search, n_first)
        picked.loss, picked.objective = float(start["loss"]), float(start["objective"])
    return picked


def _held_out(session: ComposeSession, scorer: Objective, weights: np.ndarray) -> float:
    return float(session.losses(scorer, np.asarray(weights)[None])[0])
