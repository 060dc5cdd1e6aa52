"""The lookups every part of the server shares: a visible repo, a revision, a commit's tree.

Each takes the caller's open session, so a request reads all it needs in one transaction.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import is_sqlite
from registry.hub_models import SqlHubCommit, SqlHubRef, SqlHubRepo, SqlHubTreeEntry
from registry.server.errors import repo_not_found, revision_not_found
from registry.server.types import Identity, TreeFile
from registry.server.validation import is_commit_sha


def begin_write(session: Session) -> None:
    """On SQLite take the write lock up front, so two writers queue instead of deadlocking."""
    if is_sqlite(session.get_bind()):  # type: ignore[arg-type]
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")


def visible_repo(
    session: Session, identity: Identity | None, repo_id: str, *, lock: bool = False
) -> SqlHubRepo:
    """The repo row (404 when missing or private to others); ``lock`` for writers.

    Writers to one repo (commits, deletion) lock its row first, so on PostgreSQL they queue
    instead of deadlocking (a commit's foreign key share-locks the repo row, then waits on
    the branch row a deletion holds) or committing into a repo deleted under them. A writer
    that waited for a deletion then finds no row: a 404, not a foreign-key 500. SQLite
    writers are already serialised by ``BEGIN IMMEDIATE``.
    """
    query = select(SqlHubRepo).where(SqlHubRepo.full_id == repo_id)
    repo = session.scalar(query.with_for_update() if lock else query)
    if repo is None or (
        repo.private and (identity is None or repo.namespace not in identity.namespaces)
    ):
        raise repo_not_found(repo_id)
    return repo


def resolve_revision(session: Session, repo: SqlHubRepo, revision: str) -> SqlHubCommit:
    """The commit a branch name or a full commit sha points at (404 RevisionNotFound)."""
    ref = session.scalar(
        select(SqlHubRef).where(SqlHubRef.repo_id == repo.id, SqlHubRef.name == revision)
    )
    if ref is not None:
        commit = session.get(SqlHubCommit, ref.commit_id)
    elif is_commit_sha(revision):
        commit = session.scalar(
            select(SqlHubCommit).where(
                SqlHubCommit.repo_id == repo.id, SqlHubCommit.sha == revision
            )
        )
    else:
        commit = None
    if commit is None:
        raise revision_not_found(repo.full_id, revision)
    return commit


def tree_files(session: Session, commit_id: int) -> list[TreeFile]:
    """Every file of a commit, sorted by path."""
    rows = session.execute(
        select(
            SqlHubTreeEntry.path,
            SqlHubTreeEntry.blob_sha256,
            SqlHubTreeEntry.size,
            SqlHubTreeEntry.is_lfs,
            SqlHubTreeEntry.git_oid,
        )
        .where(SqlHubTreeEntry.commit_id == commit_id)
        .order_by(SqlHubTreeEntry.path)
    ).all()
    return [TreeFile(r[0], r[1], r[2], r[3], r[4]) for r in rows]
