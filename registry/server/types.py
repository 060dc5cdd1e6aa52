"""The plain values the server's parts pass around: its config, who is asking, files, commits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from registry.server.blobstore import BlobStore, lfs_pointer


@dataclass(frozen=True)
class ServerConfig:
    """How one server runs; every worker process builds the same config from the CLI options."""

    data_dir: Path = field(metadata={"help": "folder holding blobs/ and the signing secret"})
    db_url: str = field(metadata={"help": "SQLAlchemy URL of the registry database"})
    public_url: str | None = field(
        default=None, metadata={"help": "base URL clients use; default: taken from Host header"}
    )
    max_upload_size: int = field(
        default=5 * 1024**3, metadata={"help": "largest accepted file, bytes"}
    )
    index_source: str | None = field(
        default=None,
        metadata={"help": "registry 'source' of hosted modules; default public_url or 'local'"},
    )
    rate_limit: int = field(
        default=0, metadata={"help": "requests per window per client and kind; 0: no limit"}
    )
    rate_limit_window: int = field(default=0, metadata={"help": "seconds of one window"})

    @property
    def blobs_dir(self) -> Path:
        """Where blob files live."""
        return self.data_dir / "blobs"

    @property
    def source(self) -> str:
        """The registry source name under which hosted adapters are indexed."""
        return self.index_source or (self.public_url.rstrip("/") if self.public_url else "local")


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to and where it may write."""

    user: str
    token_name: str
    role: str
    namespaces: frozenset[str]

    @property
    def can_write(self) -> bool:
        """Read-only tokens exist for CI readers."""
        return self.role == "write"


@dataclass(frozen=True)
class TreeFile:
    """One file in a commit tree (in memory, while building or serving a commit)."""

    path: str
    sha256: str
    size: int
    is_lfs: bool
    git_oid: str

    def tree_json(self) -> dict[str, Any]:
        """Shape of ``/tree`` entries (``lfs.oid``)."""
        item: dict[str, Any] = {
            "type": "file",
            "oid": self.git_oid,
            "size": self.size,
            "path": self.path,
        }
        if self.is_lfs:
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return item

    def sibling_json(self) -> dict[str, Any]:
        """Shape of ``siblings`` entries in model info (``lfs.sha256``)."""
        item: dict[str, Any] = {"rfilename": self.path, "size": self.size, "blobId": self.git_oid}
        if self.is_lfs:
            item["lfs"] = {
                "size": self.size,
                "sha256": self.sha256,
                "pointerSize": self.pointer_size,
            }
        return item

    @property
    def pointer_size(self) -> int:
        """Byte length of the git-lfs pointer of this file."""
        return len(lfs_pointer(self.sha256, self.size))

    @property
    def etag(self) -> str:
        """What the client caches the file under: sha256 for LFS, git sha1 otherwise."""
        return self.sha256 if self.is_lfs else self.git_oid


def tree_oid(files: Iterable[TreeFile]) -> str:
    """The oid of a tree or folder: a digest of its files' paths and oids, in their order."""
    digest = hashlib.sha1(usedforsecurity=False)
    for f in files:
        digest.update(f"{f.path}\0{f.git_oid}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedFile:
    """A file at a resolved commit, ready to be served."""

    commit_sha: str
    file: TreeFile
    blob_path: Path


@dataclass(frozen=True)
class CommitOp:
    """One parsed NDJSON line of a commit request."""

    kind: str  # "file" | "lfsFile" | "deletedFile" | "deletedFolder"
    path: str
    sha256: str | None = None
    size: int | None = None
    content: bytes | None = None


@dataclass(frozen=True)
class HostedCommit:
    """What the registry indexer receives after a commit: the repo, its new sha and files.

    A deleted repo is reported with no files and an empty sha.
    """

    repo_id: str
    sha: str
    created_at: datetime
    files: tuple[TreeFile, ...]
    blobs: BlobStore


class Indexer(Protocol):
    """Keeps the registry in step with the hosted repos (``registry.server.indexing``).

    ``expect`` is called before a commit's transaction and leaves a trace (a pending marker)
    that only a successful indexing clears, so a crash between the commit and its indexing
    leaves the repo pending re-indexing, never silently unindexed.
    """

    def expect(self, repo_id: str) -> object:
        """Note that ``repo_id``'s head may be about to change; returns a token for the call."""
        ...

    def forget(self, token: object) -> None:
        """The commit announced by ``expect`` did not happen: drop its trace."""
        ...

    def __call__(self, commit: HostedCommit, token: object = None) -> None:
        """Index ``commit`` now or, if that fails, leave it pending; never raises."""
        ...
