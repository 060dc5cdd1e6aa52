"""SQLAlchemy errors turned into loradex's typed database errors, once, at the engine.

``install_error_translation(engine)`` hooks SQLAlchemy's ``handle_error`` event, so every
statement, flush and connect through that engine (the store, the server, migrations) raises a
:class:`~loradex.errors.DatabaseError` subclass (or :class:`~loradex.errors.DiskFull`) that
says what happened and what to do, with the driver's exception chained as its cause.
SQLAlchemy still invalidates the connection pool on a disconnect after the hook has raised,
so the next statement after an outage reconnects.
"""

from __future__ import annotations

import errno
import sqlite3

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext

from loradex.errors import (
    DatabaseConflict,
    DatabaseLocked,
    DatabaseUnavailable,
    DiskFull,
    LoradexError,
)

# PostgreSQL SQLSTATEs (Appendix A of its manual) that mean "not now, try again".
_PG_RETRY = {"40001", "40P01", "55P03", "57014"}  # serialization, deadlock, lock n/a, timeout
_PG_DOWN_CLASSES = ("08", "57P", "53300")  # connection exceptions, shutting down, too many
_PG_FULL = {"53100"}  # disk_full


def install_error_translation(engine: Engine, display: str) -> None:
    """Make ``engine`` raise loradex's typed errors; ``display`` names the database."""

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> None:
        error = translate(context.original_exception, display, disconnect=context.is_disconnect)
        if error is not None:
            raise error  # SQLAlchemy chains the driver's exception as its __cause__


def translate(
    original: BaseException, display: str, *, disconnect: bool = False
) -> LoradexError | None:
    """The typed error for a driver exception (None: leave SQLAlchemy's own)."""
    message = " ".join(str(original).split()) or type(original).__name__
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    module = type(original).__module__.split(".")[0]
    if module == "sqlite3":
        return _sqlite(original, message, display)
    if sqlstate in _PG_FULL:
        return DiskFull(f"{display}: the database server's disk is full ({message})")
    if sqlstate in _PG_RETRY:
        return DatabaseLocked(f"{display} is busy ({message}); try again")
    if disconnect or (sqlstate and sqlstate.startswith(_PG_DOWN_CLASSES)) or (
        sqlstate is None and _is_operational(original)
    ):
        return DatabaseUnavailable(f"cannot reach {display} ({message}); try again when it is up")
    if _is_integrity(original):
        return DatabaseConflict(f"{display} refused the write ({message})")
    return None


def _sqlite(original: BaseException, message: str, display: str) -> LoradexError | None:
    code = getattr(original, "sqlite_errorcode", None)
    lowered = message.lower()
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in lowered:
        return DatabaseLocked(
            f"{display} is locked by another writer and stayed locked past the wait; try again"
        )
    if code == sqlite3.SQLITE_FULL or "disk is full" in lowered:
        return DiskFull(f"no space left for {display} ({message})")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM) or (
        "unable to open" in lowered or "readonly" in lowered
    ):
        return DatabaseUnavailable(f"cannot open {display} for writing ({message}): check the "
                                   "folder exists and is writable")
    if code == sqlite3.SQLITE_IOERR or "disk i/o error" in lowered:
        return DatabaseUnavailable(f"I/O error on {display} ({message})")
    if isinstance(original, sqlite3.IntegrityError):
        return DatabaseConflict(f"{display} refused the write ({message})")
    return None


def _is_operational(original: BaseException) -> bool:
    name = type(original).__name__
    return name == "OperationalError" or (isinstance(original, OSError) and (
        getattr(original, "errno", None) in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE)
    ))


def _is_integrity(original: BaseException) -> bool:
    return type(original).__name__ in ("IntegrityError", "UniqueViolation", "ForeignKeyViolation",
                                       "NotNullViolation", "CheckViolation")


def is_retryable(error: BaseException) -> bool:
    """True for errors a writer should retry after a pause (busy, locked, serialization)."""
    return isinstance(error, DatabaseLocked)

