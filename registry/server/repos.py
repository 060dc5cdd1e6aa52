"""Creating and deleting repos (the id of a deleted repo may be created afresh), and their
settings."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from loradex.errors import DatabaseConflict
from registry.hub_models import SqlHubCommit, SqlHubRef, SqlHubRepo, SqlHubTreeEntry
from registry.lfs import LFS_PATTERNS
from registry.server.auth import require_write
from registry.server.blobstore import BlobStore, git_blob_sha1
from registry.server.commits import add_commit, notify_indexer
from registry.server.errors import HubHTTPError, bad_request, unauthorized
from registry.server.queries import begin_write, visible_repo
from registry.server.timestamps import utcnow
from registry.server.types import HostedCommit, Identity, Indexer, TreeFile
from registry.server.validation import check_repo_id

DEFAULT_BRANCH = "main"
GATED_MODES = ("auto", "manual")  # the Hub's gated modes; False (or null) opens the repo
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


class RepoAdmin:
    """Creates and deletes the repos of one database and one blob store."""

    def __init__(
        self, sessions: sessionmaker[Session], blobs: BlobStore, indexer: Indexer | None
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.indexer = indexer

    def create_repo(
        self,
        identity: Identity | None,
        namespace: str | None,
        name: str,
        private: bool,
        base_url: str,
    ) -> dict[str, Any]:
        """Create ``namespace/name`` with an initial commit holding ``.gitattributes``."""
        if identity is None:
            raise unauthorized("a token is required to create a repo")
        namespace = namespace or identity.user
        repo_id = check_repo_id(namespace, name)
        require_write(identity, namespace)
        url = f"{base_url}/{repo_id}"
        attributes_sha = self.blobs.put_bytes(GITATTRIBUTES)
        now = utcnow()
        try:
            with self.sessions.begin() as session:
                repo = SqlHubRepo(
                    uid=uuid.uuid4().hex[:24],
                    namespace=namespace,
                    name=name,
                    full_id=repo_id,
                    full_id_lower=repo_id.lower(),
                    private=private,
                    created_at=now,
                    last_modified=now,
                )
                session.add(repo)
                session.flush()
                tree = [
                    TreeFile(
                        ".gitattributes",
                        attributes_sha,
                        len(GITATTRIBUTES),
                        False,
                        git_blob_sha1(GITATTRIBUTES),
                    )
                ]
                commit = add_commit(
                    session, self.blobs, repo, None, tree, "initial commit", "", identity.user, now
                )
                session.add(SqlHubRef(repo_id=repo.id, name=DEFAULT_BRANCH, commit_id=commit.id))
        except DatabaseConflict:
            raise HubHTTPError(
                409, "You already created this model repo", extra={"url": url}
            ) from None
        return {"url": url, "name": repo_id, "id": repo.uid}

    def delete_repo(self, identity: Identity | None, namespace: str | None, name: str) -> None:
        """Delete a repo and its whole history (the id may then be created afresh)."""
        if identity is None:
            raise unauthorized("a token is required to delete a repo")
        namespace = namespace or identity.user
        repo_id = check_repo_id(namespace, name)
        with self.sessions.begin() as session:
            begin_write(session)
            repo = visible_repo(session, identity, repo_id, lock=True)
            require_write(identity, namespace)
            commit_ids = select(SqlHubCommit.id).where(SqlHubCommit.repo_id == repo.id)
            session.execute(delete(SqlHubRef).where(SqlHubRef.repo_id == repo.id))
            session.execute(
                delete(SqlHubTreeEntry).where(SqlHubTreeEntry.commit_id.in_(commit_ids))
            )
            session.execute(
                update(SqlHubCommit).where(SqlHubCommit.repo_id == repo.id).values(parent_id=None)
            )
            session.execute(delete(SqlHubCommit).where(SqlHubCommit.repo_id == repo.id))
            session.execute(delete(SqlHubRepo).where(SqlHubRepo.id == repo.id))
        notify_indexer(self.indexer, HostedCommit(repo_id, "", utcnow(), (), self.blobs))

    def update_settings(
        self, identity: Identity | None, repo_id: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        """``PUT /api/models/{id}/settings`` by a writer of the repo's namespace, as
        ``HfApi.update_repo_settings`` sends it: ``{"gated": "auto" | "manual" | false}``.

        Visibility is chosen when the repo is created; this server changes only ``gated``.
        """
        if identity is None:
            raise unauthorized("a token is required to change a repo's settings")
        unknown = sorted(set(settings) - {"gated"})
        if unknown:
            raise bad_request(
                f"settings: this server changes only 'gated', not {', '.join(map(repr, unknown))}"
            )
        if "gated" not in settings:
            raise bad_request("settings: nothing to change (give 'gated')")
        gated = settings["gated"]
        if gated is not False and gated is not None and gated not in GATED_MODES:
            raise bad_request(f"settings: 'gated' must be 'auto', 'manual' or false, not {gated!r}")
        with self.sessions.begin() as session:
            begin_write(session)
            repo = visible_repo(session, identity, repo_id, lock=True)
            require_write(identity, repo.namespace)
            repo.gated = gated or None
        return {"gated": gated or False}
