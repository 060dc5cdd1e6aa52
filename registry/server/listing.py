"""``/api/models``: one page of the repos a caller may see, filtered, sorted, with a cursor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session, sessionmaker

from registry.hub_models import SqlHubCommit, SqlHubRef, SqlHubRepo, SqlHubTreeEntry
from registry.server.cursors import decode_cursor, encode_cursor
from registry.server.errors import bad_request
from registry.server.reads import repo_json
from registry.server.repos import DEFAULT_BRANCH
from registry.server.types import Identity, TreeFile
from registry.server.validation import check_listing_query


class RepoLister:
    """Lists the repos of one database, as of their default branch."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def list_models(
        self,
        identity: Identity | None,
        *,
        search: str | None,
        author: str | None,
        filters: Sequence[str],
        sort: str | None,
        limit: int,
        cursor: str | None,
        with_siblings: bool,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``/api/models``; returns (items, next cursor or None)."""
        check_listing_query(search, author, filters)
        sort_column = {
            "lastModified": SqlHubRepo.last_modified,
            "last_modified": SqlHubRepo.last_modified,
            "createdAt": SqlHubRepo.created_at,
            "created_at": SqlHubRepo.created_at,
        }.get(sort or "")
        if (
            sort
            and sort_column is None
            and sort not in ("downloads", "likes", "trendingScore", "trending_score", "id")
        ):
            raise bad_request(f"unsupported sort {sort!r}")
        query = (
            select(SqlHubRepo, SqlHubCommit)
            .join(
                SqlHubRef,
                and_(SqlHubRef.repo_id == SqlHubRepo.id, SqlHubRef.name == DEFAULT_BRANCH),
            )
            .join(SqlHubCommit, SqlHubCommit.id == SqlHubRef.commit_id)
        )
        visible = [SqlHubRepo.private == false()]
        if identity is not None:
            visible.append(SqlHubRepo.namespace.in_(sorted(identity.namespaces)))
        query = query.where(or_(*visible))
        if author:
            query = query.where(SqlHubRepo.namespace == author)
        if search:
            query = query.where(SqlHubRepo.full_id_lower.contains(search.lower(), autoescape=True))
        for tag in filters:
            query = query.where(SqlHubCommit.tags_index.contains(f"\n{tag}\n", autoescape=True))
        if cursor:
            key, last_id = decode_cursor(cursor, sort_column is not None)
            if sort_column is not None:
                query = query.where(
                    or_(sort_column < key, and_(sort_column == key, SqlHubRepo.full_id > last_id))
                )
            else:
                query = query.where(SqlHubRepo.full_id > last_id)
        if sort_column is not None:
            query = query.order_by(sort_column.desc(), SqlHubRepo.full_id)
        else:
            query = query.order_by(SqlHubRepo.full_id)
        query = query.limit(limit + 1)
        with self.sessions.begin() as session:
            rows = session.execute(query).all()
            more = len(rows) > limit
            rows = rows[:limit]
            trees = _trees(session, [c.id for _, c in rows]) if with_siblings and rows else {}
            items = [
                repo_json(repo, commit, trees.get(commit.id, []) if with_siblings else None)
                for repo, commit in rows
            ]
        next_cursor = None
        if more and rows:
            last_repo = rows[-1][0]
            key_value = None
            if sort_column is SqlHubRepo.last_modified:
                key_value = last_repo.last_modified
            elif sort_column is not None:
                key_value = last_repo.created_at
            next_cursor = encode_cursor(key_value, last_repo.full_id)
        return items, next_cursor


def _trees(session: Session, commit_ids: list[int]) -> dict[int, list[TreeFile]]:
    """The files of several commits in one query, by commit id."""
    entry_rows = session.execute(
        select(
            SqlHubTreeEntry.commit_id,
            SqlHubTreeEntry.path,
            SqlHubTreeEntry.blob_sha256,
            SqlHubTreeEntry.size,
            SqlHubTreeEntry.is_lfs,
            SqlHubTreeEntry.git_oid,
        )
        .where(SqlHubTreeEntry.commit_id.in_(commit_ids))
        .order_by(SqlHubTreeEntry.commit_id, SqlHubTreeEntry.path)
    ).all()
    trees: dict[int, list[TreeFile]] = {}
    for e in entry_rows:
        trees.setdefault(e[0], []).append(TreeFile(e[1], e[2], e[3], e[4], e[5]))
    return trees
