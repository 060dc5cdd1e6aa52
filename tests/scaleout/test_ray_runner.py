"""The unit runner on a real two-node Ray cluster: the same results as in-process, a bad unit
reported without stopping the others, a node killed mid-run (every unit recorded once), and
a run resumed after it stopped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from composer.scaleout.units import LocalRunner, run_units
from loradex.errors import LoradexError
from tests.support.ray_cluster import HEAD_IP, NODE_IP
from tests.support.toy_units import DoublingJob


def test_units_on_ray_equal_in_process_and_a_bad_unit_is_reported(ray_runner, tmp_path: Path):
    payloads = [1, 2, "bad", 4, 5]
    local = DoublingJob(tmp_path / "local", payloads)
    on_ray = DoublingJob(tmp_path / "ray", payloads)
    local_summary = run_units(local, LocalRunner(), progress=False)
    ray_summary = run_units(on_ray, ray_runner, progress=False)

    assert on_ray.values() == local.values() == {"u0": 2, "u1": 4, "u3": 8, "u4": 10}
    assert sorted(on_ray.recorded()) == ["u0", "u1", "u3", "u4"]
    for summary in (local_summary, ray_summary):
        assert summary.failed == {"u2": "InvalidDataFile: unit bad: no usable examples"}
        with pytest.raises(LoradexError, match=r"1 of 5 unit.*u2: InvalidDataFile"):
            summary.check()
    assert ray_summary.workers == 2 and "2 node(s)" in ray_summary.where
    assert {r["node"] for r in map(_read, (tmp_path / "ray").glob("u*.json"))} <= {
        HEAD_IP, NODE_IP}

    # Run again: the bad unit is the only one left, and it fails again on its own.
    again = run_units(on_ray, ray_runner, progress=False)
    assert (again.skipped, again.ran, list(again.failed)) == (4, 1, ["u2"])


def test_a_node_killed_mid_run_every_unit_is_recorded_once(ray_cluster, ray_runner,
                                                           tmp_path: Path):
    marks = tmp_path / "marks"
    marks.mkdir()
    killed = threading.Event()

    def kill_the_second_node_mid_unit() -> None:
        # As soon as the second node's worker starts a unit (each takes 2 s), kill the node.
        while not killed.is_set():
            if any(p.name.startswith(NODE_IP) for p in marks.iterdir()):
                ray_cluster.kill_node(NODE_IP)
                killed.set()
            time.sleep(0.05)

    job = DoublingJob(tmp_path / "out", list(range(6)), seconds=2.0, marks=marks)
    watcher = threading.Thread(target=kill_the_second_node_mid_unit, daemon=True)
    watcher.start()
    try:
        summary = run_units(job, ray_runner, progress=False)
        assert killed.is_set()
        lost = [p.name.split()[1] for p in marks.iterdir() if p.name.startswith(NODE_IP)]
        assert len(lost) == 1  # the unit it was running ...
        assert _read(tmp_path / "out" / f"u{lost[0]}.json")["node"] == HEAD_IP  # ran again
        assert sorted(job.recorded()) == [f"u{i}" for i in range(6)]  # every unit, once
        assert job.values() == {f"u{i}": 2 * i for i in range(6)}
        assert summary.failed == {} and summary.lost_workers >= 1 and summary.retried == 1
    finally:
        killed.set()
        ray_cluster.add_node()


def _read(path: Path) -> dict:
    import json

    return dict(json.loads(path.read_text()))
