"""Database and file faults become loradex's typed errors, each one line (issue 23, part 2)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from loradex.errors import DatabaseConflict, DatabaseLocked, DiskFull, StorageError
from loradex.files import storage_error
from registry.db import make_engine
from tests.support.cli import run


def test_a_sqlite_writer_held_up_past_the_wait_is_database_locked(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        locked = pytest.raises(DatabaseLocked, match="locked by another writer")
        with locked as info, engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA busy_timeout=50")
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)  # the driver's, kept
    finally:
        holder.rollback()
        holder.close()
    with engine.begin() as conn:  # the same engine works once the lock is gone
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        with pytest.raises(DatabaseConflict, match="refused the write"):
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    engine.dispose()


@pytest.mark.parametrize(("code", "kind", "message"), [
    (errno.ENOSPC, DiskFull, "no space left on the device writing /x/f"),
    (errno.EACCES, StorageError, "permission denied: /x/f"),
    (errno.ENOENT, StorageError, "no such file or folder: /x/f"),
])
def test_os_errors_become_one_typed_line(code: int, kind: type, message: str) -> None:
    error = storage_error(OSError(code, "whatever", "/x/f"))
    assert type(error) is kind and str(error).startswith(message) and "\n" not in str(error)


def test_a_file_error_in_a_command_is_one_line_and_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    library = Path(__file__).resolve().parents[2] / "library" / "tense"
    code, out, err = run(["--db", f"sqlite:///{blocker / 'r.db'}", "add", str(library)], capsys)
    assert (code, out) == (StorageError.exit_code, "")
    assert err.startswith("error: ") and str(blocker) in err and err.count("\n") == 1
