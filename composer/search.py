"""Gradient-free search over a flat weight vector with nevergrad (CMA-ES by default).

The search knows nothing about models: it asks the optimizer for points in
``[-bound, bound]^n`` (starting from 0), hands a ``[g, n]`` array to ``evaluate`` and tells the
optimizer ``loss + l1 * penalty``. With ``population`` > 1 it asks up to that many points
before telling (one batched evaluation per CMA-ES generation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loradex.errors import ConfigError

L1_FORMS = ("sum", "mean")

# ``cma`` is standard CMA-ES: nevergrad's ParametrizedCMA() with its defaults (full covariance,
# non-elitist, population 4 + floor(3 ln n)), registered as "OldCMA". nevergrad's own "CMA"
# is a selector (MetaCMA) that, for a bounded problem like ours, silently runs "CMAbounded"
# (diagonal, elitist, population 1 + ln n) instead; it stays available under its own name.
OPTIMIZER_ALIASES = {"cma": "OldCMA"}
# CMA-ES has no covariance to adapt in one dimension: nevergrad hands a 1-D CMA problem to the
# optional ``fcmaes`` package (pycma refuses it). A one-weight search (a single candidate) runs
# the (1+1) evolution strategy with the one-fifth success rule, CMA-ES's 1-D counterpart.
ONE_DIMENSIONAL_FALLBACK = "OnePlusOne"


def nevergrad_name(optimizer: str, dim: int = 0) -> str:
    """The nevergrad registry name that runs an optimizer option (``cma`` -> ``OldCMA``) on a
    ``dim``-weight problem: a CMA-ES variant on one weight runs ``OnePlusOne`` instead."""
    name = OPTIMIZER_ALIASES.get(optimizer, optimizer)
    if dim == 1:
        import nevergrad as ng

        if isinstance(ng.optimizers.registry.get(name), ng.families.ParametrizedCMA):
            return ONE_DIMENSIONAL_FALLBACK
    return name


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the weight search."""

    optimizer: str = field(
        default="cma",
        metadata={"help": "cma (standard CMA-ES) or any nevergrad optimizer registry name"},
    )
    budget: int = field(default=40, metadata={"help": "number of loss evaluations"})
    l1: float = field(default=0.05, metadata={"help": "weight of the L1 penalty on the weights"})
    l1_form: str = field(
        default="sum",
        metadata={"help": "sum: l1*sum|w| (the paper); mean: l1*mean|w| (reference code)"},
    )
    bound: float = field(default=1.5, metadata={"help": "weights are searched in [-bound, bound]"})
    seed: int = field(default=0, metadata={"help": "optimizer seed"})
    population: int = field(
        default=1,
        metadata={"help": "points per batched evaluation (1 = sequential, 0 = one generation)"},
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible settings."""
        import nevergrad as ng

        if nevergrad_name(self.optimizer) not in ng.optimizers.registry:
            close = [k for k in ng.optimizers.registry if k.lower() == self.optimizer.lower()]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown nevergrad optimizer {self.optimizer!r}{hint}")
        if self.budget < 1:
            raise ConfigError(f"budget must be >= 1, got {self.budget}")
        if self.l1 < 0:
            raise ConfigError(f"l1 must be >= 0, got {self.l1}")
        if self.l1_form not in L1_FORMS:
            raise ConfigError(f"l1 form must be one of {', '.join(L1_FORMS)}")
        if self.bound <= 0:
            raise ConfigError(f"bound must be > 0, got {self.bound}")
        if self.population < 0:
            raise ConfigError(f"population must be >= 0, got {self.population}")


def cma_population_size(dim: int) -> int:
    """CMA-ES's default population size ``4 + floor(3 ln n)`` (12 for 20 candidates)."""
    return 4 + int(3 * math.log(max(dim, 1)))


def _make_optimizer(config: SearchConfig, dim: int, center: np.ndarray | None = None) -> Any:
    import nevergrad as ng

    init = np.zeros(dim) if center is None else np.asarray(center, dtype=np.float64)
    param = ng.p.Array(init=init, lower=-config.bound, upper=config.bound)
    param.random_state = np.random.RandomState(config.seed)
    return ng.optimizers.registry[nevergrad_name(config.optimizer, dim)](
        parametrization=param, budget=config.budget, num_workers=1
    )


def generation_size(config: SearchConfig, dim: int) -> int:
    """Points per batched evaluation: ``config.population``, or for 0 the optimizer's own
    generation size (CMA-ES's population; asking a whole generation before telling it gives
    exactly the same search as asking one point at a time)."""
    if config.population > 0:
        return config.population
    popsize = getattr(_make_optimizer(config, dim), "_popsize", None)
    return int(popsize) if popsize else cma_population_size(dim)


def l1_penalty(weights: np.ndarray, l1: float, form: str) -> np.ndarray:
    """``l1 * sum|w|`` or ``l1 * mean|w|`` per row of ``weights [g, n]``."""
    absw = np.abs(weights)
    return l1 * (absw.sum(axis=1) if form == "sum" else absw.mean(axis=1))


@dataclass
class SearchResult:
    """The best weights found and every evaluation made."""

    weights: np.ndarray
    loss: float  # task loss at the best weights (without the penalty)
    objective: float  # loss + penalty at the best weights
    history: list[dict[str, Any]]

    @property
    def curve(self) -> list[float]:
        """Objective of each evaluation in order."""
        return [h["objective"] for h in self.history]


def search_weights(
    evaluate: Callable[[np.ndarray], np.ndarray],
    dim: int,
    config: SearchConfig,
    *,
    first_points: np.ndarray | None = None,
    progress: bool = True,
    desc: str = "compose",
) -> SearchResult:
    """Minimise ``evaluate(w) + penalty(w)`` over ``w`` in ``[-bound, bound]^dim``.

    The optimizer starts at 0. ``first_points`` (``[n, dim]``) are evaluated first, as part of
    the budget, and the optimizer then starts at the best of them instead (e.g. each candidate
    alone, so the search begins where the best single module is).
    """
    from tqdm.auto import tqdm

    config.validate()
    population = generation_size(config, dim)
    first = np.zeros((0, dim)) if first_points is None else np.asarray(first_points, float)
    if first.ndim != 2 or first.shape[1] != dim:
        raise ConfigError(f"first points must be [n, {dim}], got {list(first.shape)}")
    if np.abs(first).max(initial=0.0) > config.bound:
        raise ConfigError(f"first points must lie within the bound {config.bound}")
    if len(first) >= config.budget:
        raise ConfigError(
            f"budget {config.budget} leaves no evaluation for the search after the "
            f"{len(first)} start points; raise --budget above {len(first)}"
        )
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    bar = tqdm(total=config.budget, desc=desc, unit="eval", disable=not progress)

    def told(points: np.ndarray, losses: np.ndarray) -> list[float]:
        """Record evaluated points in the history; their objectives (loss + penalty)."""
        nonlocal best
        objectives = []
        penalties = l1_penalty(points, config.l1, config.l1_form)
        for point, loss, pen in zip(points, losses, penalties, strict=True):
            objective = float(loss + pen)
            record = {
                "step": len(history) + 1,
                "loss": float(loss),
                "penalty": float(pen),
                "objective": objective,
                "weights": [float(x) for x in point],
            }
            if best is None or objective < best["objective"]:
                best = record
            record["best_so_far"] = best["objective"]
            history.append(record)
            objectives.append(objective)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", best=f"{best['objective']:.4f}")
        return objectives

    try:
        for i in range(0, len(first), population):
            chunk = first[i : i + population]
            told(chunk, np.asarray(evaluate(chunk), dtype=np.float64).reshape(len(chunk)))
        center = np.asarray(best["weights"]) if best is not None else None
        optimizer = _make_optimizer(config, dim, center)
        while len(history) < config.budget:
            k = min(population, config.budget - len(history))
            asked = [optimizer.ask() for _ in range(k)]
            points = np.stack([np.asarray(c.value, dtype=np.float64) for c in asked])
            losses = np.asarray(evaluate(points), dtype=np.float64).reshape(k)
            for cand, objective in zip(asked, told(points, losses), strict=True):
                optimizer.tell(cand, objective)
    finally:
        bar.close()
    assert best is not None
    return SearchResult(
        weights=np.asarray(best["weights"]),
        loss=best["loss"],
        objective=best["objective"],
        history=history,
    )
