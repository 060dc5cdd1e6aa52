"""The study's cells as units for :mod:`composer.scaleout`: with ``--ray`` each (task, seed)
cell runs on a Ray worker, which holds the base model and the library shipped to it; the
driver merges each finished cell into the results file and saves it, so one run uses every
machine of the cluster (no ``--first-seed``/``--merge``) and a stopped run resumes.

A worker computes a cell exactly as :meth:`Study.run` does in-process, from the same inputs:
the cell's rows so far, the task's seed-free scores so far (zero-shot is scored once per
example for all seeds; two seeds of a task running at once may both score an example, and
the driver keeps the first), and, for ``--extend-from``, the prior cell.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.study.results import take_per_example
from benchmarks.study.runner import Study
from benchmarks.study.settings import ComposeSpec, StudySettings
from composer.scaleout.folders import LibraryShipment
from composer.scaleout.units import Resources, Unit

if TYPE_CHECKING:
    from composer.data import Example
    from composer.models import LoadedModel


@dataclass(frozen=True)
class CellPayload:
    """One (task, seed) cell and what its computation reads of the results so far."""

    task: str
    seed: int
    examples: list[Example]
    cell: dict[str, Any]
    per_example: dict[str, Any]
    prior_cell: dict[str, Any] | None


@dataclass(frozen=True)
class StudyWorkerSpec:
    """What every worker of a study holds: its settings, rows, pool and library."""

    settings: StudySettings
    compose: tuple[ComposeSpec, ...]
    oracle: bool
    hydra_heads: int
    pool: tuple[str, ...]
    library: LibraryShipment

    def build(self) -> StudyCellWorker:
        """Unpack the library and load the base model, as the in-process study loads it."""
        worker = StudyCellWorker(self, self.library.unpack())
        worker.model()
        return worker


class StudyCellWorker:
    """Computes cells on one loaded base model."""

    def __init__(self, spec: StudyWorkerSpec, library_dir: Path) -> None:
        self.spec, self.library_dir = spec, library_dir
        self.loaded: LoadedModel | None = None
        self.carried: dict[str, Any] = {}  # the pool's signature index, built on first use

    def _study(self, results: dict[str, Any], prior: dict[str, Any] | None) -> Study:
        s = self.spec
        study = Study(s.settings, None, compose=s.compose, oracle=s.oracle,
                      hydra_heads=s.hydra_heads, quiet=True, results=results, prior=prior,
                      library_dir=self.library_dir)
        study.loaded = self.loaded
        study.__dict__.update(self.carried)
        return study

    def model(self) -> LoadedModel:
        """The base model, loaded once (by a throwaway study, the way a local run loads it)."""
        if self.loaded is None:
            self.loaded = self._study({"settings": {}, "tasks": {}}, None)._model()
        return self.loaded

    def run(self, payload: CellPayload) -> dict[str, Any]:
        """The cell computed: its rows, the task's seed-free scores, the rows computed."""
        seed = str(payload.seed)
        results = {
            "settings": {"library_pool": list(self.spec.pool)},
            "tasks": {payload.task: {seed: payload.cell}},
            "per_example": {payload.task: payload.per_example},
        }
        prior = None
        if payload.prior_cell is not None:
            prior = {"tasks": {payload.task: {seed: payload.prior_cell}}}
        study = self._study(results, prior)
        self.model()
        study._run_cell(payload.task, payload.examples, payload.seed)
        self.carried = {k: v for k, v in vars(study).items() if k in ("_signatures", "_embedder")}
        return {
            "cell": study.results["tasks"][payload.task][seed],
            "per_example": study.results.get("per_example", {}).get(payload.task, {}),
            "computed": study.computed,
        }


class StudyJob:
    """Every (task, seed) cell of a study with rows missing, seeds outside as in-process."""

    title = "study"

    def __init__(self, study: Study, tasks: dict[str, Path], seeds: Sequence[int], *,
                 resources: Resources | None = None, shared_library: bool = False) -> None:
        from composer.data import load_examples

        if study.hydra_modules:
            from loradex.errors import ConfigError

            raise ConfigError("--hydra-module is not shipped to Ray workers; run it in-process")
        self.study, self.seeds = study, list(seeds)
        self.resources = resources or Resources()
        self.shared_library = shared_library
        self.examples = {task: load_examples(path, min_examples=study.settings.shots + 1)
                         for task, path in tasks.items()}

    def plan(self) -> tuple[int, list[Unit]]:
        """The cells; one whose every system is recorded is done."""
        results = self.study.results
        units = []
        for seed in self.seeds:
            for task, examples in self.examples.items():
                if not self.study.missing(task, examples, seed):
                    continue
                prior = self.study.prior
                prior_cell = prior["tasks"].get(task, {}).get(str(seed)) if prior else None
                units.append(Unit(f"{task} seed {seed}", CellPayload(
                    task, seed, examples,
                    copy.deepcopy(results["tasks"].get(task, {}).get(str(seed), {})),
                    copy.deepcopy(results.get("per_example", {}).get(task, {})),
                    prior_cell,
                )))
        return len(self.seeds) * len(self.examples), units

    def worker_spec(self) -> StudyWorkerSpec:
        """The study's settings and its frozen pool, shipped as bytes unless shared."""
        s = self.study
        pool = tuple(s.results["settings"]["library_pool"])
        return StudyWorkerSpec(
            s.settings, tuple(s.compose), s.oracle, s.hydra_heads, pool,
            LibraryShipment.pack(Path(s.settings.library), pool, shared=self.shared_library))

    def record(self, unit: Unit, result: dict[str, Any]) -> str:
        """Merge the cell into the results file and save it."""
        payload: CellPayload = unit.payload
        results = self.study.results
        results["tasks"].setdefault(payload.task, {})[str(payload.seed)] = result["cell"]
        take_per_example(results, {"per_example": {payload.task: result["per_example"]}})
        computed = [tuple(c) for c in result["computed"]]
        self.study.computed += computed
        rows = result["cell"].get("systems", {})
        results["wall_seconds"] += sum(rows[name]["seconds"] for _, _, name in computed)
        self.study.save()
        return f"[{unit.key}] {len(computed)} row(s)"
