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

    exit_code = 2


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


class DatabaseError(LoradexError, RuntimeError):
    """The registry database is unreachable or its schema is not what this version expects."""

    exit_code = 9


class ModelLoadError(LoradexError, RuntimeError):
    """A base model could not be loaded (missing folder, unknown id offline, bad GGUF)."""

    exit_code = 10
