"""Bringing a registry database's schema up to date with Alembic, from any working directory.

Alembic is configured in code: ``script_location`` is the installed ``migrations`` package,
so ``loradex db upgrade`` needs no ``alembic.ini`` nearby. ``ensure_schema`` is what every
CLI command calls first; when the database is already at head it costs one small query and
never imports Alembic (which keeps ``loradex search`` fast to start). Only an empty database
is migrated in passing; one behind head waits for an explicit ``loradex db upgrade``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from loradex.errors import (
    ConfigError,
    DatabaseError,
    RegistryNotFound,
    SchemaOutdated,
)
from registry.db import display_url, make_engine

if TYPE_CHECKING:
    from alembic.config import Config

_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]+)?=\s*(.+)$", re.M)


# Backend-specific objects made by hand in the migrations, invisible to the models: the
# full-text tables (an FTS5 virtual table and its shadow tables on SQLite; a tsvector table
# on PostgreSQL) and their indexes, and PostgreSQL-only indexes (``ix_pg_``: NULLS LAST, which
# SQLite's CREATE INDEX cannot say). Autogenerate must neither drop nor compare them.
UNMODELLED_PREFIXES: tuple[str, ...] = ("module_fts", "ix_pg_")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic hook: skip reflected tables and indexes the models do not describe."""
    return not (type_ in ("table", "index") and name and name.startswith(UNMODELLED_PREFIXES))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic hook: the same rule for objects reached through a modelled table."""
    return not (type_ in ("table", "index") and name and name.startswith(UNMODELLED_PREFIXES))


def migrations_dir() -> Path:
    """The folder of the installed ``migrations`` package."""
    import migrations

    # __path__ rather than __file__: an editable install may map it as a namespace package.
    return Path(next(iter(migrations.__path__))).resolve()


def script_heads() -> set[str]:
    """Head revision ids, read from the revision files' text (no Alembic import)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev = _REVISION.search(text)
        if not rev:
            continue
        revisions.add(rev.group(1))
        down = _DOWN.search(text)
        if down:
            parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    return revisions - parents


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` pointing at the packaged migrations and at ``url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolation: a literal % in a URL (encoded options) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _run(url: str, action: str, revision: str) -> None:
    from alembic import command

    config = alembic_config(url)
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        _serialise_sqlite(engine)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot migrate {display_url(url)}: {exc.orig}") from exc
    finally:
        engine.dispose()


# Migrations run one at a time: two processes opening a fresh database at once (a server and
# a command, parallel tests) must not both create the tables. Alembic reads the current
# revision only after the lock is held, so the second one finds nothing left to do.
_PG_LOCK = 0x6C6F7261646578  # "loradex"


def _serialise_sqlite(engine: sa.Engine) -> None:
    """Make every transaction on ``engine`` BEGIN IMMEDIATE, DDL included (pysqlite's default
    autocommits DDL and takes the write lock late)."""

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest)."""
    _run(url, "upgrade", revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at ``url`` to ``revision`` (default: empty)."""
    _run(url, "downgrade", revision)


def current(url: str, *, engine: sa.Engine | None = None) -> set[str]:
    """The revision ids the database is at (empty set: never migrated).

    Pass ``engine`` (for ``url``) to reuse its connection pool instead of opening another.
    """
    own = engine is None
    engine = make_engine(url) if engine is None else engine
    try:
        with engine.connect() as conn:
            return _versions(conn)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot open {display_url(url)}: {exc.orig}") from exc
    finally:
        if own:
            engine.dispose()


def _versions(conn: sa.Connection) -> set[str]:
    if not sa.inspect(conn).has_table("alembic_version"):
        return set()
    return set(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))


def ensure_schema(url: str, *, engine: sa.Engine | None = None, create: bool = True) -> None:
    """Check that ``url`` holds a registry at this loradex's schema (one cheap query).

    An empty database gets the schema when ``create`` (commands that write); read-only commands
    pass ``create=False`` and get :class:`RegistryNotFound`. A database behind head is never
    upgraded in passing (on a shared registry that would migrate it for everyone, without a
    backup): :class:`SchemaOutdated` says how to back it up and upgrade. One ahead (made by a
    newer loradex) is :class:`DatabaseError`. ``engine`` (for ``url``) is reused if given.
    """
    heads = script_heads()
    found = current(url, engine=engine)
    if found == heads:
        return
    if not found:
        if not create:
            raise RegistryNotFound(
                f"no registry at {display_url(url)}: check --db/LORADEX_DB, or create one with "
                "`loradex db upgrade` (or any command that adds modules)"
            )
        upgrade(url)
        return
    unknown = found - _known_revisions()
    if unknown:
        raise DatabaseError(
            f"{display_url(url)} is at schema revision {', '.join(sorted(unknown))}, "
            "which this version of loradex does not know; upgrade loradex"
        )
    raise SchemaOutdated(
        f"{display_url(url)} is at schema revision {', '.join(sorted(found))}, older than this "
        f"loradex ({', '.join(sorted(heads))}): back it up ({backup_hint(url)}), then run "
        "`loradex db upgrade`"
    )


def backup_hint(url: str) -> str:
    """How to back up the database at ``url`` before an upgrade, as a command to copy."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return "`loradex db backup`"
    target = parsed.set(drivername="postgresql").render_as_string(hide_password=True)
    return f"`pg_dump --format=custom --file=loradex.dump '{target}'`"


def registry_missing(url: str) -> bool:
    """True when ``url`` is a SQLite file that does not exist (a read-only command must not
    create it, nor its folders)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return False
    return not Path(parsed.database).expanduser().exists()


def backup_sqlite(url: str, target: Path) -> Path:
    """Copy the SQLite registry at ``url`` to ``target`` with SQLite's online backup (a
    consistent snapshot even while others write); the copy appears complete or not at all."""
    import sqlite3

    from loradex.files import atomic_write

    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or registry_missing(url) or not parsed.database:
        raise ConfigError(
            f"`loradex db backup` copies a SQLite registry; {display_url(url)} is not one "
            f"(PostgreSQL: {backup_hint(url)})"
        )
    source = sqlite3.connect(f"file:{Path(parsed.database).expanduser()}?mode=ro", uri=True)

    def write(tmp: Path) -> None:
        copy = sqlite3.connect(tmp)
        try:
            source.backup(copy)
        finally:
            copy.close()

    try:
        atomic_write(target, write)
    finally:
        source.close()
    return target


def _known_revisions() -> set[str]:
    found = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        rev = _REVISION.search(path.read_text(encoding="utf-8"))
        if rev:
            found.add(rev.group(1))
    return found


def all_metadata() -> sa.MetaData:
    """``Base.metadata`` with every table loradex defines (registry and, if present, Hub server)."""
    import importlib
    import importlib.util

    import registry.models  # noqa: F401
    from registry.db import Base

    if importlib.util.find_spec("registry.hub_models") is not None:
        importlib.import_module("registry.hub_models")
    return Base.metadata


def metadata_diff(url: str) -> list[object]:
    """What Alembic autogenerate would change to make ``url`` match the models (empty: same)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    metadata = all_metadata()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": include_name,
                    "include_object": include_object,
                    "target_metadata": metadata,
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()
