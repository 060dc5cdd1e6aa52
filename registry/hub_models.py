"""SQL tables of the built-in Hub server: repos, immutable commits, trees, blobs, refs, tokens.

A commit is written once and never changed; a branch (``hub_refs``) is the only thing that moves,
and it moves by compare-and-swap (``UPDATE ... WHERE commit_id = <old head>``), so two racing
commits on one repo cannot both win. Blob bytes live on disk, addressed by sha256 (see
``registry.server.blobstore``); ``hub_blobs`` rows are written in the same transaction as the
commit that first references them, so an abandoned upload never leaves a row behind.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db import Base


class SqlHubRepo(Base):
    """A model repository ``namespace/name``; ``full_id`` is the two joined, for lookups."""

    __tablename__ = "hub_repos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(24), nullable=False, unique=True)
    namespace: Mapped[str] = mapped_column(String(96), nullable=False)
    name: Mapped[str] = mapped_column(String(96), nullable=False)
    full_id: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    full_id_lower: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    private: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # As on the Hub: None (open), "auto" or "manual"; reads of files need an allowed token.
    gated: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)
    last_modified: Mapped[datetime] = mapped_column(
        DateTime(timezone=False), nullable=False, index=True
    )

    refs: Mapped[list[SqlHubRef]] = relationship(
        back_populates="repo", cascade="all, delete-orphan", passive_deletes=True
    )


class SqlHubCommit(Base):
    """One immutable revision of a repo, with the card metadata parsed at commit time."""

    __tablename__ = "hub_commits"
    __table_args__ = (UniqueConstraint("repo_id", "sha"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repo_id: Mapped[int] = mapped_column(
        ForeignKey("hub_repos.id", ondelete="CASCADE"), nullable=False, index=True
    )
    sha: Mapped[str] = mapped_column(String(40), nullable=False, index=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("hub_commits.id", ondelete="CASCADE"), nullable=True
    )
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    author: Mapped[str] = mapped_column(String(96), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)
    # JSON text: the README front matter, and the repo tags derived from it and from the files.
    card_data: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    tags: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    # "\n"-framed copy of the tags ("\nlora\npeft\n") so a tag filter is one LIKE per tag.
    tags_index: Mapped[str] = mapped_column(Text, nullable=False, default="\n")
    library_name: Mapped[str | None] = mapped_column(String(96), nullable=True)
    pipeline_tag: Mapped[str | None] = mapped_column(String(96), nullable=True)

    entries: Mapped[list[SqlHubTreeEntry]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class SqlHubBlob(Base):
    """A stored file content, addressed by sha256 (the bytes are in the blob store on disk)."""

    __tablename__ = "hub_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)


class SqlHubTreeEntry(Base):
    """A file of a commit (every commit lists its whole tree: adapter repos are small)."""

    __tablename__ = "hub_tree_entries"

    commit_id: Mapped[int] = mapped_column(
        ForeignKey("hub_commits.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1000), primary_key=True)
    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("hub_blobs.sha256"), nullable=False, index=True
    )
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    is_lfs: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # git blob sha1 of the content (regular) or of the LFS pointer text (lfs).
    git_oid: Mapped[str] = mapped_column(String(40), nullable=False)


class SqlHubRef(Base):
    """A branch: the only mutable pointer, moved by compare-and-swap on ``commit_id``."""

    __tablename__ = "hub_refs"
    __table_args__ = (UniqueConstraint("repo_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    repo_id: Mapped[int] = mapped_column(
        ForeignKey("hub_repos.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    commit_id: Mapped[int] = mapped_column(
        ForeignKey("hub_commits.id", ondelete="CASCADE"), nullable=False, index=True
    )

    repo: Mapped[SqlHubRepo] = relationship(back_populates="refs")


class SqlHubToken(Base):
    """An access token; only the sha256 of the secret is stored."""

    __tablename__ = "hub_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    display_name: Mapped[str] = mapped_column(String(96), nullable=False)
    user: Mapped[str] = mapped_column(String(96), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default="write")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False), nullable=True)


class SqlHubNamespaceMember(Base):
    """Write access of a user to an organisation namespace (a user always owns its own name)."""

    __tablename__ = "hub_namespace_members"

    namespace: Mapped[str] = mapped_column(String(96), primary_key=True)
    user: Mapped[str] = mapped_column(String(96), primary_key=True)
