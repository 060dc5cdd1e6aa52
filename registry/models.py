"""SQL rows of the module index. Only the store touches these; everyone else gets entities.

Tags and target modules live in their own tables (one row per value, indexed by value) so
``--tag`` and ``--target`` filters are index lookups. ``target_key`` (the sorted target set as
one string) and ``base_model_key`` (the lower-cased normalised base model) make "compatible
with" an indexed equality. Card text lives in its own table so that the ``modules`` rows
stay narrow and filter scans stay in the page cache. The full-text index (``module_fts``:
FTS5 on SQLite, tsvector + GIN on PostgreSQL) is created by the migration, not here,
because it is backend-specific.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import RowMapping
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
        # Searches nearly always name a base model: one index per sort order under it.
        Index("ix_modules_base_downloads", "base_model_key", "downloads"),
        Index("ix_modules_base_likes", "base_model_key", "likes"),
        Index("ix_modules_base_updated_at", "base_model_key", "updated_at"),
        Index("ix_modules_base_rank", "base_model_key", "rank"),
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
    # PEFT options a user of the module must honour; the patterns and lists as JSON text.
    use_dora: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa.false())
    use_rslora: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa.false())
    lora_bias: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa.false())
    peft_version: Mapped[str | None] = mapped_column(String(32))
    rank_pattern: Mapped[str | None] = mapped_column(Text)
    alpha_pattern: Mapped[str | None] = mapped_column(Text)
    modules_to_save: Mapped[str | None] = mapped_column(Text)
    layers_to_transform: Mapped[str | None] = mapped_column(Text)
    # base_model names a folder on someone's disk ("/content/llama"), not a Hub id.
    base_model_is_path: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=sa.false()
    )
    # Absolute folder of a module added from disk (source "local"), so it is usable by id.
    local_path: Mapped[str | None] = mapped_column(Text)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    likes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
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
    card: Mapped[ModuleCardRow | None] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    signatures: Mapped[list[ModuleSignatureRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ModuleSignatureRow.kind"
    )

    def to_entity(self) -> Module:
        """The plain :class:`Module` for this row (relationships must be loaded)."""
        return module_entity(
            {column.key: getattr(self, column.key) for column in self.__table__.columns},
            tags=[t.tag for t in self.tags],
            targets=[t.target for t in self.targets],
            files=[f.to_entity() for f in self.files],
            lineage=[e.to_entity() for e in self.lineage],
            card_text=self.card.card_text if self.card is not None else None,
        )


def module_entity(
    values: Mapping[str, Any] | RowMapping,
    *,
    tags: Iterable[str],
    targets: Iterable[str],
    files: Iterable[ModuleFile],
    lineage: Iterable[LineageEdge],
    card_text: str | None,
) -> Module:
    """Build a :class:`Module` from a ``modules`` row (as a mapping) and its child rows.

    The one mapping from SQL to entity: ``ModuleRow.to_entity`` (ORM) and the store's batch
    loader (core queries) both go through here.
    """
    return Module(
        repo_id=values["repo_id"],
        revision=values["revision"],
        source=values["source"],
        kind=values["kind"],
        num_heads=values["num_heads"],
        base_model=values["base_model"],
        base_model_raw=values["base_model_raw"],
        peft_type=values["peft_type"],
        task_type=values["task_type"],
        rank=values["rank"],
        alpha=values["alpha"],
        dropout=values["dropout"],
        target_modules=tuple(targets),
        bias=values["bias"],
        num_parameters=values["num_parameters"],
        dtype=values["dtype"],
        total_size=values["total_size"],
        author=values["author"],
        license=values["license"],
        tags=tuple(tags),
        task_name=values["task_name"],
        task_category=values["task_category"],
        dataset=values["dataset"],
        language=values["language"],
        description=values["description"],
        use_dora=bool(values["use_dora"]),
        use_rslora=bool(values["use_rslora"]),
        lora_bias=bool(values["lora_bias"]),
        peft_version=values["peft_version"],
        rank_pattern=_pairs(values["rank_pattern"]),
        alpha_pattern=_pairs(values["alpha_pattern"]),
        modules_to_save=tuple(_json(values["modules_to_save"]) or ()),
        layers_to_transform=tuple(_json(values["layers_to_transform"]) or ()),
        base_model_is_path=bool(values["base_model_is_path"]),
        local_path=values["local_path"],
        downloads=values["downloads"],
        likes=values["likes"],
        created_at=as_utc(values["created_at"]),
        updated_at=as_utc(values["updated_at"]),
        card_text=card_text,
        files=tuple(files),
        lineage=tuple(lineage),
    )


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _pairs(text: str | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((_json(text) or {}).items()))


class ModuleCardRow(Base):
    """The model card body (Markdown, front matter removed) of a module."""

    __tablename__ = "module_cards"

    module_id: Mapped[int] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), primary_key=True
    )
    card_text: Mapped[str] = mapped_column(Text)


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


class ModuleSignatureRow(Base):
    """One task signature of a module (``registry.signatures``), per kind and embedder.

    ``centroid`` (the normalised mean, float16) is what the in-memory index loads, so opening
    it reads 768 bytes a module instead of every vector; ``vectors`` keeps them all.
    """

    __tablename__ = "module_signatures"
    __table_args__ = (Index("ix_module_signatures_embedder", "embedder", "kind"),)

    module_id: Mapped[int] = mapped_column(
        ForeignKey("modules.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    embedder: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    vectors: Mapped[bytes] = mapped_column(LargeBinary)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)


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
