"""HTTP errors of the built-in Hub, shaped the way ``huggingface_hub`` maps them.

The client picks its exception class from ``X-Error-Code`` first, so every 404 carries one;
every error carries ``X-Error-Message`` and a JSON body ``{"error": ...}``.
"""

from __future__ import annotations

from loradex.errors import (
    DatabaseConflict,
    DatabaseError,
    DatabaseLocked,
    DatabaseUnavailable,
    DiskFull,
    LoradexError,
    SchemaOutdated,
    StorageError,
)


class HubHTTPError(Exception):
    """An error answer: status, message, optional ``X-Error-Code`` and extra JSON body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}
        self.headers = headers or {}


def bad_request(message: str) -> HubHTTPError:
    """400: the request itself is malformed."""
    return HubHTTPError(400, message)


def unauthorized(message: str = "Invalid credentials in Authorization header") -> HubHTTPError:
    """401: no token where one is needed, or an unknown token."""
    return HubHTTPError(401, message)


def forbidden(message: str) -> HubHTTPError:
    """403: the token is valid but has no right on this namespace."""
    return HubHTTPError(403, message)


def repo_not_found(repo_id: str) -> HubHTTPError:
    """404 RepoNotFound (also for private repos of others: never reveal existence)."""
    return HubHTTPError(404, f"Repository Not Found for url: {repo_id}.", "RepoNotFound")


def revision_not_found(repo_id: str, revision: str) -> HubHTTPError:
    """404 RevisionNotFound."""
    return HubHTTPError(404, f"Invalid rev id: {revision} for {repo_id}", "RevisionNotFound")


def entry_not_found(path: str, commit_sha: str | None = None) -> HubHTTPError:
    """404 EntryNotFound; ``X-Repo-Commit`` lets the client cache the non-existence."""
    headers = {"X-Repo-Commit": commit_sha} if commit_sha else {}
    return HubHTTPError(
        404,
        f"Entry not found: A file with this name doesn't exist: {path}",
        "EntryNotFound",
        headers=headers,
    )


# Seconds a client should wait before retrying after a 503; huggingface_hub sleeps this + 1 s
# on the calls it retries (preupload, LFS batch, upload, verify), so keep it short: a database
# restart takes a few seconds.
RETRY_AFTER_SECONDS = 2


def service_unavailable(message: str) -> HubHTTPError:
    """503 + ``Retry-After``: a fault on the server's side that goes away by itself."""
    return HubHTTPError(503, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def insufficient_storage(message: str) -> HubHTTPError:
    """507: the blob store or the database has no space left (RFC 4918)."""
    return HubHTTPError(507, message)


def http_error_for(exc: LoradexError) -> HubHTTPError | None:
    """The answer for one of loradex's typed errors raised while serving a request.

    ``None`` for the server's own failures (a storage error other than a full disk, a database
    error with no better name): the app logs those with their traceback and answers 500.
    Everything else is either the client's fault (400) or a fault that passes (503, 507).
    """
    if isinstance(exc, (DatabaseUnavailable, DatabaseLocked, SchemaOutdated)):
        # Locked: another writer held the database past every retry; unavailable: the
        # database is down or restarting; outdated: someone ran `loradex db upgrade` under a
        # running server. All pass without the client changing anything.
        return service_unavailable(f"the registry database is unavailable, retry later: {exc}")
    if isinstance(exc, DiskFull):
        return insufficient_storage(f"no space left on the server: {exc}")
    if isinstance(exc, DatabaseConflict):
        return HubHTTPError(409, f"conflicting write, retry: {exc}")
    if isinstance(exc, (DatabaseError, StorageError)):
        return None
    return bad_request(str(exc))  # our own validation (InvalidAdapter, ...): the client's fault
