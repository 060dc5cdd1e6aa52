"""``loradex add``, ``loradex search``, ``loradex show``: the module index from the command line.

Nothing heavy at import time: the registry (SQLAlchemy) is imported inside the commands,
and torch never is. Output formats are documented in docs/registry.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from loradex.errors import ConfigError
from loradex.settings import Settings

if TYPE_CHECKING:
    from registry.entities import Module
    from registry.store import RegistryStore

SEARCH_JSON_VERSION = 1
# Counting stops here ("1-20 of 1000+"): exact totals of broad searches cost time, pages don't.
COUNT_LIMIT = 1000


def open_store(ctx: click.Context, *, read_only: bool = False) -> RegistryStore:
    """The registry of the resolved settings, checked to be at this loradex's schema.

    A command that writes creates an empty registry; a ``read_only`` one (search, show) never
    creates anything, not even the SQLite file's folders, and says there is no registry.
    """
    from loradex.errors import RegistryNotFound
    from registry.db import display_url, make_engine
    from registry.schema import ensure_schema, registry_missing
    from registry.store import RegistryStore

    settings = ctx.find_object(Settings) or Settings.resolve()
    if read_only and registry_missing(settings.db_url):
        raise RegistryNotFound(
            f"no registry at {display_url(settings.db_url)}: check --db/LORADEX_DB, or add "
            "modules first (`loradex add`, `loradex sync`)"
        )
    engine = make_engine(settings.db_url)
    ensure_schema(settings.db_url, engine=engine, create=not read_only)
    return RegistryStore(engine)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- add


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option("--id", "repo_id", metavar="NAMESPACE/NAME",
              help="Repo id to index it under (default: local/<folder name>).")
@click.option("--revision", default=None, help="Revision (commit sha) to record, if any.")
@click.option("--json", "as_json", is_flag=True, help="Print the indexed module as JSON.")
@click.pass_context
def add(ctx: click.Context, path: str, repo_id: str | None, revision: str | None,
        as_json: bool) -> None:
    """Index a local PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    A Hydra module folder (hydra_config.json + hydra_model.safetensors) is indexed as kind
    "hydra" with its head count.

    The safetensors header is checked against the config (rank, target modules) without
    loading any tensor; the model card's YAML front matter supplies licence, tags and task.
    On any error nothing is written.

    \b
    Example:
      loradex add ./adapters/past-tense --id alice/past-tense
    """
    from loradex.errors import ModuleNotFound
    from registry.adapter_files import inspect_adapter_folder
    from registry.repo_ids import check_repo_id

    if repo_id is not None:
        try:
            check_repo_id(repo_id)  # the rule our Hub applies, so `add` and `serve` agree
        except ConfigError as exc:
            raise ConfigError(f"--id {exc}") from None
    module = inspect_adapter_folder(path, repo_id=repo_id, revision=revision)
    module = _with_signatures(module, Path(path))
    store = open_store(ctx)
    try:
        store.get_module(module.repo_id, source=module.source)
        verb = "updated"
    except ModuleNotFound:
        verb = "added"
    stored = store.upsert_module(module)
    if as_json:
        from registry.entities import module_to_dict

        click.echo(json.dumps(module_to_dict(stored), indent=2))
        return
    what = (
        f"Hydra r={stored.rank}, {stored.num_heads} heads"
        if stored.kind == "hydra"
        else f"LoRA r={stored.rank}"
    )
    click.echo(
        f"{verb} {stored.repo_id}: {what} on {stored.base_model}, "
        f"targets {','.join(stored.target_modules)}, {len(stored.files)} files "
        f"({_human_size(stored.total_size)})"
    )


def _with_signatures(module: Module, folder: Path) -> Module:
    """``module`` with its folder's data signature and a card signature, when they can be
    made; a bad signature file or a missing embedder is one warning line, not a refusal."""
    from loradex.cli.embedding import optional_embedder
    from registry.signatures import sign_folder_module

    signed, warning = sign_folder_module(
        module, folder, optional_embedder("indexed without a card signature"))
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return signed


# --------------------------------------------------------------------------- search


def _check_range(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise click.BadParameter(f"must be >= {low}", param_hint=name)


def search_json(
    modules: list[Module],
    total: int,
    query: Any,
    compat: dict[str, bool] | None = None,
    *,
    total_is_exact: bool = True,
) -> dict[str, Any]:
    """The ``loradex search --json`` document (shape documented in docs/registry.md)."""
    from registry.entities import module_to_dict

    results = []
    for module in modules:
        item = module_to_dict(module, include_card=False)
        if compat is not None:
            item["rank_matches"] = compat.get(module.repo_id)
        results.append(item)
    return {
        "version": SEARCH_JSON_VERSION,
        "total": total,
        "total_is_exact": total_is_exact,
        "offset": query.offset,
        "limit": query.limit,
        "sort": query.effective_sort,
        "results": results,
    }


def _print_table(modules: list[Module], compat: dict[str, bool] | None) -> None:
    headers = ["REPO ID", "BASE MODEL", "R", "TARGETS", "TASK", "DOWNLOADS", "LIKES"]
    if compat is not None:
        headers.append("SAME R")
    rows = []
    for m in modules:
        row = [
            _clip(m.repo_id, 40),
            _clip(m.base_model, 36),
            f"{m.rank}x{m.num_heads}" if m.kind == "hydra" else str(m.rank),
            _clip(",".join(m.target_modules), 28),
            _clip(m.task_name or m.task_category or "-", 24),
            str(m.downloads),
            str(m.likes),
        ]
        if compat is not None:
            row.append("yes" if compat.get(m.repo_id) else "no")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    numeric = {"R", "DOWNLOADS", "LIKES"}
    for line in [headers, *rows]:
        cells = [
            cell.rjust(w) if headers[i] in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


@click.command()
@click.argument("text", required=False, nargs=-1)
@click.option("--base-model", metavar="ID", help="Base model (Hub id, URL or cache path).")
@click.option("--rank", type=int, help="Exact LoRA rank.")
@click.option("--min-rank", type=int, help="Rank at least this.")
@click.option("--max-rank", type=int, help="Rank at most this.")
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help="Targeted module, e.g. q_proj (repeat: must target all).")
@click.option("--task", metavar="NAME", help="Task name or task category.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag (repeat: must have all).")
@click.option("--author", help="Author (exact).")
@click.option("--license", "license_", metavar="ID", help="Licence id, e.g. apache-2.0.")
@click.option("--peft-type", metavar="TYPE", help="PEFT type, e.g. LORA.")
@click.option("--kind", type=click.Choice(["lora", "hydra"]),
              help="Module kind: plain LoRA or Hydra (shared A, N heads, router).")
@click.option("--compatible-with", metavar="ID",
              help="Only modules with the same base model and target modules as ID.")
@click.option("--sort", type=click.Choice(["relevance", "downloads", "likes", "updated", "rank"]),
              help="Order (default: relevance with TEXT, else downloads).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Results per page.")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True,
              help="Results to skip (the next page: --offset 20).")
@click.option("--like", "like", metavar="FEW.jsonl",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Rank the modules that pass the filters by fit to these task examples "
                   "(their task signatures; see docs/registry.md).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
@click.pass_context
def search(ctx: click.Context, text: tuple[str, ...], base_model: str | None, rank: int | None,
           min_rank: int | None, max_rank: int | None, targets: tuple[str, ...],
           task: str | None, tags: tuple[str, ...], author: str | None, license_: str | None,
           peft_type: str | None, kind: str | None, compatible_with: str | None,
           sort: str | None, limit: int, offset: int, like: Path | None,
           as_json: bool) -> None:
    """Search the registry: free text (full-text, ranked) plus filters.

    Column R is the rank; for a Hydra module it reads RANKxHEADS (4x3: r=4, 3 heads).

    \b
    Examples:
      loradex search "past tense"
      loradex search --base-model HuggingFaceTB/SmolLM2-135M-Instruct --rank 8 --tag grammar
      loradex search --compatible-with alice/past-tense --sort rank --json
      loradex search --kind hydra
      loradex search --like examples/boolean_expressions/few_shot.jsonl --base-model \
        HuggingFaceTB/SmolLM2-135M-Instruct --limit 5
    """
    from registry.entities import SearchQuery

    _check_range("--rank", rank, 1)
    _check_range("--min-rank", min_rank, 1)
    _check_range("--max-rank", max_rank, 1)
    if min_rank is not None and max_rank is not None and min_rank > max_rank:
        raise click.BadParameter("--min-rank is greater than --max-rank")
    joined = " ".join(text).strip() or None
    if sort == "relevance" and not joined:
        raise click.BadParameter("--sort relevance needs search TEXT", param_hint="--sort")
    query = SearchQuery(
        text=joined, base_model=base_model, rank=rank, min_rank=min_rank, max_rank=max_rank,
        targets=targets, task=task, tags=tags, author=author, license=license_,
        peft_type=peft_type, kind=kind, compatible_with=compatible_with,
        sort=sort,  # type: ignore[arg-type]
        limit=limit, offset=offset,
    )
    store = open_store(ctx, read_only=True)
    if like is not None:
        if joined or sort:
            raise click.BadParameter("--like ranks by fit to the examples; it takes no TEXT "
                                     "or --sort", param_hint="--like")
        _search_like(store, query, like, as_json)
        return
    page = store.search_page(query, count_limit=COUNT_LIMIT)
    modules, total = list(page.modules), page.total
    compat = None
    if compatible_with:
        ref = store.get_module(compatible_with)
        compat = {m.repo_id: m.rank == ref.rank for m in modules}
    if as_json:
        doc = search_json(modules, total, query, compat, total_is_exact=page.total_is_exact)
        click.echo(json.dumps(doc, indent=2))
        return
    if not modules:
        click.echo("no modules match" if total == 0 else f"no results past offset {offset}")
        return
    _print_table(modules, compat)
    shown = f"{offset + 1}-{offset + len(modules)}"
    of = f"{total}" if page.total_is_exact else f"{total}+"
    click.echo(f"{shown} of {of} (sorted by {query.effective_sort})")


def _search_like(store: RegistryStore, query: Any, like: Path, as_json: bool) -> None:
    """``search --like``: the filtered modules ranked by their signatures' fit to examples."""
    from composer.data import load_examples
    from registry.embedders import load_embedder
    from registry.entities import module_to_dict
    from registry.retrieval import retrieve

    examples = load_examples(like)
    embedder = load_embedder()
    pool = store.matching_keys(query)
    hits = retrieve(store, embedder, [e.input for e in examples], pool)
    page = hits[query.offset:query.offset + query.limit]
    modules = {(m.source, m.repo_id): m for m in store.modules_by_keys([h.key for h in page])}
    if as_json:
        results = []
        for hit in page:
            item = module_to_dict(modules[hit.key], include_card=False)
            item["similarity"] = round(hit.score, 6)
            item["signature"] = hit.signature
            results.append(item)
        click.echo(json.dumps({
            "version": SEARCH_JSON_VERSION, "total": len(hits), "total_is_exact": True,
            "offset": query.offset, "limit": query.limit, "sort": "similarity",
            "embedder": embedder.name, "examples": len(examples), "results": results,
        }, indent=2))
        return
    if not page:
        click.echo("no modules match" if not hits else f"no results past {query.offset}")
        return
    width = max(len("REPO ID"), *(len(h.repo_id) for h in page))
    click.echo(f"{'REPO ID':<{width}}  SCORE   SIGNATURE            TASK")
    for hit in page:
        task = modules[hit.key].task_name or modules[hit.key].task_category or "-"
        click.echo(f"{hit.repo_id:<{width}}  {hit.score:+.3f}  {hit.signature:<19}  "
                   f"{_clip(task, 30)}")
    click.echo(f"{query.offset + 1}-{query.offset + len(page)} of {len(hits)} "
               f"(by similarity to {len(examples)} examples; {embedder.name})")


# --------------------------------------------------------------------------- show


def _show_lines(m: Module, card_lines: int) -> list[str]:
    lines = [f"{m.repo_id}"]

    def field(name: str, value: object) -> None:
        lines.append(f"  {name:<14}{value if value not in (None, '') else '-'}")

    field("source", m.source)
    field("revision", m.revision)
    field("kind", m.kind if m.num_heads is None else f"{m.kind} ({m.num_heads} heads)")
    recorded = m.base_model_raw not in (None, m.base_model)
    raw = f"  (recorded as {m.base_model_raw})" if recorded else ""
    if m.base_model_is_path:
        raw += "  [a local path on the author's disk, not a Hub id: matches no Hub base model]"
    field("base model", f"{m.base_model}{raw}")
    field("peft type", f"{m.peft_type}" + (f" / {m.task_type}" if m.task_type else "")
          + (f"  (PEFT {m.peft_version})" if m.peft_version else ""))
    field("rank", f"{m.rank}  alpha {_num(m.alpha)}  dropout {_num(m.dropout)}")
    flags = [name for name, on in (("use_dora", m.use_dora), ("use_rslora", m.use_rslora),
                                   ("lora_bias", m.lora_bias)) if on]
    if flags:
        field("peft flags", ", ".join(flags))
    if m.rank_pattern:
        field("rank pattern", ", ".join(f"{k}={v}" for k, v in m.rank_pattern))
    if m.alpha_pattern:
        field("alpha pattern", ", ".join(f"{k}={v:g}" for k, v in m.alpha_pattern))
    if m.modules_to_save:
        field("saved whole", ", ".join(m.modules_to_save))
    if m.layers_to_transform:
        field("layers", ", ".join(str(i) for i in m.layers_to_transform))
    if m.local_path:
        field("folder", m.local_path)
    field("bias", m.bias)
    field("targets", ", ".join(m.target_modules))
    params = f"{m.num_parameters:,}" if m.num_parameters is not None else "-"
    field("parameters", f"{params} ({m.dtype or '-'})")
    field("total size", _human_size(m.total_size))
    field("author", m.author)
    field("license", m.license)
    field("tags", ", ".join(m.tags))
    field("task", m.task_name)
    field("category", m.task_category)
    field("dataset", m.dataset)
    field("language", m.language)
    field("description", m.description)
    field("downloads", m.downloads)
    field("likes", m.likes)
    field("created", m.created_at.isoformat() if m.created_at else None)
    field("updated", m.updated_at.isoformat() if m.updated_at else None)
    lines.append(f"files ({len(m.files)}):")
    width = max((len(f.path) for f in m.files), default=0)
    for f in m.files:
        lfs = "  lfs" if f.lfs else ""
        lines.append(f"  {f.path:<{width}}  {_human_size(f.size):>9}  {f.sha256 or '-'}{lfs}")
    if m.lineage:
        lines.append(f"lineage ({len(m.lineage)} parents):")
        for e in m.lineage:
            weight = f"  weight {e.weight:g}" if e.weight is not None else ""
            lines.append(f"  {e.role:<10}{e.parent_repo_id}@{e.parent_revision or '-'}{weight}")
    else:
        lines.append("lineage: none")
    if m.card_text:
        card = m.card_text.strip().splitlines()
        lines.append("card:")
        lines += [f"  {ln}".rstrip() for ln in card[:card_lines]]
        if len(card) > card_lines:
            lines.append(f"  ... ({len(card) - card_lines} more lines; --card-lines to see more)")
    else:
        lines.append("card: none")
    return lines


@click.command()
@click.argument("repo_id", metavar="ID")
@click.option("--source", default=None, help="Which source's copy (an endpoint URL or 'local').")
@click.option("--card-lines", type=click.IntRange(0), default=12, show_default=True,
              help="How many lines of the model card to print.")
@click.option("--json", "as_json", is_flag=True, help="Print the module as JSON (card included).")
@click.pass_context
def show(ctx: click.Context, repo_id: str, source: str | None, card_lines: int,
         as_json: bool) -> None:
    """Print everything the registry knows about one module: metadata, files, lineage, card.

    \b
    Example:
      loradex show alice/past-tense
    """
    store = open_store(ctx, read_only=True)
    module = store.get_module(repo_id, source=source)
    if as_json:
        from registry.entities import module_to_dict

        click.echo(json.dumps(module_to_dict(module), indent=2))
        return
    click.echo("\n".join(_show_lines(module, card_lines)))
