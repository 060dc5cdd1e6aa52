"""What the built-in Hub does, independent of HTTP: one object over its parts.

Every method is synchronous (the ASGI layer runs them in a thread pool) and opens its own
short transaction, so several server processes can share one SQLite file (WAL + busy timeout)
or one PostgreSQL database. The parts: ``auth`` (who is asking), ``repos`` (create, delete),
``reads`` and ``listing`` (what a client reads), ``uploads`` (preupload, LFS batch, signed
URLs), ``commits`` (apply a commit), ``gc`` (unreferenced blobs); token administration is in
``tokens``.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from registry.server import gc
from registry.server.auth import Authenticator, whoami
from registry.server.blobstore import BlobStore
from registry.server.commits import Committer
from registry.server.listing import RepoLister
from registry.server.reads import RepoReader
from registry.server.repos import RepoAdmin
from registry.server.types import Indexer, ServerConfig
from registry.server.uploads import Uploads


class HubService:
    """The Hub's behaviour over one database and one blob store.

    The ASGI app, the CLI and the tests talk to this one object; each of its methods is the
    method of the part that owns it.
    """

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        config: ServerConfig,
        secret: bytes,
        indexer: Indexer | None = None,
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.config = config
        # Rows stay readable after the commit: answers are built from them once the
        # transaction is over (a created repo's uid, a resolved commit's sha).
        sessions = sessionmaker(engine, expire_on_commit=False)
        self.authenticate = Authenticator(sessions).authenticate
        self.whoami = whoami
        repos = RepoAdmin(sessions, blobs, indexer)
        self.create_repo = repos.create_repo
        self.delete_repo = repos.delete_repo
        self.update_repo_settings = repos.update_settings
        reads = RepoReader(sessions, engine, blobs)
        self.model_info = reads.model_info
        self.tree = reads.tree
        self.paths_info = reads.paths_info
        self.resolve_file = reads.resolve_file
        self.refs = reads.refs
        self.commits = reads.commits
        self.list_models = RepoLister(sessions).list_models
        uploads = Uploads(sessions, blobs, config, secret)
        self.preupload = uploads.preupload
        self.lfs_batch = uploads.lfs_batch
        self.check_upload_signature = uploads.check_upload_signature
        self.commit = Committer(sessions, blobs, indexer).commit

    def collect_garbage(self, older_than: float = gc.GC_GRACE_SECONDS) -> tuple[int, int]:
        """Delete blob files no commit references and nobody used for ``older_than`` seconds."""
        return gc.collect_garbage(self.engine, self.blobs, older_than)
