"""PostgreSQL test isolation: a fresh schema per test or server, named in the URL.

``search_path`` travels in the URL, so subprocesses and servers started from a test see the
same schema. The ``db_url`` and ``hub`` fixtures of ``tests/conftest.py`` are built on it.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

PG_ADMIN_URL = os.environ.get(
    "LORADEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def pg_available() -> bool:
    """Whether the test PostgreSQL server answers."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def make_pg_schema_url(prefix: str = "ldx") -> tuple[str, str]:
    """Create a fresh schema on the test server; return (URL bound to it, schema name)."""
    import sqlalchemy as sa

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    return f"{PG_ADMIN_URL}{sep}options={quote(f'-csearch_path={schema}')}", schema


def drop_pg_schema(schema: str) -> None:
    """Drop a schema made by :func:`make_pg_schema_url`."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()
