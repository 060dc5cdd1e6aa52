"""``loradex serve``, ``token``, ``sync``, ``pull``, ``publish``: the Hub protocol, both ways.

Nothing heavy is imported at module level: the server stack, huggingface_hub and the registry
load inside the command that needs them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from loradex.errors import ConfigError
from loradex.settings import Settings

if TYPE_CHECKING:  # the server stack loads only in the commands that run it
    from registry.server.types import ServerConfig

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """``"500MB"``, ``"2GiB"``, ``"1048576"`` -> bytes."""
    match = _SIZE_RE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(f"invalid size {text!r}: use e.g. 500MB, 2GiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


def _check_port_free(host: str, port: int) -> None:
    """One clear line instead of uvicorn's traceback when the address is taken."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _quiet_hf_logs() -> None:
    """huggingface_hub logs retries as warnings; the CLI reports one line per failure itself."""
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _settings(
    ctx: click.Context, db: str | None = None, endpoint: str | None = None, token: str | None = None
) -> Settings:
    base: Settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings.resolve()
    return Settings(
        home=base.home,
        db_url=db or base.db_url,
        endpoint=(endpoint or base.endpoint).rstrip("/"),
        token=token or base.token,
    )


def _reindex_pending(config: ServerConfig) -> None:
    """Report the repos a previous run left pending re-indexing (a crash between a commit and
    its indexing, a database down at the time) and index them before serving."""
    from registry.db import make_engine
    from registry.server.indexing import make_registry_indexer

    engine = make_engine(config.db_url)
    try:
        indexer = make_registry_indexer(engine, config)
        pending = indexer.pending()
        if not pending:
            return
        shown = ", ".join(sorted(pending)[:5]) + (", ..." if len(pending) > 5 else "")
        click.echo(f"{len(pending)} repo(s) pending re-indexing: {shown}", err=True)
        done, left = indexer.retry_pending()
        click.echo(
            f"re-indexed {done} repo(s)"
            + (f"; {left} still pending, retried in the background" if left else ""),
            err=True,
        )
    finally:
        engine.dispose()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for blobs and the URL-signing secret (default: LORADEX_HOME/hub).",
)
@click.option(
    "--db",
    default=None,
    metavar="URL",
    help="Database URL (default: the registry database, --db of the group).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes (SQLite in WAL mode and PostgreSQL both allow several).",
)
@click.option(
    "--max-upload-size",
    default="5GB",
    show_default=True,
    help="Largest accepted file, e.g. 500MB or 2GiB.",
)
@click.option(
    "--public-url",
    default=None,
    help="Base URL clients reach the server at (default: from the Host header).",
)
@click.option(
    "--rate-limit",
    default=None,
    metavar="N/SECONDS",
    help="Answer 429 (with RateLimit and Retry-After headers, as huggingface.co does) past N "
    "requests per SECONDS window, per client and kind (api, resolvers, pages), per worker; "
    "e.g. 500/300.",
)
@click.option(
    "--gc-only",
    is_flag=True,
    help="Delete unreferenced blobs (from failed commits or abandoned uploads, unused for 2 h) "
    "and exit; this also runs at every start.",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    data_dir: str | None,
    db: str | None,
    workers: int,
    max_upload_size: str,
    public_url: str | None,
    rate_limit: str | None,
    gc_only: bool,
    log_level: str,
) -> None:
    """Run a Hugging Face Hub compatible server backed by the registry database.

    Clients use it with HF_ENDPOINT=http://HOST:PORT (and HF_HUB_DISABLE_XET=1 to upload).
    Adapters uploaded to it are indexed into the same database at once.

    \b
    Example:
      loradex serve --port 8080 --data ./hub-data
      loradex token create alice          # prints a token once
      HF_ENDPOINT=http://127.0.0.1:8080 loradex sync
    """
    import logging
    import os

    import uvicorn

    from registry.db import make_engine
    from registry.schema import ensure_schema
    from registry.server.app import CONFIG_ENV, config_to_env, create_app, load_or_create_secret
    from registry.server.blobstore import BlobStore
    from registry.server.ratelimit import parse_rate_limit, with_rate_limit
    from registry.server.service import HubService
    from registry.server.types import ServerConfig

    quota, window = parse_rate_limit(rate_limit) if rate_limit else (0, 0)
    _check_port_free(host, port)
    settings = _settings(ctx, db=db)
    data = Path(data_dir).expanduser() if data_dir else settings.home / "hub"
    config = ServerConfig(
        data_dir=data.resolve(),
        db_url=settings.db_url,
        public_url=public_url,
        max_upload_size=parse_size(max_upload_size),
        rate_limit=quota,
        rate_limit_window=window,
    )
    ensure_schema(config.db_url)
    secret = load_or_create_secret(config.data_dir)
    engine = make_engine(config.db_url)
    try:
        service = HubService(engine, BlobStore(config.blobs_dir), config, secret)
        removed, freed = service.collect_garbage()
    finally:
        engine.dispose()
    if removed or gc_only:
        click.echo(f"removed {removed} unreferenced blob(s), {freed} bytes", err=True)
    if gc_only:
        return
    _reindex_pending(config)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    click.echo(
        f"loradex Hub on http://{host}:{port} (data {config.data_dir}, {workers} worker(s))",
        err=True,
    )
    common = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": log_level == "debug",
        "timeout_keep_alive": 30,
        "lifespan": "on",
    }
    if workers == 1:
        uvicorn.run(with_rate_limit(create_app(config), config), **common)  # type: ignore[arg-type]
    else:
        os.environ[CONFIG_ENV] = config_to_env(config)
        factory = "registry.server.ratelimit:app_from_env"  # the app, rate-limited if asked
        uvicorn.run(factory, factory=True, workers=workers, **common)  # type: ignore[arg-type]


@click.group()
def token() -> None:
    """Manage access tokens of the built-in Hub server (stored hashed in the database).

    \b
    Example:
      loradex token create alice --namespace team-x
    """


@token.command("create")
@click.argument("user")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Organisation namespace the user may also write to (repeatable).",
)
@click.option("--name", "display_name", default=None, help="Label of the token (default: USER).")
@click.option(
    "--read-only", is_flag=True, help="A token that can read private repos but not write."
)
@click.option("--db", default=None, metavar="URL", help="Database URL (default: the registry).")
@click.pass_context
def token_create(
    ctx: click.Context,
    user: str,
    namespaces: tuple[str, ...],
    display_name: str | None,
    read_only: bool,
    db: str | None,
) -> None:
    """Create a token for USER and print it once (only its hash is stored).

    \b
    Example:
      loradex token create alice --namespace team-x
    """
    from registry.db import make_engine
    from registry.schema import ensure_schema
    from registry.server.errors import HubHTTPError
    from registry.server.tokens import create_token

    settings = _settings(ctx, db=db)
    ensure_schema(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        secret = create_token(
            engine, user, display_name or user, namespaces, "read" if read_only else "write"
        )
    except HubHTTPError as exc:
        raise ConfigError(exc.message) from None
    finally:
        engine.dispose()
    click.echo(secret)


@token.command("list")
@click.option("--db", default=None, metavar="URL", help="Database URL (default: the registry).")
@click.pass_context
def token_list(ctx: click.Context, db: str | None) -> None:
    """List tokens (id, user, label, role, namespaces); secrets are never shown.

    \b
    Example:
      loradex token list
    """
    from registry.db import make_engine
    from registry.schema import ensure_schema
    from registry.server.tokens import list_tokens

    settings = _settings(ctx, db=db)
    ensure_schema(settings.db_url)
    engine = make_engine(settings.db_url)
    for row in list_tokens(engine):
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(
            f"{row['id']:>4}  {row['user']:<16} {row['name']:<16} {row['role']:<5} "
            f"{','.join(row['namespaces'])}  {state}"
        )
    engine.dispose()


@token.command("revoke")
@click.argument("token_id", type=int)
@click.option("--db", default=None, metavar="URL", help="Database URL (default: the registry).")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int, db: str | None) -> None:
    """Revoke the token with id TOKEN_ID (see ``loradex token list``).

    \b
    Example:
      loradex token revoke 3
    """
    from registry.db import make_engine
    from registry.server.tokens import revoke_token

    settings = _settings(ctx, db=db)
    engine = make_engine(settings.db_url)
    try:
        if not revoke_token(engine, token_id):
            raise ConfigError(f"no active token with id {token_id}")
    finally:
        engine.dispose()
    click.echo(f"revoked token {token_id}")


@click.command()
@click.option("--endpoint", default=None, help="Hub URL (default: LORADEX_ENDPOINT/HF_ENDPOINT).")
@click.option("--author", default=None, help="Only repos of this user or organisation.")
@click.option("--search", default=None, help="Only repos whose id contains this text.")
@click.option("--base-model", default=None, help="Only adapters of this base model.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Look at most at N repos.")
@click.option(
    "--jobs",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Repos fetched in parallel.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Fetch again repos that failed with the same sha."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Remove modules of this Hub whose repo it no longer lists (deleted or made private).",
)
@click.option(
    "--max-wait",
    default=900.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Longest wait (seconds) a Hub's rate limit may ask for before the sync stops; "
    "it resumes where it stopped.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def sync(
    ctx: click.Context,
    endpoint: str | None,
    author: str | None,
    search: str | None,
    base_model: str | None,
    limit: int | None,
    jobs: int,
    retry_failed: bool,
    prune: bool,
    max_wait: float,
    quiet: bool,
) -> None:
    """Index the PEFT adapters of a Hub into the registry (incremental, resumable).

    Reads adapter_config.json, the card and the safetensors header (a range request, never
    the weights) of every repo whose last commit changed since the previous sync.

    With --prune, modules synced earlier from this Hub whose repo the listing no longer
    shows (within --author/--search) are removed from the registry.

    \b
    Example:
      loradex sync --endpoint http://127.0.0.1:8080 --author alice
      loradex sync --endpoint http://127.0.0.1:8080 --prune
    """
    from hub_client.client import HubClient
    from hub_client.sync import SyncOptions, sync_hub
    from registry.store import RegistryStore

    _quiet_hf_logs()
    settings = _settings(ctx, endpoint=endpoint)
    store = RegistryStore.from_url(settings.db_url)
    client = HubClient(settings.endpoint, settings.token)
    options = SyncOptions(
        author=author,
        search=search,
        base_model=base_model,
        limit=limit,
        jobs=jobs,
        retry_failed=retry_failed,
        prune=prune,
        progress=not quiet,
        max_wait=max_wait,
    )
    from loradex.cli.embedding import optional_embedder

    report = sync_hub(client, store, options,
                      embedder=optional_embedder("modules indexed without card signatures"))
    click.echo(report.summary())
    for repo_id, reason in report.warnings[:20]:
        click.echo(f"  warning {repo_id}: {reason}; indexed without it", err=True)
    for repo_id, status, reason in report.not_indexed[:20]:
        click.echo(f"  {status} {repo_id}: {reason}", err=True)
    for repo_id, reason in report.failures[:20]:
        click.echo(f"  failed {repo_id}: {reason}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... and {len(report.failures) - 20} more failures", err=True)
    if report.rate_limited:
        click.echo(
            f"  rate-limited {report.rate_limited} time(s): waited {report.waited:.1f} s, "
            f"down to {report.lowest_jobs} fetch(es) in flight",
            err=True,
        )


@click.command()
@click.argument("module_id", metavar="ID[@REV]")
@click.option(
    "--to",
    "target",
    type=click.Path(file_okay=False),
    default=None,
    help="Also place the files in this folder (default: cache only).",
)
@click.option("--endpoint", default=None, help="Hub URL (default: LORADEX_ENDPOINT/HF_ENDPOINT).")
@click.option("--offline", is_flag=True, help="Use the cache only (also HF_HUB_OFFLINE=1).")
@click.pass_context
def pull(
    ctx: click.Context, module_id: str, target: str | None, endpoint: str | None, offline: bool
) -> None:
    """Download an adapter (safetensors, config, card) and verify it against the registry.

    Prints the folder holding the files. Works from the cache when the Hub is unreachable.

    \b
    Example:
      loradex pull alice/past-tense-lora --to ./adapters/past-tense
      loradex pull alice/past-tense-lora@3f1c0a9e...   # an exact revision
    """
    import os

    from hub_client.client import HubClient
    from hub_client.pull import pull_module
    from registry.store import RegistryStore

    _quiet_hf_logs()
    settings = _settings(ctx, endpoint=endpoint)
    repo_id, _, revision = module_id.partition("@")
    store = RegistryStore.from_url(settings.db_url)
    client = HubClient(settings.endpoint, settings.token, cache_dir=settings.cache_dir)
    result = pull_module(
        client,
        store,
        repo_id,
        revision or None,
        target=Path(target) if target else None,
        offline=offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"),
    )
    if result.from_cache:
        click.echo(f"(offline: served from the cache at revision {result.revision})", err=True)
    click.echo(str(result.folder.resolve()))


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", "repo_id", required=True, help="Target repo, NAMESPACE/NAME.")
@click.option("--endpoint", default=None, help="Hub URL (default: LORADEX_ENDPOINT/HF_ENDPOINT).")
@click.option(
    "--token", "token_value", default=None, help="Hub token (default: LORADEX_TOKEN/HF_TOKEN)."
)
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--license", "license_id", default=None, help="Licence for the card (default: keep).")
@click.option("--message", default=None, help="Commit message.")
@click.pass_context
def publish(
    ctx: click.Context,
    folder: str,
    repo_id: str,
    endpoint: str | None,
    token_value: str | None,
    private: bool,
    license_id: str | None,
    message: str | None,
) -> None:
    """Validate an adapter folder, complete its card, upload it in one commit, index it.

    \b
    Example:
      loradex publish ./out/past-tense --repo alice/past-tense-lora --endpoint http://127.0.0.1:8080
    """
    from hub_client.client import HubClient
    from hub_client.publish import publish_folder
    from registry.store import RegistryStore

    _quiet_hf_logs()
    settings = _settings(ctx, endpoint=endpoint, token=token_value)
    if not settings.token:
        raise ConfigError("publishing needs a token: --token, LORADEX_TOKEN or HF_TOKEN")
    store = RegistryStore.from_url(settings.db_url)
    client = HubClient(settings.endpoint, settings.token)
    from loradex.cli.embedding import optional_embedder

    result = publish_folder(
        client,
        store,
        Path(folder),
        repo_id,
        private=private,
        license_id=license_id,
        message=message,
        embedder=optional_embedder("indexed without a card signature"),
    )
    click.echo(f"published {result.repo_id}@{result.revision} -> {result.url}")
    if result.skipped:
        click.echo(f"left out (pickle or outside link): {', '.join(result.skipped)}", err=True)
