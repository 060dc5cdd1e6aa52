"""Built-in Hub server: repos, immutable commits and their trees, blobs, branches, tokens.

Revision ID: 0002_hub_server
Revises: 0001_registry
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_hub_server"
down_revision: str | Sequence[str] | None = "0001_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hub_repos",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(length=24), nullable=False),
        sa.Column("namespace", sa.String(length=96), nullable=False),
        sa.Column("name", sa.String(length=96), nullable=False),
        sa.Column("full_id", sa.String(length=200), nullable=False),
        sa.Column("full_id_lower", sa.String(length=200), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_modified", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hub_repos"),
        sa.UniqueConstraint("uid", name="uq_hub_repos_uid"),
        sa.UniqueConstraint("full_id", name="uq_hub_repos_full_id"),
    )
    op.create_index("ix_hub_repos_full_id_lower", "hub_repos", ["full_id_lower"])
    op.create_index("ix_hub_repos_last_modified", "hub_repos", ["last_modified"])

    op.create_table(
        "hub_commits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("sha", sa.String(length=40), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=96), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("card_data", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("tags_index", sa.Text(), nullable=False),
        sa.Column("library_name", sa.String(length=96), nullable=True),
        sa.Column("pipeline_tag", sa.String(length=96), nullable=True),
        sa.ForeignKeyConstraint(
            ["repo_id"], ["hub_repos.id"], name="fk_hub_commits_repo_id_hub_repos",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["hub_commits.id"], name="fk_hub_commits_parent_id_hub_commits",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_hub_commits"),
        sa.UniqueConstraint("repo_id", "sha", name="uq_hub_commits_repo_id"),
    )
    op.create_index("ix_hub_commits_repo_id", "hub_commits", ["repo_id"])
    op.create_index("ix_hub_commits_sha", "hub_commits", ["sha"])

    op.create_table(
        "hub_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_hub_blobs"),
    )

    op.create_table(
        "hub_tree_entries",
        sa.Column("commit_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("is_lfs", sa.Boolean(), nullable=False),
        sa.Column("git_oid", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["commit_id"], ["hub_commits.id"], name="fk_hub_tree_entries_commit_id_hub_commits",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["blob_sha256"], ["hub_blobs.sha256"], name="fk_hub_tree_entries_blob_sha256_hub_blobs"
        ),
        sa.PrimaryKeyConstraint("commit_id", "path", name="pk_hub_tree_entries"),
    )
    op.create_index("ix_hub_tree_entries_blob_sha256", "hub_tree_entries", ["blob_sha256"])

    op.create_table(
        "hub_refs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("commit_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["repo_id"], ["hub_repos.id"], name="fk_hub_refs_repo_id_hub_repos", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["commit_id"], ["hub_commits.id"], name="fk_hub_refs_commit_id_hub_commits",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_hub_refs"),
        sa.UniqueConstraint("repo_id", "name", name="uq_hub_refs_repo_id"),
    )
    op.create_index("ix_hub_refs_commit_id", "hub_refs", ["commit_id"])

    op.create_table(
        "hub_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("display_name", sa.String(length=96), nullable=False),
        sa.Column("user", sa.String(length=96), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_hub_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_hub_tokens_token_hash"),
    )
    op.create_index("ix_hub_tokens_user", "hub_tokens", ["user"])

    op.create_table(
        "hub_namespace_members",
        sa.Column("namespace", sa.String(length=96), nullable=False),
        sa.Column("user", sa.String(length=96), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "user", name="pk_hub_namespace_members"),
    )


def downgrade() -> None:
    op.drop_table("hub_namespace_members")
    op.drop_index("ix_hub_tokens_user", table_name="hub_tokens")
    op.drop_table("hub_tokens")
    op.drop_index("ix_hub_refs_commit_id", table_name="hub_refs")
    op.drop_table("hub_refs")
    op.drop_index("ix_hub_tree_entries_blob_sha256", table_name="hub_tree_entries")
    op.drop_table("hub_tree_entries")
    op.drop_table("hub_blobs")
    op.drop_index("ix_hub_commits_sha", table_name="hub_commits")
    op.drop_index("ix_hub_commits_repo_id", table_name="hub_commits")
    op.drop_table("hub_commits")
    op.drop_index("ix_hub_repos_last_modified", table_name="hub_repos")
    op.drop_index("ix_hub_repos_full_id_lower", table_name="hub_repos")
    op.drop_table("hub_repos")
