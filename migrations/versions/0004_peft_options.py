"""PEFT options a module needs to be used right (DoRA, rsLoRA, per-layer patterns), where a
module added from a folder lives, and gated repositories on the built-in Hub server.

Revision ID: 0004_peft_options
Revises: 0003_signatures
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_peft_options"
down_revision: str | Sequence[str] | None = "0003_signatures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FLAGS = ("use_dora", "use_rslora", "lora_bias", "base_model_is_path")
_TEXTS = ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
          "local_path")


def upgrade() -> None:
    with op.batch_alter_table("modules") as batch:
        for name in _FLAGS:
            batch.add_column(
                sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())
            )
        batch.add_column(sa.Column("peft_version", sa.String(length=32), nullable=True))
        for name in _TEXTS:
            batch.add_column(sa.Column(name, sa.Text(), nullable=True))
    with op.batch_alter_table("hub_repos") as batch:
        batch.add_column(sa.Column("gated", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hub_repos") as batch:
        batch.drop_column("gated")
    with op.batch_alter_table("modules") as batch:
        for name in (*_TEXTS, "peft_version", *_FLAGS):
            batch.drop_column(name)
