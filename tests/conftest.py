"""Shared fixtures: a real database per test, on SQLite and on the local PostgreSQL server.

PostgreSQL runs are isolated by a fresh schema per test (``search_path`` is carried in the
URL, so subprocesses and servers started from a test see the same schema).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

PG_ADMIN_URL = os.environ.get(
    "LORADEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# Keep every test away from the user's real home, Hub and token.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("LORADEX_DB", None)
os.environ.pop("LORADEX_TOKEN", None)


def _pg_available() -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    """Whether the PostgreSQL server answers; tests marked postgres fail loudly if it does not."""
    return _pg_available()


def make_pg_schema_url() -> tuple[str, str]:
    """Create a fresh schema on the test server; return (url bound to it, schema name)."""
    import sqlalchemy as sa

    schema = f"ldx_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{sep}options={quote(f'-csearch_path={schema}')}", schema


def drop_pg_schema(schema: str) -> None:
    """Drop a schema made by :func:`make_pg_schema_url`."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database URL: a SQLite file in a temp folder, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'registry.db'}"
        return
    if not _pg_available():
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
