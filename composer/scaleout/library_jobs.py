"""``loradex library build`` and ``loradex library evaluate`` as units: one module each.

A build unit ships the task's examples to a worker, which trains the module into a scratch
folder and returns its files and manifest record; the driver writes the folder (atomically)
and the record. An evaluation unit ships the module's files and its held-out split; the worker
returns the scores. Workers load the base model once, when they are built.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer.data import Example, load_examples
from composer.library import (
    LibrarySpec,
    evaluate_module,
    library_settings,
    load_manifest,
    record_module,
    record_scores,
    task_files,
    test_split,
    train_module,
    trained_line,
)
from composer.models import ModelSpec
from composer.scaleout.folders import FolderFiles, fill_folder, read_folder, write_folder
from composer.scaleout.units import Lazy, Resources, Unit

if TYPE_CHECKING:
    from composer.models import LoadedModel
    from registry.embedders import Embedder


@dataclass(frozen=True)
class TrainPayload:
    """One module to train: its task and every example of the task (the worker splits them)."""

    task: str
    examples: list[Example]


def train_payload(path: Path) -> TrainPayload:
    """A build unit's payload: the task file's examples."""
    return TrainPayload(path.stem, load_examples(path))


class LibraryTrainer:
    """A worker that trains modules on one loaded base model."""

    def __init__(self, loaded: LoadedModel, spec: LibrarySpec,
                 embedder: Embedder | None = None) -> None:
        self.loaded, self.spec, self.embedder = loaded, spec, embedder
        self.settings = library_settings(loaded, spec)

    def run(self, payload: TrainPayload) -> dict[str, Any]:
        """Train one module in scratch space; its record, the library settings, its files."""
        with tempfile.TemporaryDirectory(prefix="loradex-train-") as scratch:
            folder = Path(scratch) / payload.task
            record = train_module(self.loaded, self.spec, payload.task, payload.examples,
                                  folder, embedder=self.embedder)
            return {"record": record, "settings": self.settings, "files": read_folder(folder)}


@dataclass(frozen=True)
class LibraryTrainerSpec:
    """How a build worker is made: the base model, the build settings, signatures or not."""

    model: ModelSpec
    spec: LibrarySpec
    signatures: bool = True

    def build(self) -> LibraryTrainer:
        """Load the base model (and the signature embedder, when there is one)."""
        from composer.models import load_base_model

        embedder = None
        if self.signatures:
            from registry.embedders import load_embedder_or_warn

            embedder = load_embedder_or_warn(lambda line: None, "without a task signature")
        return LibraryTrainer(load_base_model(self.model), self.spec, embedder)


class LibraryBuildJob:
    """Every task of the spec whose module folder is not there yet, one unit each."""

    title = "library build"

    def __init__(self, spec: LibrarySpec, model: ModelSpec | None, *, signatures: bool = True,
                 resources: Resources | None = None) -> None:
        self.spec, self.model, self.signatures = spec, model, signatures
        self.resources = resources or Resources()

    def plan(self) -> tuple[int, list[Unit]]:
        """Each task file a unit; a task with a finished module folder is done."""
        files = task_files(self.spec.data_dir, self.spec.tasks)
        todo = [Unit(p.stem, Lazy(partial(train_payload, p))) for p in files
                if not (self.spec.out_dir / p.stem / "adapter_model.safetensors").is_file()]
        return len(files), todo

    def worker_spec(self) -> LibraryTrainerSpec:
        """Workers load the job's base model."""
        if self.model is None:
            raise ValueError("this build runs on a model loaded by the caller, in-process only")
        return LibraryTrainerSpec(self.model, self.spec, self.signatures)

    def record(self, unit: Unit, result: dict[str, Any]) -> str:
        """The module folder (atomically), then its manifest record."""
        out = self.spec.out_dir
        out.mkdir(parents=True, exist_ok=True)
        write_folder(out / unit.key, result["files"])
        record_module(out, result["settings"], unit.key, result["record"])
        return trained_line(result["record"])


@dataclass(frozen=True)
class EvalPayload:
    """One module to score: its files and its task's held-out split."""

    task: str
    files: FolderFiles
    test: list[Example]


def eval_payload(spec: LibrarySpec, task: str) -> EvalPayload:
    """An evaluation unit's payload: the module's files and its held-out split."""
    return EvalPayload(task, read_folder(spec.out_dir / task), test_split(spec, task))


class LibraryEvaluator:
    """A worker that scores modules on one loaded base model."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def run(self, payload: EvalPayload) -> dict[str, Any]:
        """The module's and the base model's scores on the held-out split."""
        with tempfile.TemporaryDirectory(prefix="loradex-eval-") as scratch:
            folder = fill_folder(Path(scratch) / payload.task, payload.files)
            return evaluate_module(self.loaded, folder, payload.test)


@dataclass(frozen=True)
class LibraryEvaluatorSpec:
    """How an evaluation worker is made: the base model."""

    model: ModelSpec

    def build(self) -> LibraryEvaluator:
        """Load the base model."""
        from composer.models import load_base_model

        return LibraryEvaluator(load_base_model(self.model))


class LibraryEvaluateJob:
    """Every built module without scores (all of them with ``force``), one unit each."""

    title = "library evaluate"

    def __init__(self, spec: LibrarySpec, model: ModelSpec | None, *, force: bool = False,
                 resources: Resources | None = None) -> None:
        self.spec, self.model, self.force = spec, model, force
        self.resources = resources or Resources()

    def plan(self) -> tuple[int, list[Unit]]:
        """Each module of the manifest a unit; a module with scores is done (unless forced)."""
        modules = load_manifest(self.spec.out_dir)["modules"]
        todo = [Unit(task, Lazy(partial(eval_payload, self.spec, task)))
                for task, record in sorted(modules.items())
                if self.force or "accuracy" not in record]
        return len(modules), todo

    def worker_spec(self) -> LibraryEvaluatorSpec:
        """Workers load the job's base model."""
        if self.model is None:
            raise ValueError("this evaluation runs on a model loaded by the caller, "
                             "in-process only")
        return LibraryEvaluatorSpec(self.model)

    def record(self, unit: Unit, result: dict[str, Any]) -> str:
        """The module's scores into its manifest record."""
        return record_scores(self.spec.out_dir, unit.key, result)
