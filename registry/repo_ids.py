"""What a repo id may be: ``NAMESPACE/NAME``, one rule for ``loradex add``, publish and our Hub.

huggingface_hub's ``validate_repo_id`` is the floor (what the Hub client itself refuses). On top
of it each half must be ASCII: 1-96 letters, digits, ``.``, ``_`` or ``-``, starting with a
letter or digit, with no ``--`` or ``..`` (``--`` separates the parts of a cache folder name:
``models--alice--x``), not ending in ``.``, ``-`` or ``.git``. The built-in Hub checks a
namespace and a name separately with :func:`check_repo_name`, so a repo id that ``loradex add
--id`` accepts is one the server accepts, and the other way round.
"""

from __future__ import annotations

import re

from loradex.errors import ConfigError

__all__ = ["MAX_NAME_LENGTH", "check_repo_id", "check_repo_name"]

MAX_NAME_LENGTH = 96
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_repo_name(name: object, what: str = "repo name") -> str:
    """One half of a repo id (``what``: "namespace", "repo name", ...); ConfigError if invalid."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"invalid {what}: must be a non-empty string")
    if (
        len(name) > MAX_NAME_LENGTH
        or not _NAME.fullmatch(name)
        or "--" in name
        or ".." in name
        or name.endswith((".git", ".", "-"))
    ):
        raise ConfigError(
            f"invalid {what} {name!r}: use ASCII letters, digits, '.', '_' and '-', starting "
            f"with a letter or digit (no '--' or '..', not ending in '.', '-' or '.git', at "
            f"most {MAX_NAME_LENGTH} characters)"
        )
    return name


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a valid ``NAMESPACE/NAME``; else a ConfigError naming the problem."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    prefix = f"{repo_id!r} is not a repo id of the form namespace/name"
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ConfigError(f"{prefix}: it needs exactly one '/'")
    namespace, name = repo_id.split("/")
    try:
        check_repo_name(namespace, "namespace")
        check_repo_name(name, "repo name")
    except ConfigError as exc:
        raise ConfigError(f"{prefix}: {exc}") from None
    try:
        # Stricter than huggingface_hub today; should a later version refuse more, so do we.
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"{prefix}: {exc}") from None
    return repo_id
