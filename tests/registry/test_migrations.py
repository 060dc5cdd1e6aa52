"""The Alembic history and the SQLAlchemy models describe the same schema, on both databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from loradex.errors import (
    DatabaseError,
    DatabaseUnavailable,
    RegistryNotFound,
    SchemaOutdated,
)
from registry import schema
from registry.db import make_engine
from registry.entities import Module, SearchQuery
from registry.store import RegistryStore


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    schema.upgrade(db_url)
    assert schema.metadata_diff(db_url) == []


def test_postgresql_gets_its_own_sort_indexes(db_url: str) -> None:
    """"Recently updated first" (NULLS LAST) has an index on PostgreSQL, which SQLite's
    CREATE INDEX cannot say and its NULL ordering does not need."""
    schema.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            names = {ix["name"] for ix in sa.inspect(conn).get_indexes("modules")}
    finally:
        engine.dispose()
    wanted = {"ix_pg_modules_updated_desc", "ix_pg_modules_base_updated_desc"}
    assert (wanted <= names) if db_url.startswith("postgresql") else not (wanted & names)


def test_upgrade_downgrade_upgrade(db_url: str, module_factory: Callable[..., Module]) -> None:
    schema.upgrade(db_url)
    assert schema.current(db_url) == schema.script_heads()
    assert {"modules", "module_tags", "module_targets", "module_files", "module_lineage",
            "sync_state", "module_fts"} <= _tables(db_url)
    schema.downgrade(db_url, "base")
    assert schema.current(db_url) == set()
    assert _tables(db_url) <= {"alembic_version"}
    schema.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        store = RegistryStore(engine)
        store.upsert_module(module_factory("alice/past-tense"))
        assert store.count(SearchQuery(text="tense")) == 1
    finally:
        engine.dispose()


PREVIOUS = "0003_signatures"  # the revision before head: what a user's registry is at


def _old_registry(db_url: str) -> None:
    """A registry made by the previous loradex: schema at PREVIOUS, one module in it, written
    with that revision's columns (today's store would write columns it lacks)."""
    schema.upgrade(db_url, PREVIOUS)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO modules (source, repo_id, kind, base_model, base_model_key, "
                "peft_type, rank, target_key, downloads, likes, indexed_at) VALUES ('local', "
                "'alice/m', 'lora', 'org/base', 'org/base', 'LORA', 8, 'q_proj,v_proj', 3, 1, "
                ":now)"), {"now": datetime(2026, 1, 1, tzinfo=UTC)})
    finally:
        engine.dispose()


def test_a_registry_behind_head_is_refused_until_db_upgrade(db_url: str) -> None:
    _old_registry(db_url)
    with pytest.raises(SchemaOutdated, match=rf"at schema revision {PREVIOUS}, older .* back it "
                       r"up \(`(loradex db backup|pg_dump .*)`\), then run `loradex db upgrade`"):
        schema.ensure_schema(db_url)
    assert schema.current(db_url) == {PREVIOUS}  # nothing migrated in passing
    schema.upgrade(db_url)
    schema.ensure_schema(db_url)
    engine = make_engine(db_url)
    try:
        module = RegistryStore(engine).get_module("alice/m")
    finally:
        engine.dispose()
    assert (module.rank, module.downloads, module.use_dora) == (8, 3, False)
    assert module.local_path is None


def test_read_only_check_never_creates_a_registry(db_url: str) -> None:
    with pytest.raises(RegistryNotFound, match="no registry at"):
        schema.ensure_schema(db_url, create=False)
    assert schema.current(db_url) == set()


def test_ensure_schema_creates_then_is_a_no_op(db_url: str) -> None:
    schema.ensure_schema(db_url)
    assert schema.current(db_url) == schema.script_heads()
    schema.ensure_schema(db_url)
    assert schema.current(db_url) == schema.script_heads()


def test_ensure_schema_refuses_a_newer_database(db_url: str) -> None:
    schema.upgrade(db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="9999_future, which this version of loradex"):
        schema.ensure_schema(db_url)


def test_ensure_schema_at_head_does_not_import_alembic(db_url: str) -> None:
    schema.upgrade(db_url)
    code = (
        "import sys\n"
        "from registry.schema import ensure_schema\n"
        f"ensure_schema({db_url!r})\n"
        "assert 'alembic' not in sys.modules, 'alembic imported on the fast path'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_script_heads_reads_the_revision_files() -> None:
    heads = schema.script_heads()
    assert len(heads) == 1
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(schema.alembic_config("sqlite://"))
    assert heads == set(script.get_heads())


def test_unreachable_database_is_one_clear_error() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    with pytest.raises(DatabaseUnavailable, match=r"cannot reach postgresql.*Connection refused"):
        schema.ensure_schema(url)


def test_concurrent_first_use_migrates_once(db_url: str) -> None:
    code = "import sys; from registry.schema import ensure_schema; ensure_schema(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert schema.current(db_url) == schema.script_heads()
    assert schema.metadata_diff(db_url) == []
