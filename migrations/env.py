"""Alembic environment: one history for every loradex table (registry and Hub server).

``registry.schema`` runs this programmatically, handing over a connection in
``config.attributes["connection"]``; the ``alembic`` command line (with ``alembic.ini``)
works too and takes the URL from ``sqlalchemy.url`` or ``LORADEX_DB``.
"""

from __future__ import annotations

import importlib
import importlib.util

from alembic import context
from sqlalchemy import Connection

import registry.models  # noqa: F401  (registers the module index tables on Base.metadata)
from registry.db import Base, make_engine
from registry.schema import include_name, include_object

# The Hub server's tables join the same metadata when that package is present.
if importlib.util.find_spec("registry.hub_models") is not None:
    importlib.import_module("registry.hub_models")

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        include_name=include_name,
        include_object=include_object,
    )


def run_migrations_online() -> None:
    """Run against the connection handed over by registry.schema, or a fresh engine."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        from loradex.settings import Settings

        url = Settings.resolve().db_url
    engine = make_engine(url)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
