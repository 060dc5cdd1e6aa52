"""The unit protocol and the in-process runner.

A :class:`Job` cuts work into independent :class:`Unit` s. Workers compute units and return
plain results; the driver alone writes them (:meth:`Job.record`, atomically, as each unit
finishes), so a stopped run resumes by skipping the units :meth:`Job.done` reports finished,
and a run on a Ray cluster writes exactly the files an in-process run writes. A unit that fails
on its own is reported with its error and the others go on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from composer.scaleout.summary import RunSummary


@dataclass(frozen=True)
class Resources:
    """What one unit needs on a worker; Ray places each worker's actor by it."""

    cpus: float = field(default=1.0, metadata={"help": "CPU cores per worker"})
    gpus: float = field(default=0.0, metadata={"help": "GPUs per worker (a fraction shares one)"})


@dataclass(frozen=True)
class Unit:
    """One independent piece of work: a key unique in its job and a picklable payload."""

    key: str = field(metadata={"help": "what the unit's result is filed under"})
    payload: Any = field(metadata={"help": "the unit's inputs, shipped to the worker"})


@dataclass(frozen=True)
class Lazy:
    """A payload read only when its unit is about to run (a module's files, a task's
    examples), so a job of many units never holds every payload at once."""

    load: Callable[[], Any]


def ready_to_run(unit: Unit) -> Unit:
    """The unit with its payload read (a :class:`Lazy` payload is loaded now)."""
    return Unit(unit.key, unit.payload.load()) if isinstance(unit.payload, Lazy) else unit


@dataclass(frozen=True)
class UnitOutcome:
    """What a worker made of one unit: a result, or the one-line error it failed with."""

    key: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = "local"


class Worker(Protocol):
    """Computes units; holds what is costly to load (the base model) across units."""

    def run(self, payload: Any) -> Any:
        """The result of one unit's payload (a plain, picklable value)."""


class WorkerSpec(Protocol):
    """A picklable recipe for a worker, built once per worker process."""

    def build(self) -> Worker:
        """Load what the worker holds (the base model, shipped files) and return it."""


class Job(Protocol):
    """Work cut into units, with the driver's side of it: skip, record."""

    title: str
    resources: Resources

    def plan(self) -> tuple[int, list[Unit]]:
        """How many units the job has in all, and those not finished yet (a resumed run skips
        the others), in the order a local run takes them."""

    def worker_spec(self) -> WorkerSpec:
        """The recipe every worker is built from."""

    def record(self, unit: Unit, result: Any) -> str | None:
        """Write one unit's result (driver only, atomically); return a line to print."""


Handle = Callable[[UnitOutcome, float], None]


class Runner(Protocol):
    """Runs units on workers and hands each outcome to the driver as it arrives."""

    def start(self, job: Job, n_units: int) -> str:
        """Get ready (connect, count workers); return a short description of where units run."""

    def run(self, job: Job, units: Sequence[Unit], handle: Handle, summary: RunSummary) -> None:
        """Run every unit, calling ``handle(outcome, round_trip_seconds)`` as each finishes."""

    def close(self) -> None:
        """Release the workers."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and message, as a report shows it."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_one(worker: Worker, unit: Unit, where: str) -> UnitOutcome:
    """Run one unit on ``worker``; a failure of the unit itself becomes its outcome's error."""
    started = time.perf_counter()
    try:
        result = worker.run(unit.payload)
    except Exception as exc:  # a bad unit is reported, the others go on
        error = one_line(exc)
        if not isinstance(exc, (ValueError, LookupError, OSError)):  # a bug: say where
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            error += f" (at {frame.filename}:{frame.lineno})"
        return UnitOutcome(unit.key, error=error, seconds=time.perf_counter() - started,
                           worker=where)
    return UnitOutcome(unit.key, result=result, seconds=time.perf_counter() - started,
                       worker=where)


class LocalRunner:
    """Every unit in this process, in order, on one worker (as loradex always ran)."""

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker  # a ready worker (e.g. around a model the caller loaded)

    def start(self, job: Job, n_units: int) -> str:
        """In-process: nothing to connect to."""
        return "in-process, 1 worker"

    def run(self, job: Job, units: Sequence[Unit], handle: Handle, summary: RunSummary) -> None:
        """Build the worker once (unless given one), then run the units one after another."""
        if self.worker is None:
            started = time.perf_counter()
            self.worker = job.worker_spec().build()
            summary.load_seconds.append(time.perf_counter() - started)
        summary.workers = 1
        for unit in units:
            started = time.perf_counter()
            outcome = run_one(self.worker, ready_to_run(unit), "local")
            handle(outcome, time.perf_counter() - started)

    def close(self) -> None:
        """Nothing to release: the worker goes with this process."""


def run_units(
    job: Job,
    runner: Runner | None = None,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run the job's unfinished units on ``runner`` (default: in-process), record each result
    as it arrives, and return where the time went and which units failed."""
    from tqdm.auto import tqdm

    say = echo or tqdm.write
    total, todo = job.plan()
    if len({u.key for u in todo}) != len(todo):
        raise ValueError(f"{job.title}: unit keys are not unique")
    summary = RunSummary(title=job.title, total=total, skipped=total - len(todo))
    if not todo:
        return summary
    runner = runner or LocalRunner()
    by_key = {u.key: u for u in todo}
    started = time.perf_counter()
    summary.where = runner.start(job, len(todo))
    summary.connect_seconds = time.perf_counter() - started
    bar = tqdm(total=total, initial=summary.skipped, unit="unit",
               desc=f"{job.title} [{summary.where}]", disable=not progress)

    def handle(outcome: UnitOutcome, round_trip: float) -> None:
        if outcome.key in summary.finished:  # a unit retried after a lost worker came back
            summary.duplicates += 1
            return
        summary.finished.add(outcome.key)
        if summary.first_result_seconds is None:
            summary.first_result_seconds = time.perf_counter() - started
        summary.unit_seconds.append(outcome.seconds)
        summary.overhead_seconds.append(max(0.0, round_trip - outcome.seconds))
        if outcome.error is not None:
            summary.failed[outcome.key] = outcome.error
            say(f"{outcome.key}: failed on {outcome.worker}: {outcome.error}")
        else:
            t0 = time.perf_counter()
            line = job.record(by_key[outcome.key], outcome.result)
            summary.record_seconds += time.perf_counter() - t0
            if line:
                say(line)
        bar.update(1)

    try:
        runner.run(job, todo, handle, summary)
    finally:
        runner.close()
        bar.close()
        summary.wall_seconds = time.perf_counter() - started
    if progress:
        for line in summary.lines():
            say(line)
    return summary


def make_runner(ray_address: str | None, *, max_workers: int | None = None) -> Runner:
    """In-process when ``ray_address`` is None; else a Ray runner for that cluster ("auto":
    ``RAY_ADDRESS``, or a Ray started on this machine)."""
    if ray_address is None:
        return LocalRunner()
    from composer.scaleout.ray_runner import RayRunner

    return RayRunner(None if ray_address == "auto" else ray_address, max_workers=max_workers)
