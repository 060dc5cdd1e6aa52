"""HTTP errors of the built-in Hub, shaped the way ``huggingface_hub`` maps them.

The client picks its exception class from ``X-Error-Code`` first, so every 404 carries one;
every error carries ``X-Error-Message`` and a JSON body ``{"error": ...}``.
"""

from __future__ import annotations


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
