"""Choosing the candidates a composition searches over: at random, by retrieval, or screened.

- ``random``: a seeded random ``k`` of the pool (the LoraHub paper's setting; drawn by
  ``composer.candidates.select_from_registry``);
- ``retrieve``: the ``k`` modules whose task signatures fit the few-shot inputs best
  (:mod:`registry.retrieval`);
- ``retrieve+screen``: the best ``m`` by signature, then each scored alone on the few-shot
  objective (batched populations of ``SCREEN_BATCH``, the model loaded once) and the ``k`` with the
  lowest loss kept, best first, so a search can start from the best one.

Signatures only say which modules were trained on inputs like these; the screen asks the
model which of them actually help on these examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loradex.errors import ConfigError

if TYPE_CHECKING:
    from composer.candidates import Candidate
    from composer.data import Example
    from composer.models import LoadedModel

SELECT_METHODS = ("random", "retrieve", "retrieve+screen")
DEFAULT_SCREEN_POOL = 20
# Candidates scored in one batched forward by the screen.
SCREEN_BATCH = 10


def check_select(select: str, k: int, m: int | None) -> None:
    """Refuse an unknown method or sizes that cannot work, with one line."""
    if select not in SELECT_METHODS:
        raise ConfigError(f"--select {select!r}: one of {', '.join(SELECT_METHODS)}")
    if k < 1:
        raise ConfigError(f"--k {k}: at least 1 candidate")
    if select == "retrieve+screen" and m is not None and m < k:
        raise ConfigError(f"--screen-pool {m} is smaller than --k {k}")


@dataclass(frozen=True)
class ScreenResult:
    """Each screened candidate's few-shot loss alone, and the order they were kept in."""

    losses: list[float] = field(metadata={"help": "few-shot loss of each candidate alone"})
    kept: list[int] = field(metadata={"help": "indices of the k kept, lowest loss first"})


def screen(loaded: LoadedModel, candidates: Sequence[Candidate], few: Sequence[Example],
           keep: int, *, objective: str = "lm", method: str = "lorahub",
           use_chat_template: bool = True) -> ScreenResult:
    """Score every candidate alone (weight 1, the others 0: the module itself, whatever the
    method) on the few-shot objective in batched populations; keep the ``keep`` with the
    lowest loss."""
    import numpy as np

    from composer.compose import ComposeSession
    from composer.methods import get_method
    from composer.objectives import get_objective

    if not candidates:
        raise ConfigError("no candidates to screen")
    scorer = get_objective(objective)
    scorer.prepare(loaded, few, use_chat_template=use_chat_template)
    # A population of one-hot weight rows, evaluated as one batch (chunked to bound memory).
    losses: list[float] = []
    chunk = min(len(candidates), SCREEN_BATCH)
    with ComposeSession(loaded, candidates, get_method(method), max_groups=chunk) as session:
        eye = np.eye(len(candidates))
        for start in range(0, len(candidates), chunk):
            losses += [float(x) for x in session.losses(scorer, eye[start:start + chunk])]
    order = sorted(range(len(candidates)), key=lambda i: (losses[i], i))
    return ScreenResult(losses=losses, kept=order[:keep])
