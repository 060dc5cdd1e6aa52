"""Where the time of a run of units went, and what became of each unit."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from loradex.errors import LoradexError


@dataclass
class RunSummary:
    """Counts and timings of one :func:`~composer.scaleout.units.run_units` call."""

    title: str
    total: int = 0
    skipped: int = 0  # finished by an earlier run
    where: str = "nothing to run"
    workers: int = 0
    nodes: int = 0
    load_seconds: list[float] = field(default_factory=list)  # one per worker built
    unit_seconds: list[float] = field(default_factory=list)  # computing, on the worker
    overhead_seconds: list[float] = field(default_factory=list)  # round trip minus computing
    record_seconds: float = 0.0  # the driver writing results
    wall_seconds: float = 0.0
    connect_seconds: float = 0.0  # reaching the cluster and sizing the pool
    first_result_seconds: float | None = None  # start-up: workers built, first unit done
    failed: dict[str, str] = field(default_factory=dict)  # key -> one-line error
    finished: set[str] = field(default_factory=set)
    retried: int = 0  # units run again after their worker was lost
    lost_workers: int = 0
    duplicates: int = 0  # outcomes of a unit already recorded, dropped

    @property
    def ran(self) -> int:
        """Units this run finished (recorded or failed)."""
        return len(self.finished)

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON (benchmarks record it)."""
        def mean(xs: list[float]) -> float | None:
            return round(statistics.fmean(xs), 4) if xs else None

        return {
            "title": self.title, "where": self.where, "total": self.total,
            "skipped": self.skipped, "ran": self.ran, "failed": dict(self.failed),
            "workers": self.workers, "nodes": self.nodes,
            "wall_seconds": round(self.wall_seconds, 3),
            "connect_seconds": round(self.connect_seconds, 3),
            "first_result_seconds": (round(self.first_result_seconds, 3)
                                     if self.first_result_seconds is not None else None),
            "model_loads": len(self.load_seconds),
            "load_seconds_total": round(sum(self.load_seconds), 3),
            "unit_seconds_total": round(sum(self.unit_seconds), 3),
            "unit_seconds_mean": mean(self.unit_seconds),
            "overhead_seconds_mean": mean(self.overhead_seconds),
            "record_seconds_total": round(self.record_seconds, 3),
            "retried": self.retried, "lost_workers": self.lost_workers,
            "duplicates_dropped": self.duplicates,
        }

    def lines(self) -> list[str]:
        """A few lines for the terminal: what ran where, and where the time went."""
        if not self.ran:
            return [f"{self.title}: all {self.total} unit(s) done already"]
        out = [
            f"{self.title}: {self.ran - len(self.failed)} unit(s) done, {len(self.failed)} "
            f"failed, {self.skipped} done already; {self.where}",
            f"  wall {self.wall_seconds:.1f} s: connecting {self.connect_seconds:.1f} s, first "
            f"result after {self.first_result_seconds or 0.0:.1f} s; model loads "
            f"{sum(self.load_seconds):.1f} s "
            f"({len(self.load_seconds)} worker(s)), units {sum(self.unit_seconds):.1f} s of "
            f"worker time, transfer and scheduling {sum(self.overhead_seconds):.1f} s "
            f"({statistics.fmean(self.overhead_seconds):.3f} s a unit), driver writes "
            f"{self.record_seconds:.1f} s",
        ]
        if self.retried or self.lost_workers:
            out.append(f"  {self.lost_workers} worker(s) lost; {self.retried} unit(s) run "
                       "again elsewhere")
        out += [f"  failed {key}: {error}" for key, error in sorted(self.failed.items())]
        return out

    def check(self) -> None:
        """Raise one error naming every unit that failed (after the others were recorded)."""
        if self.failed:
            listed = "; ".join(f"{key}: {error}" for key, error in sorted(self.failed.items()))
            raise LoradexError(f"{self.title}: {len(self.failed)} of {self.ran} unit(s) failed "
                               f"(the others are recorded; run again to retry): {listed}")
