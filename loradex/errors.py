"""Every error loradex raises on purpose: one root, typed subclasses, one exit code each.

Each subclass also inherits the built-in it refines (as huggingface_hub does), so callers
may catch ``LookupError`` or ``ValueError`` without knowing loradex.
"""

from __future__ import annotations


class LoradexError(Exception):
    """Root of loradex's errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(LoradexError, ValueError):
    """A setting (database URL, endpoint, option combination) is invalid."""

    # Not 2: click answers its own usage errors with 2, and scripts must tell them apart.
    exit_code = 11


class ModuleNotFound(LoradexError, LookupError):
    """No module with that id (or revision) in the registry, the cache or the Hub."""

    exit_code = 3


class InvalidAdapter(LoradexError, ValueError):
    """A malformed adapter folder or file: bad safetensors, pickle only, config/tensor mismatch."""

    exit_code = 4


class IncompatibleModules(LoradexError, ValueError):
    """Modules that cannot be combined: different base models, targets or ranks."""

    exit_code = 5


class InvalidDataFile(LoradexError, ValueError):
    """A JSONL task file is missing, empty or malformed."""

    exit_code = 6


class HubUnavailable(LoradexError, ConnectionError):
    """The Hub endpoint could not be reached (down, refused, timed out)."""

    exit_code = 7


class HubError(LoradexError, RuntimeError):
    """The Hub answered, but refused the request (auth, permission, conflict, bad request)."""

    exit_code = 8


class GatedRepo(HubError, PermissionError):
    """The Hub repo is gated and this token (or no token) has not been granted access."""


class HubRateLimited(HubError):
    """The Hub answered 429 (or 503 with Retry-After); ``retry_after``: the seconds to wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HubRepoNotFound(ModuleNotFound):
    """The Hub has no such repo or revision (deleted, recreated, or made private)."""


class DatabaseError(LoradexError, RuntimeError):
    """The registry database is unreachable or its schema is not what this version expects."""

    exit_code = 9


class ModelLoadError(LoradexError, RuntimeError):
    """A base model could not be loaded (missing folder, unknown id offline, bad GGUF)."""

    exit_code = 10


class DatabaseUnavailable(DatabaseError, ConnectionError):
    """The database server cannot be reached or is restarting: try again later."""

    exit_code = 12


class DatabaseLocked(DatabaseError, TimeoutError):
    """Another writer holds the database (SQLite busy, PostgreSQL lock or serialization
    failure) for longer than the wait allowed: try again."""

    exit_code = 13


class DatabaseConflict(DatabaseError, ValueError):
    """A write broke an integrity rule (a unique id taken, a reference gone), usually because
    another writer got there first."""

    exit_code = 14


class SchemaOutdated(DatabaseError):
    """The database's schema is older than this loradex: ``loradex db upgrade`` (after a backup)."""

    exit_code = 15


class RegistryNotFound(DatabaseError, FileNotFoundError):
    """A read-only command named a registry database that does not exist."""

    exit_code = 16


class StorageError(LoradexError, OSError):
    """A file could not be read or written: permission denied, a missing folder, an I/O error."""

    exit_code = 17


class DiskFull(StorageError):
    """No space left on the device (or over quota) while writing."""

    exit_code = 18
