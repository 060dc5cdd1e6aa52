"""SQL rows of the module index. Only the store touches these; everyone else gets entities.

Tags and target modules live in their own tables (one row per value, indexed by value) so
``--tag`` and ``--target`` filters are index lookups. ``target_key`` (the sorted target set as
one string) and ``base_model_key`` (the lower-cased normalised base model) make "compatible
with" an indexed equality. The full-text index (``module_fts``: FTS5 on SQLite, tsvector + GIN
on PostgreSQL) is created by the migration, not here, because it is backend-specific.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db import Base
from registry.entities import LineageEdge, Module, ModuleFile, SyncState


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC, so say so."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# Long enough for any Hub repo id / endpoint URL; indexed columns stay bounded for PostgreSQL.
ID_LEN = 255


class ModuleRow(Base):
    """One indexed module: a repository at one revision, from one source."""

    __tablename__ = "modules"
    __table_args__ = (
        UniqueConstraint("source", "repo_id", name="uq_modules_source_repo_id"),
        Index("ix_modules_compat", "base_model_key", "target_key", "rank"),
        Index("ix_modules_downloads", "downloads"),
        Index("ix_modules_likes", "likes"),
        Index("ix_modules_updated_at", "updated_at"),
        Index("ix_modules_rank", "rank"),
        Index("ix_modules_author", "author"),
        Index("ix_modules_license", "license"),
        Index("ix_modules_task_name", "task_name"),
        Index("ix_modules_task_category", "task_category"),
        Index("ix_modules_repo_id", "repo_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(ID_LEN))
    repo_id: Mapped[str] = mapped_column(String(ID_LEN))
    revision: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="lora")
    num_heads: Mapped[int | None] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(ID_LEN))
    base_model_key: Mapped[str] = mapped_column(String(ID_LEN))
    base_model_raw: Mapped[str | None] = mapped_column(Text)
    peft_type: Mapped[str] = mapped_column(String(32))
    task_type: Mapped[str | None] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    dropout: Mapped[float | None] = mapped_column(Float)
    target_key: Mapped[str] = mapped_column(Text)
    bias: Mapped[str | None] = mapped_column(String(32))
    num_parameters: Mapped[int | None] = mapped_column(BigInteger)
    dtype: Mapped[str | None] = mapped_column(String(32))
    total_size: Mapped[int | None] = mapped_column(BigInteger)
    # Filters on author and task match exactly; licence is stored lower-cased.
    author: Mapped[str | None] = mapped_column(String(ID_LEN))
    license: Mapped[str | None] = mapped_column(String(64))
    task_name: Mapped[str | None] = mapped_column(String(ID_LEN))
    task_category: Mapped[str | None] = mapped_column(String(ID_LEN))
    dataset: Mapped[str | None] = mapped_column(String(ID_LEN))
    language: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    likes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    card_text: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    tags: Mapped[list[ModuleTagRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ModuleTagRow.tag"
    )
    targets: Mapped[list[ModuleTargetRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ModuleTargetRow.target"
    )
    files: Mapped[list[ModuleFileRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ModuleFileRow.path"
    )
    lineage: Mapped[list[LineageRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="LineageRow.position"
    )

    def to_entity(self) -> Module:
        """The plain :class:`Module` for this row (relationships must be loaded)."""
        return Module(
            repo_id=self.repo_id,
            revision=self.revision,
            source=self.source,
            kind=self.kind,
            num_heads=self.num_heads,
            base_model=self.base_model,
            base_model_raw=self.base_model_raw,
            peft_type=self.peft_type,
            task_type=self.task_type,
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=tuple(t.target for t in self.targets),
            bias=self.bias,
            num_parameters=self.num_parameters,
            dtype=self.dtype,
            total_size=self.total_size,
            author=self.author,
            license=self.license,
            tags=tuple(t.tag for t in self.tags),
            task_name=self.task_name,
            task_category=self.task_category,
            dataset=self.dataset,
            language=self.language,
            description=self.description,
            downloads=self.downloads,
            likes=self.likes,
            created_at=as_utc(self.created_at),
            updated_at=as_utc(self.updated_at),
            card_text=self.card_text,
            files=tuple(f.to_entity() for f in self.files),
            lineage=tuple(e.to_entity() for e in self.lineage),
        )


class ModuleTagRow(Base):
    """One (lower-cased) tag of a module."""

    __tablename__ = "module_tags"
    __table_args__ = (Index("ix_module_tags_tag", "tag", "module_id"),)

    module_id: Mapped[int] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)


class ModuleTargetRow(Base):
    """One targeted module name (e.g. ``q_proj``) of a module."""

    __tablename__ = "module_targets"
    __table_args__ = (Index("ix_module_targets_target", "target", "module_id"),)

    module_id: Mapped[int] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), primary_key=True
    )
    target: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)


class ModuleFileRow(Base):
    """One file of a module's repository."""

    __tablename__ = "module_files"

    module_id: Mapped[int] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    lfs: Mapped[bool] = mapped_column(Boolean, default=False)

    def to_entity(self) -> ModuleFile:
        """The plain :class:`ModuleFile`."""
        return ModuleFile(path=self.path, size=self.size, sha256=self.sha256, lfs=self.lfs)


class LineageRow(Base):
    """One parent of a composed module, in the order the composer listed them."""

    __tablename__ = "module_lineage"
    __table_args__ = (Index("ix_module_lineage_parent", "parent_repo_id"),)

    module_id: Mapped[int] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_repo_id: Mapped[str] = mapped_column(String(ID_LEN))
    parent_revision: Mapped[str | None] = mapped_column(String(64))
    weight: Mapped[float | None] = mapped_column(Float)
    role: Mapped[str] = mapped_column(String(32), default="parent")

    def to_entity(self) -> LineageEdge:
        """The plain :class:`LineageEdge`."""
        return LineageEdge(
            parent_repo_id=self.parent_repo_id,
            parent_revision=self.parent_revision,
            weight=self.weight,
            role=self.role,
        )


class SyncStateRow(Base):
    """Hub sync progress for one repository of one endpoint."""

    __tablename__ = "sync_state"

    endpoint: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    last_sha: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_entity(self) -> SyncState:
        """The plain :class:`SyncState`."""
        return SyncState(
            endpoint=self.endpoint,
            repo_id=self.repo_id,
            last_sha=self.last_sha,
            status=self.status,
            error=self.error,
            synced_at=as_utc(self.synced_at),
        )
