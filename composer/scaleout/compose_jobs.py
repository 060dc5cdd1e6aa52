"""``loradex compose-batch`` as units: one composition per task of a plan.

A worker runs :func:`composer.pipeline.run_compose` on the base model it holds, writing into
scratch space and indexing nothing; it returns the module's files. The driver writes the
folder where the plan says (atomically), indexes it in the registry and, when asked,
publishes it. Plan files (examples, held-out sets, candidate folders) are read by the worker
from the paths the plan gives: on a cluster they must be on a file system every node mounts at
the same place, and the worker checks the examples are the very file the driver read. Registry
queries and Hub candidates are resolved on the worker against the same registry URL and the
Hub cache of its loradex home.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer.models import ModelSpec
from composer.pipeline import ComposeRequest, run_compose
from composer.scaleout.batch_plan import BatchPlan
from composer.scaleout.folders import read_folder, write_folder
from composer.scaleout.units import Resources, Unit
from loradex.errors import InvalidDataFile
from loradex.files import file_sha256
from loradex.settings import Settings

if TYPE_CHECKING:
    from composer.models import LoadedModel

# What the driver does with a written module besides indexing it (e.g. publish it):
# (task name, folder) -> a line to print, or None.
AfterWrite = Callable[[str, Path], str | None]
RESULT_MARKERS = ("adapter_config.json", "hydra_config.json")


@dataclass(frozen=True)
class ComposePayload:
    """One task's request and the checksum of its examples as the driver read them."""

    request: ComposeRequest
    examples_sha256: str


class BatchComposer:
    """A worker that composes on one loaded base model."""

    def __init__(self, loaded: LoadedModel, settings: Settings) -> None:
        self.loaded, self.settings = loaded, settings

    def run(self, payload: ComposePayload) -> dict[str, Any]:
        """Compose one task into scratch space; the module's files and its search figures."""
        request = payload.request
        if not request.examples.is_file() or file_sha256(request.examples) != \
                payload.examples_sha256:
            raise InvalidDataFile(f"{request.examples}: not the file the driver read; plan "
                                  "files must be on a path every node shares")
        with tempfile.TemporaryDirectory(prefix="loradex-compose-") as scratch:
            local = replace(request, out=Path(scratch) / request.out.name, index=False,
                            overwrite=False)
            outcome = run_compose(local, self.settings, load_model=lambda spec: self.loaded,
                                  progress=False)
            result = outcome.result
            return {
                "files": read_folder(outcome.folder),
                "loss": float(result.loss),
                "zero_loss": float(result.zero_loss),
                "weights": [round(float(w), 6) for w in result.weights],
            }


@dataclass(frozen=True)
class BatchComposerSpec:
    """How a compose worker is made: the plan's base model, the registry and home it uses
    (no Hub token: workers never write to a Hub)."""

    model: ModelSpec
    settings: Settings

    def build(self) -> BatchComposer:
        """Load the base model."""
        from composer.models import load_base_model

        return BatchComposer(load_base_model(self.model), self.settings)


class ComposeBatchJob:
    """Every task of the plan whose output folder is not there yet."""

    title = "compose-batch"

    def __init__(self, plan: BatchPlan, settings: Settings, *, resources: Resources | None = None,
                 after_write: AfterWrite | None = None) -> None:
        self.batch, self.settings = plan, settings
        self.resources = resources or Resources()
        self.after_write = after_write
        self.requests = {task.name: task.request for task in plan.tasks}

    def plan(self) -> tuple[int, list[Unit]]:
        """A task is done when its output folder holds a module."""
        todo = [
            Unit(task.name, ComposePayload(task.request, file_sha256(task.request.examples)))
            for task in self.batch.tasks
            if not any((task.request.out / m).is_file() for m in RESULT_MARKERS)
        ]
        return len(self.batch.tasks), todo

    def worker_spec(self) -> BatchComposerSpec:
        """Workers load the plan's base model."""
        return BatchComposerSpec(self.batch.model, replace(self.settings, token=None))

    def record(self, unit: Unit, result: dict[str, Any]) -> str:
        """Write the module, index it (when the plan's requests say so), then publish."""
        request = self.requests[unit.key]
        folder = write_folder(request.out, result["files"])
        line = (f"{unit.key}: few-shot loss {result['zero_loss']:.4f} -> {result['loss']:.4f},"
                f" written to {folder}")
        if request.index:
            from composer.registry_link import index_adapter_folder

            registry_id = index_adapter_folder(self.settings.db_url, folder)
            if registry_id:
                line += f", indexed as {registry_id}"
        if self.after_write is not None:
            extra = self.after_write(unit.key, folder)
            if extra:
                line += f", {extra}"
        return line
