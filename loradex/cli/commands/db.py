"""``loradex db``: bring the registry database's schema up to date, or say where it stands."""

from __future__ import annotations

import click

from loradex.settings import Settings


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_object(Settings) or Settings.resolve()


@click.group()
def db() -> None:
    """Manage the registry database schema (Alembic migrations).

    \b
    Examples:
      loradex db current
      loradex --db postgresql+psycopg://postgres@127.0.0.1:5432/test db upgrade
    """


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision id.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Upgrade the database schema (creates the tables in an empty database).

    Other commands refuse a database behind this loradex's schema rather than migrate a
    shared registry in passing: back it up first (`loradex db backup`, or pg_dump).

    \b
    Example:
      loradex db upgrade
    """
    from registry import schema

    url = _settings(ctx).db_url
    before = ", ".join(sorted(schema.current(url))) or "empty"
    schema.upgrade(url, revision)
    at = ", ".join(sorted(schema.current(url))) or "base"
    click.echo(f"{schema.display_url(url)}: upgraded from {before} to {at}")


@db.command()
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Backup file (default: beside the database, named with its revision and time).")
@click.pass_context
def backup(ctx: click.Context, out: str | None) -> None:
    """Copy a SQLite registry to a file (a consistent snapshot, safe while others write);
    do this before `loradex db upgrade`. For PostgreSQL, prints the pg_dump command to run.

    \b
    Example:
      loradex db backup --out registry-before-upgrade.db
    """
    from datetime import UTC, datetime
    from pathlib import Path

    import sqlalchemy as sa

    from registry import schema

    url = _settings(ctx).db_url
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        click.echo(f"PostgreSQL: back it up with {schema.backup_hint(url)}")
        return
    at = "-".join(sorted(schema.current(url))) or "empty"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    source = Path(parsed.database or "registry.db").expanduser()
    target = Path(out) if out else source.with_name(f"{source.stem}.{at}.{stamp}.backup.db")
    schema.backup_sqlite(url, target)
    click.echo(f"backed up {schema.display_url(url)} (revision {at}) to {target}")


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and whether it is the newest.

    \b
    Example:
      loradex db current
    """
    from registry import schema

    url = _settings(ctx).db_url
    found = schema.current(url)
    heads = schema.script_heads()
    if not found:
        state = "empty (run `loradex db upgrade`, or any command, to create the tables)"
    elif found == heads:
        state = f"{', '.join(sorted(found))} (head)"
    else:
        state = f"{', '.join(sorted(found))} (head is {', '.join(sorted(heads))})"
    click.echo(f"{schema.display_url(url)}: {state}")


@db.command()
@click.option("--batch-size", default=256, show_default=True,
              help="Modules embedded and written per transaction.")
@click.pass_context
def sign(ctx: click.Context, batch_size: int) -> None:
    """Make card signatures for the modules that have no signature from the configured
    embedder (a registry indexed before signatures, or after changing embedder).

    Each batch is its own transaction: stopping (Ctrl-C) keeps what is done, and running
    again signs the rest.

    \b
    Example:
      loradex db sign
    """
    from tqdm import tqdm

    from loradex.cli.commands.registry_cmds import open_store
    from registry.embedders import load_embedder
    from registry.signatures import card_signatures

    if batch_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--batch-size")
    embedder = load_embedder()
    store = open_store(ctx)
    try:
        todo = store.unsigned_keys(embedder.name)
        done = 0
        with tqdm(total=len(todo), unit="module", desc="sign", leave=False) as bar:
            for start in range(0, len(todo), batch_size):
                batch = store.modules_by_keys(todo[start:start + batch_size])
                signatures = card_signatures(embedder, batch)
                done += store.put_signatures_many(
                    [((m.source, m.repo_id), [sig]) for m, sig in zip(batch, signatures,
                                                                      strict=True)])
                bar.update(min(batch_size, len(todo) - start))
    finally:
        store.engine.dispose()
    click.echo(f"signed {done} module(s) with {embedder.name}")
