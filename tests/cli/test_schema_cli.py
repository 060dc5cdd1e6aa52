"""Schema changes are explicit: commands refuse a registry behind head, `db upgrade` and
`db backup` do the work, and read-only commands never create a registry (issue 23)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from loradex.errors import RegistryNotFound, SchemaOutdated
from registry import schema
from tests.registry.test_migrations import PREVIOUS, _old_registry
from tests.support.cli import run
from tests.support.hub import loradex


def test_search_on_a_typo_path_says_there_is_no_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'typo' / 'dir' / 'x.db'}"
    for argv in (["search", "foo"], ["show", "alice/m"]):
        code, out, err = run(["--db", url, *argv], capsys)
        assert code == RegistryNotFound.exit_code and out == ""
        assert err.startswith("error: no registry at sqlite:///") and err.count("\n") == 1
    assert not (tmp_path / "typo").exists()


def test_commands_refuse_an_old_registry_and_db_upgrade_brings_it_to_head(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _old_registry(db_url)
    for argv in (["search", "m"], ["show", "alice/m"], ["db", "sign"]):
        code, _out, err = run(["--db", db_url, *argv], capsys)
        assert code == SchemaOutdated.exit_code, argv
        assert "then run `loradex db upgrade`" in err and err.count("\n") == 1
    assert schema.current(db_url) == {PREVIOUS}
    code, out, _err = run(["--db", db_url, "db", "upgrade"], capsys)
    assert code == 0 and f"upgraded from {PREVIOUS} to " in out
    code, out, _err = run(["--db", db_url, "show", "--json", "alice/m"], capsys)
    assert code == 0 and "alice/m" in out


def test_db_backup_copies_a_sqlite_registry_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _old_registry(url)
    target = tmp_path / "before-upgrade.db"
    code, out, _err = run(["--db", url, "db", "backup", "--out", str(target)], capsys)
    assert code == 0 and f"(revision {PREVIOUS}) to {target}" in out
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [(PREVIOUS,)]
        assert copy.execute("SELECT repo_id FROM modules").fetchall() == [("alice/m",)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.postgres
def test_db_backup_on_postgresql_prints_the_pg_dump_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql+psycopg://postgres:secret@127.0.0.1:5432/test"
    code, out, _err = run(["--db", url, "db", "backup"], capsys)
    assert code == 0 and "pg_dump --format=custom" in out and "secret" not in out


def test_serve_refuses_to_start_on_an_old_registry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _old_registry(url)
    result = loradex("--db", url, "serve", "--port", "0", "--data", str(tmp_path / "hub"),
                     check=False, timeout=60)
    assert result.returncode == SchemaOutdated.exit_code
    assert "then run `loradex db upgrade`" in result.stderr and "Traceback" not in result.stderr
