"""One real two-node Ray cluster (127.0.0.2 and 127.0.0.3, one CPU each) per test module."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ray_cluster import LocalRayCluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """Started for the module, stopped (every process it started killed) even on failure."""
    pytest.importorskip("ray")
    # Ray's socket paths must stay short: a temp dir under /tmp, not pytest's deep one.
    temp = Path(tempfile.mkdtemp(prefix="ldx-ray-", dir="/tmp"))
    cluster = LocalRayCluster(temp)
    try:
        cluster.start()
        yield cluster
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)  # sessions' logs and sockets


@pytest.fixture
def ray_runner(ray_cluster: LocalRayCluster):
    """A runner for the cluster, importing the test helpers from this repository."""
    from composer.scaleout.ray_runner import RayRunner

    return RayRunner(ray_cluster.address, python_path=[str(REPO)])
