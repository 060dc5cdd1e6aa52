"""Reading one repo: its info, tree, paths-info, files to serve, refs and history."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, select, true
from sqlalchemy.orm import Session, sessionmaker

from registry.hub_models import SqlHubCommit, SqlHubRef, SqlHubRepo, SqlHubTreeEntry
from registry.server.blobstore import BlobStore
from registry.server.errors import HubHTTPError, entry_not_found
from registry.server.queries import resolve_revision, tree_files, visible_repo
from registry.server.timestamps import iso_z
from registry.server.types import Identity, ResolvedFile, TreeFile, tree_oid
from registry.server.validation import check_path, is_commit_sha


class RepoReader:
    """Answers the read endpoints of one repo over one database and one blob store."""

    def __init__(self, sessions: sessionmaker[Session], engine: Engine, blobs: BlobStore) -> None:
        self.sessions = sessions
        self.engine = engine
        self.blobs = blobs

    def model_info(
        self, identity: Identity | None, repo_id: str, revision: str, base_url: str
    ) -> dict[str, Any]:
        """``/api/models/{id}[/revision/{rev}]``."""
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            commit = resolve_revision(session, repo, revision)
            tree = tree_files(session, commit.id)
            return repo_json(repo, commit, tree)

    def tree(
        self,
        identity: Identity | None,
        repo_id: str,
        revision: str,
        path: str | None,
        recursive: bool,
    ) -> list[dict[str, Any]]:
        """``/api/models/{id}/tree/{rev}[/{path}]``: directories then files, repo-relative paths."""
        if path:
            check_path(path)
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            commit = resolve_revision(session, repo, revision)
            files = tree_files(session, commit.id)
        prefix = f"{path}/" if path else ""
        under = [f for f in files if f.path.startswith(prefix)]
        if path and not under:
            if any(f.path == path for f in files):
                return [f.tree_json() for f in files if f.path == path]
            raise entry_not_found(path, commit.sha)
        directories: dict[str, list[TreeFile]] = {}
        out_files: list[TreeFile] = []
        for f in under:
            rest = f.path[len(prefix) :]
            parts = rest.split("/")
            if len(parts) == 1:
                out_files.append(f)
                continue
            depth = len(parts) - 1 if recursive else 1
            for d in range(1, depth + 1):
                directories.setdefault(prefix + "/".join(parts[:d]), []).append(f)
            if recursive:
                out_files.append(f)
        result: list[dict[str, Any]] = [
            {"type": "directory", "oid": tree_oid(children), "size": 0, "path": d}
            for d, children in sorted(directories.items())
        ]
        result += [f.tree_json() for f in out_files]
        return result

    def paths_info(
        self, identity: Identity | None, repo_id: str, revision: str, paths: Sequence[str]
    ) -> list[dict[str, Any]]:
        """``POST /api/models/{id}/paths-info/{rev}``: tree entries of the given paths (missing
        paths are left out, as on the Hub)."""
        wanted = [check_path(p.rstrip("/")) for p in paths]
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            commit = resolve_revision(session, repo, revision)
            files = tree_files(session, commit.id)
        return paths_info_entries(files, wanted)

    def resolve_file(
        self, identity: Identity | None, repo_id: str, revision: str, path: str
    ) -> ResolvedFile:
        """The file to serve for ``/{id}/resolve/{rev}/{path}``."""
        check_path(path)
        fast = self._resolve_file_fast(identity, repo_id, revision, path)
        if fast is not None:
            return fast
        # Slow path: find out which of repo, revision or file is missing, for the right 404.
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            check_gate(identity, repo_id, repo.namespace, repo.gated)
            commit = resolve_revision(session, repo, revision)
            row = session.get(SqlHubTreeEntry, (commit.id, path))
            if row is None:
                raise entry_not_found(path, commit.sha)
            tree_file = TreeFile(row.path, row.blob_sha256, row.size, row.is_lfs, row.git_oid)
            return ResolvedFile(commit.sha, tree_file, self.blobs.path_for(tree_file.sha256))

    def _resolve_file_fast(
        self, identity: Identity | None, repo_id: str, revision: str, path: str
    ) -> ResolvedFile | None:
        """One Core query for the common case (the file exists); None sends to the slow path.

        Downloads and the sync's metadata reads are nearly all resolves: this keeps them to a
        single indexed SELECT instead of four ORM round trips.
        """
        repos, commits = SqlHubRepo.__table__, SqlHubCommit.__table__
        entries, refs = SqlHubTreeEntry.__table__, SqlHubRef.__table__
        entry_join = and_(entries.c.commit_id == commits.c.id, entries.c.path == path)
        if is_commit_sha(revision):
            source = repos.join(commits, commits.c.repo_id == repos.c.id).join(entries, entry_join)
            condition = commits.c.sha == revision
        else:
            source = (
                repos.join(refs, and_(refs.c.repo_id == repos.c.id, refs.c.name == revision))
                .join(commits, commits.c.id == refs.c.commit_id)
                .join(entries, entry_join)
            )
            condition = true()
        query = (
            select(
                repos.c.private,
                repos.c.namespace,
                repos.c.gated,
                commits.c.sha,
                entries.c.blob_sha256,
                entries.c.size,
                entries.c.is_lfs,
                entries.c.git_oid,
            )
            .select_from(source)
            .where(repos.c.full_id == repo_id, condition)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        private, namespace, gated, sha, blob, size, is_lfs, git_oid = row
        if private and (identity is None or namespace not in identity.namespaces):
            return None
        check_gate(identity, repo_id, namespace, gated)
        tree_file = TreeFile(path, blob, size, bool(is_lfs), git_oid)
        return ResolvedFile(sha, tree_file, self.blobs.path_for(blob))

    def refs(self, identity: Identity | None, repo_id: str) -> dict[str, Any]:
        """``/api/models/{id}/refs``."""
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            rows = session.execute(
                select(SqlHubRef.name, SqlHubCommit.sha)
                .join(SqlHubCommit, SqlHubCommit.id == SqlHubRef.commit_id)
                .where(SqlHubRef.repo_id == repo.id)
                .order_by(SqlHubRef.name)
            ).all()
        return {
            "branches": [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                for name, sha in rows
            ],
            "tags": [],
            "converts": [],
            "pullRequests": [],
        }

    def commits(
        self, identity: Identity | None, repo_id: str, revision: str
    ) -> list[dict[str, Any]]:
        """``/api/models/{id}/commits/{rev}``: the history reachable from ``rev``, newest first."""
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            commit: SqlHubCommit | None = resolve_revision(session, repo, revision)
            history = []
            while commit is not None:
                history.append(
                    {
                        "id": commit.sha,
                        "title": commit.title,
                        "message": commit.message,
                        "date": iso_z(commit.created_at),
                        "authors": [{"user": commit.author}] if commit.author else [],
                    }
                )
                commit = session.get(SqlHubCommit, commit.parent_id) if commit.parent_id else None
            return history


def check_gate(
    identity: Identity | None, repo_id: str, namespace: str, gated: str | None
) -> None:
    """Files of a gated repo are read by its namespace only, as on the Hub: 401 to an anonymous
    caller, 403 to a token without access (``X-Error-Code: GatedRepo`` on both, which
    huggingface_hub raises as ``GatedRepoError``). Its info, tree and listing stay public."""
    if not gated or (identity is not None and namespace in identity.namespaces):
        return
    if identity is None:
        raise HubHTTPError(
            401,
            f"Access to model {repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in.",
            "GatedRepo",
        )
    raise HubHTTPError(
        403,
        f"Access to model {repo_id} is restricted and you are not in the authorized list.",
        "GatedRepo",
    )


def repo_json(
    repo: SqlHubRepo | Any, commit: SqlHubCommit | Any, tree: list[TreeFile] | None
) -> dict[str, Any]:
    """A repo in the shape of ``/api/models`` (with ``siblings`` when its tree is given)."""
    item: dict[str, Any] = {
        "_id": repo.uid,
        "id": repo.full_id,
        "modelId": repo.full_id,
        "author": repo.namespace,
        "sha": commit.sha,
        "lastModified": iso_z(commit.created_at),
        "createdAt": iso_z(repo.created_at),
        "private": bool(repo.private),
        "disabled": False,
        "gated": repo.gated or False,
        "downloads": 0,
        "likes": 0,
        "trendingScore": 0,
        "library_name": commit.library_name,
        "pipeline_tag": commit.pipeline_tag,
        "tags": json.loads(commit.tags),
        "cardData": json.loads(commit.card_data),
        "spaces": [],
    }
    if tree is not None:
        item["siblings"] = [f.sibling_json() for f in tree]
        item["usedStorage"] = sum(f.size for f in tree)
    return item


def paths_info_entries(files: Sequence[TreeFile], wanted: Iterable[str]) -> list[dict[str, Any]]:
    """The ``paths-info`` entries of ``wanted`` (files and folders); missing paths are left out.

    Every folder's files are gathered once: N paths in a tree of M files cost O(M x depth + N),
    where scanning the tree per path cost O(N x M) (40,000 paths in a 20,000-file repo took
    minutes).
    """
    by_path = {f.path: f for f in files}
    folders: dict[str, list[TreeFile]] = {}
    for f in files:
        parts = f.path.split("/")
        for depth in range(1, len(parts)):
            folders.setdefault("/".join(parts[:depth]), []).append(f)
    result: list[dict[str, Any]] = []
    for path in dict.fromkeys(wanted):
        if path in by_path:
            result.append(by_path[path].tree_json())
        elif path in folders:
            result.append(
                {"type": "directory", "oid": tree_oid(folders[path]), "size": 0, "path": path}
            )
    return result
