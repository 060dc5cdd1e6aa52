"""Task signatures: vectors that say what each module does (retrieval by task).

Revision ID: 0003_signatures
Revises: 0002_hub_server
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_signatures"
down_revision: str | Sequence[str] | None = "0002_hub_server"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "module_signatures",
        sa.Column(
            "module_id",
            sa.Integer(),
            sa.ForeignKey("modules.id", ondelete="CASCADE",
                          name="fk_module_signatures_module_id_modules"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("embedder", sa.String(length=255), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("vectors", sa.LargeBinary(), nullable=False),
        sa.Column("centroid", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("module_id", "kind", "embedder",
                                name=op.f("pk_module_signatures")),
    )
    op.create_index("ix_module_signatures_embedder", "module_signatures", ["embedder", "kind"])


def downgrade() -> None:
    op.drop_index("ix_module_signatures_embedder", table_name="module_signatures")
    op.drop_table("module_signatures")
