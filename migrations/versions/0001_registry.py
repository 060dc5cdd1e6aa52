"""Module index: modules, their cards, tags, targets, files, lineage, sync state, full-text search.

Revision ID: 0001_registry
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_registry"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _module_fk(table: str) -> sa.Column:
    return sa.Column(
        "module_id",
        sa.Integer(),
        sa.ForeignKey("modules.id", ondelete="CASCADE", name=f"fk_{table}_module_id_modules"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "modules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("repo_id", sa.String(length=255), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("num_heads", sa.Integer(), nullable=True),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("base_model_key", sa.String(length=255), nullable=False),
        sa.Column("base_model_raw", sa.Text(), nullable=True),
        sa.Column("peft_type", sa.String(length=32), nullable=False),
        sa.Column("task_type", sa.String(length=64), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("dropout", sa.Float(), nullable=True),
        sa.Column("target_key", sa.Text(), nullable=False),
        sa.Column("bias", sa.String(length=32), nullable=True),
        sa.Column("num_parameters", sa.BigInteger(), nullable=True),
        sa.Column("dtype", sa.String(length=32), nullable=True),
        sa.Column("total_size", sa.BigInteger(), nullable=True),
        sa.Column("author", sa.String(length=255), nullable=True),
        sa.Column("license", sa.String(length=64), nullable=True),
        sa.Column("task_name", sa.String(length=255), nullable=True),
        sa.Column("task_category", sa.String(length=255), nullable=True),
        sa.Column("dataset", sa.String(length=255), nullable=True),
        sa.Column("language", sa.String(length=64), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("downloads", sa.Integer(), nullable=False),
        sa.Column("likes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_modules")),
        sa.UniqueConstraint("source", "repo_id", name="uq_modules_source_repo_id"),
    )
    op.create_index("ix_modules_compat", "modules", ["base_model_key", "target_key", "rank"])
    op.create_index("ix_modules_base_downloads", "modules", ["base_model_key", "downloads"])
    op.create_index("ix_modules_base_likes", "modules", ["base_model_key", "likes"])
    op.create_index("ix_modules_base_updated_at", "modules", ["base_model_key", "updated_at"])
    op.create_index("ix_modules_base_rank", "modules", ["base_model_key", "rank"])
    op.create_index("ix_modules_downloads", "modules", ["downloads"])
    op.create_index("ix_modules_likes", "modules", ["likes"])
    op.create_index("ix_modules_updated_at", "modules", ["updated_at"])
    op.create_index("ix_modules_rank", "modules", ["rank"])
    op.create_index("ix_modules_author", "modules", ["author"])
    op.create_index("ix_modules_license", "modules", ["license"])
    op.create_index("ix_modules_task_name", "modules", ["task_name"])
    op.create_index("ix_modules_task_category", "modules", ["task_category"])
    op.create_index("ix_modules_repo_id", "modules", ["repo_id"])

    op.create_table(
        "module_cards",
        _module_fk("module_cards"),
        sa.Column("card_text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("module_id", name=op.f("pk_module_cards")),
    )

    op.create_table(
        "module_tags",
        _module_fk("module_tags"),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("module_id", "tag", name=op.f("pk_module_tags")),
    )
    op.create_index("ix_module_tags_tag", "module_tags", ["tag", "module_id"])

    op.create_table(
        "module_targets",
        _module_fk("module_targets"),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("module_id", "target", name=op.f("pk_module_targets")),
    )
    op.create_index("ix_module_targets_target", "module_targets", ["target", "module_id"])

    op.create_table(
        "module_files",
        _module_fk("module_files"),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("lfs", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("module_id", "path", name=op.f("pk_module_files")),
    )

    op.create_table(
        "module_lineage",
        _module_fk("module_lineage"),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("parent_repo_id", sa.String(length=255), nullable=False),
        sa.Column("parent_revision", sa.String(length=64), nullable=True),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("module_id", "position", name=op.f("pk_module_lineage")),
    )
    op.create_index("ix_module_lineage_parent", "module_lineage", ["parent_repo_id"])

    op.create_table(
        "sync_state",
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("repo_id", sa.String(length=255), nullable=False),
        sa.Column("last_sha", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "repo_id", name=op.f("pk_sync_state")),
    )

    # Full-text search: not in the models (backend-specific); the store keeps it in sync.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE module_fts USING fts5("
            "repo_id, task, tags, card, tokenize = 'porter unicode61 remove_diacritics 2')"
        )
    else:
        op.execute(
            "CREATE TABLE module_fts ("
            " module_id INTEGER PRIMARY KEY REFERENCES modules (id) ON DELETE CASCADE,"
            " document TSVECTOR NOT NULL)"
        )
        op.execute("CREATE INDEX module_fts_document ON module_fts USING GIN (document)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS module_fts")
    op.drop_table("sync_state")
    op.drop_index("ix_module_lineage_parent", table_name="module_lineage")
    op.drop_table("module_lineage")
    op.drop_table("module_files")
    op.drop_index("ix_module_targets_target", table_name="module_targets")
    op.drop_table("module_targets")
    op.drop_index("ix_module_tags_tag", table_name="module_tags")
    op.drop_table("module_tags")
    op.drop_table("module_cards")
    op.drop_table("modules")
