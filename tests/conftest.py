"""Fixtures shared by every test folder: a real database per test and a real ``loradex serve``
per test file, each on SQLite and on the local PostgreSQL server; the helpers they are built
on live in ``tests/support``.

PostgreSQL runs are isolated by a fresh schema per test (``search_path`` is carried in the
URL, so subprocesses and servers started from a test see the same schema).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.pg import PG_ADMIN_URL, drop_pg_schema, make_pg_schema_url, pg_available

if TYPE_CHECKING:
    from tests.support.hub import HubServer

# Keep every test away from the user's real home, Hub and token.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("LORADEX_DB", None)
os.environ.pop("LORADEX_TOKEN", None)


@pytest.fixture(autouse=True)
def _one_torch_thread_for_tiny_models(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run torch on one thread in tests that are not marked slow (the tiny models).

    A tiny model's ops take microseconds, so a second thread gains nothing; and when the cores
    are busy (a study running beside ``make test``, a shared CI machine), each op waits for its
    second thread to be scheduled. One tiny-model study test took 5 s on one thread and more
    than 15 min on two beside three busy processes. The slow tests (the embedded model) keep
    torch's default.
    """
    torch = sys.modules.get("torch")  # imported at collection by every module that uses it
    if torch is None or request.node.get_closest_marker("slow") is not None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database URL: a SQLite file in a temp folder, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'registry.db'}"
        return
    if not pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    url, schema = make_pg_schema_url()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


@pytest.fixture
def loradex_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A throwaway LORADEX_HOME for CLI tests."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("LORADEX_HOME", str(home))
    return home


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubServer]:
    """A ``loradex serve`` subprocess (2 workers) on SQLite or on a fresh PostgreSQL schema,
    started at most once per test file and backend; fails the test if it logged an internal
    error."""
    # Imported here: the server stack is loaded only by the test files that start one.
    from tests.support.hub import start_hub

    root = tmp_path_factory.mktemp(f"hub-{request.param}")
    schema = None
    if request.param == "sqlite":
        db_url = f"sqlite:///{root / 'hub.db'}"
    else:
        try:
            db_url, schema = make_pg_schema_url("ldx_hub")
        except Exception as exc:  # the suite requires the PostgreSQL server; say so loudly
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    server = start_hub(root, db_url)
    try:
        yield server
    finally:
        server.launched.stop(timeout=15)
        if schema:
            drop_pg_schema(schema)
        errors = server.internal_errors()
        assert not errors, f"the server logged internal errors:\n{server.log_path.read_text()}"


@pytest.fixture
def hf_cache(tmp_path: Path) -> Path:
    """A private huggingface_hub cache folder for one test."""
    return tmp_path / "hf-cache"
