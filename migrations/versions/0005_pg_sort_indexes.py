"""PostgreSQL: indexes for "recently updated first" (``updated_at DESC NULLS LAST, id``).

The sort puts modules without a date last. PostgreSQL cannot walk an ascending index for
``DESC NULLS LAST``, so sorting by update sorted every module: 100-125 ms for one page at
100,000 modules, against a few ms with these (docs/benchmarks/web.md). SQLite needs nothing:
there NULL sorts first in ascending order, so its ascending index walked backwards is already
this order. Made by hand, as SQLite's CREATE INDEX cannot say NULLS LAST, so the models do not
describe them (``registry.schema.UNMODELLED_PREFIXES``).

Revision ID: 0005_pg_sort_indexes
Revises: 0004_peft_options
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_pg_sort_indexes"
down_revision: str | Sequence[str] | None = "0004_peft_options"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_pg_modules_updated_desc": "updated_at DESC NULLS LAST, id",
    "ix_pg_modules_base_updated_desc": "base_model_key, updated_at DESC NULLS LAST, id",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON modules ({columns})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
