"""Validation of what a client sends: repo names, file paths, revisions, ranges."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from loradex.errors import ConfigError
from registry import repo_ids
from registry.server.errors import HubHTTPError, bad_request

_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
MAX_PATH_LENGTH = 1000
# Folder work (tree listings, folder oids, the file/folder clash check) grows with depth for
# every file; 500 levels of "a/a/..." made one recursive listing of 5,000 files take 14 s.
MAX_PATH_DEPTH = 64


def check_name(name: object, what: str = "repo name") -> str:
    """A namespace, repo or user name by the one rule of :mod:`registry.repo_ids`; else a 400."""
    try:
        return repo_ids.check_repo_name(name, what)
    except ConfigError as exc:
        raise bad_request(str(exc)) from None


def url_repo_id(namespace: str, name: str) -> str | None:
    """The repo id two URL segments name, or None when either half is no valid name (the
    API and the pages each answer that with their own 404)."""
    try:
        check_name(namespace, "namespace")
        check_name(name, "repo name")
    except HubHTTPError:
        return None
    return f"{namespace}/{name}"


def check_repo_id(namespace: str, name: str) -> str:
    """``namespace/name`` by the one rule of :mod:`registry.repo_ids`; else a 400."""
    try:
        return repo_ids.check_repo_id(f"{namespace}/{name}")
    except ConfigError as exc:
        raise bad_request(str(exc)) from None


MAX_FILTERS = 32
MAX_QUERY_TEXT = 256


def check_listing_query(search: str | None, author: str | None, filters: Sequence[str]) -> None:
    """400 for listing parameters no repo could match and the database should never see.

    SQLite refuses a LIKE pattern over 50,000 bytes and an expression tree over 1,000 levels
    ("pattern too complex", "Expression tree is too large"): an over-long search or thousands
    of filters would otherwise surface as a 500.
    """
    for what, text in (("search", search), ("author", author), *(("filter", f) for f in filters)):
        if text is not None and len(text) > MAX_QUERY_TEXT:
            raise bad_request(f"{what} longer than {MAX_QUERY_TEXT} characters")
    if len(filters) > MAX_FILTERS:
        raise bad_request(f"at most {MAX_FILTERS} filter values, got {len(filters)}")


def check_path(path: object) -> str:
    """A file path inside a repo: relative, ``/``-separated, no ``..``/``.``/``.git`` segments."""
    if not isinstance(path, str) or not path:
        raise bad_request("invalid path: must be a non-empty string")
    if len(path) > MAX_PATH_LENGTH:
        raise bad_request(f"invalid path: longer than {MAX_PATH_LENGTH} characters")
    # Control characters: C0 (NUL, newline, ...), DEL (0x7f) and C1 (0x80-0x9f), which
    # terminals, logs and git tools interpret; unicodedata calls all three "Cc".
    if "\\" in path or any(unicodedata.category(c) == "Cc" for c in path):
        raise bad_request(f"invalid path {path!r}: control characters and backslashes are refused")
    if path.count("/") >= MAX_PATH_DEPTH:
        raise bad_request(f"invalid path: more than {MAX_PATH_DEPTH} levels of folders")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise bad_request(f"invalid path {path!r}: absolute paths are refused")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise bad_request(f"invalid path {path!r}: empty, '.' or '..' segment")
        if segment.lower() == ".git":
            raise bad_request(f"invalid path {path!r}: '.git' segments are refused")
    return path


def reject_nul(value: object) -> None:
    """400 when any string in a decoded JSON value contains NUL (PostgreSQL text cannot)."""
    if isinstance(value, str):
        if "\0" in value:
            raise bad_request("NUL characters are not allowed in request fields")
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_nul(key)
            reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            reject_nul(item)


def is_commit_sha(revision: str) -> bool:
    """True when ``revision`` looks like a full commit sha (40 lowercase hex)."""
    return bool(_SHA1_RE.match(revision))


# RFC 9110 §14.1.1: ``bytes=first-last``, ``bytes=first-`` or ``bytes=-suffix``, with no
# whitespace (the grammar allows optional whitespace only around the commas between ranges).
_RANGE_RE = re.compile(r"bytes=(?:([0-9]+)-([0-9]*)|-([0-9]+))", re.IGNORECASE)


def parse_range(header: str, total: int) -> tuple[int, int] | None:
    """Parse ``Range: bytes=a-b`` / ``a-`` / ``-n`` into inclusive (start, end); None = whole file.

    Raises a 416 :class:`HubHTTPError` when the range cannot be satisfied, and also when it is
    not one well-formed byte range (``bytes = 0 - 5``, ``bytes=0-1,5-6``, ``items=0-5``):
    RFC 9110 §14.2 lets a server ignore or reject an invalid ranges-specifier, and rejecting
    never sends a whole (maybe multi-GB) file to a client that asked for a few bytes.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header)
    if match is None:
        raise _unsatisfiable(
            total, f"invalid Range header {header[:100]!r}: expected one 'bytes=a-b' range"
        )
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise _unsatisfiable(total)
        start, end = max(total - int(suffix), 0), total - 1
    else:
        start = int(first)
        end = int(last) if last else total - 1
    if start >= total:
        raise _unsatisfiable(total)
    if end < start:
        raise _unsatisfiable(total, f"invalid Range header {header[:100]!r}: last before first")
    return start, min(end, total - 1)


def _unsatisfiable(total: int, message: str = "Requested range not satisfiable") -> HubHTTPError:
    return HubHTTPError(416, message, headers={"Content-Range": f"bytes */{total}"})
