"""A job of tiny units for the runner tests: each unit doubles a number after a pause, on
whatever node runs it; the payload "bad" fails the way bad data does. Workers import this
module by name, so it lives in a package (``tests.support``), not in a test file."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composer.scaleout.units import Resources, Unit
from loradex.errors import InvalidDataFile
from loradex.files import atomic_write


def _node() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address()) if ray.is_initialized() else "local"
    except ImportError:
        return "local"


class DoublingWorker:
    """Doubles the payload after ``seconds``; says which node it ran on. With ``marks``, a
    file ``<node> <payload>`` is made there as a unit starts (a test waits for one)."""

    def __init__(self, seconds: float, marks: Path | None) -> None:
        self.seconds, self.marks, self.node = seconds, marks, _node()

    def run(self, payload: Any) -> dict[str, Any]:
        if payload == "bad":
            raise InvalidDataFile("unit bad: no usable examples")
        if self.marks is not None:
            (self.marks / f"{self.node} {payload}").touch()
        time.sleep(self.seconds)
        return {"value": payload * 2, "node": self.node}


@dataclass(frozen=True)
class DoublingWorkerSpec:
    seconds: float
    marks: Path | None = None

    def build(self) -> DoublingWorker:
        return DoublingWorker(self.seconds, self.marks)


@dataclass
class DoublingJob:
    """Units ``u<i>`` with payloads; results as ``out/<key>.json``; every record is also
    appended to ``out/records.log`` so a test sees a unit recorded twice."""

    out: Path
    payloads: list[Any]
    seconds: float = 0.0
    marks: Path | None = None  # where workers mark the units they start
    title: str = "toy"
    resources: Resources = field(default_factory=Resources)

    def plan(self) -> tuple[int, list[Unit]]:
        units = [Unit(f"u{i}", p) for i, p in enumerate(self.payloads)]
        return len(units), [u for u in units if not (self.out / f"{u.key}.json").is_file()]

    def worker_spec(self) -> DoublingWorkerSpec:
        return DoublingWorkerSpec(self.seconds, self.marks)

    def record(self, unit: Unit, result: dict[str, Any]) -> str:
        self.out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result)
        atomic_write(self.out / f"{unit.key}.json", lambda tmp: tmp.write_text(text))
        with (self.out / "records.log").open("a") as log:
            log.write(unit.key + "\n")
        return f"{unit.key}: {result['value']}"

    def recorded(self) -> list[str]:
        """Every record written, in order (a key twice would be a duplicate)."""
        log = self.out / "records.log"
        return log.read_text().split() if log.is_file() else []

    def values(self) -> dict[str, Any]:
        return {p.stem: json.loads(p.read_text())["value"]
                for p in sorted(self.out.glob("u*.json"))}
