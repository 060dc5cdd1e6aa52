"""The unit runner in-process (no cluster): lazy payloads, resuming, failures, and a --ray
address that nothing answers refused at once in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from composer.scaleout.ray_runner import check_reachable
from composer.scaleout.units import Lazy, LocalRunner, Unit, run_units
from loradex.cli import cli
from loradex.errors import ConfigError
from tests.support.ray_cluster import free_port
from tests.support.toy_units import DoublingJob


class LazyDoublingJob(DoublingJob):
    """The toy job with payloads read only when a unit runs; records which were read."""

    read: list[int]

    def plan(self) -> tuple[int, list[Unit]]:
        self.read = []

        def load(i: int) -> int:
            self.read.append(i)
            return int(self.payloads[i])

        total, todo = super().plan()
        return total, [Unit(u.key, Lazy(lambda i=int(u.key[1:]): load(i))) for u in todo]


def test_lazy_payloads_are_read_as_their_units_run_and_a_run_resumes(tmp_path: Path) -> None:
    job = LazyDoublingJob(tmp_path, [1, 2, 3])
    (tmp_path / "u1.json").write_text('{"value": 4, "node": "earlier run"}')  # done before
    summary = run_units(job, LocalRunner(), progress=False)
    assert job.read == [0, 2]  # the finished unit's payload is never read
    assert (summary.total, summary.skipped, summary.ran) == (3, 1, 2)
    assert job.values() == {"u0": 2, "u1": 4, "u2": 6}
    assert run_units(job, LocalRunner(), progress=False).ran == 0


def test_an_address_nothing_answers_is_refused_at_once(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")  # free now: nothing listens there
    with pytest.raises(ConfigError, match="no Ray cluster answers there"):
        check_reachable(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ConfigError, match="not an address of the form HOST:PORT"):
        check_reachable("head-without-port")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.jsonl").write_text('{"input": "a", "target": "b"}\n')
    result = CliRunner().invoke(cli, ["library", "build", "--data-dir", str(tasks), "--out",
                                      str(tmp_path / "lib"), "--ray", f"127.0.0.1:{port}"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith(f"--ray 127.0.0.1:{port}: no Ray cluster answers")
    assert not (tmp_path / "lib").exists()
