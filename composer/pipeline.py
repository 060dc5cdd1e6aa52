"""The ``loradex compose`` pipeline: pick the candidates, check everything, search, write.

The CLI builds a :class:`ComposeRequest` from its options and calls :func:`run_compose`, which
returns a :class:`ComposeOutcome` for the CLI to print. Everything that can be refused (bad
settings, an existing output folder, incompatible candidates, a budget too small) is refused
before the base model is loaded. The pipeline never talks to a Hub itself: fetching a Hub
module is the ``fetch`` collaborator's job, and publishing the result is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer.compose import ComposeConfig
from composer.models import ModelSpec
from loradex.errors import ConfigError, ModuleNotFound
from loradex.settings import Settings

if TYPE_CHECKING:
    from composer.candidates import Candidate, Fetcher
    from composer.compose import ComposeResult
    from composer.data import Example
    from composer.hydra.compose import HydraComposeResult
    from composer.models import LoadedModel
    from registry.entities import Module, SearchQuery

OUTPUTS = ("lora", "hydra")


@dataclass(frozen=True)
class RegistrySelection:
    """Which registry modules become the candidates (``--from-registry``)."""

    k: int | None = field(
        default=5,
        metadata={"help": "how many of the matches become candidates; None: all of them "
                          "(random only)"},
    )
    text: str | None = field(default=None, metadata={"help": "free-text filter"})
    task: str | None = field(default=None, metadata={"help": "task name or category filter"})
    tags: tuple[str, ...] = field(default=(), metadata={"help": "tags a module must have"})
    rank: int | None = field(default=None, metadata={"help": "LoRA rank filter"})
    select: str = field(
        default="retrieve+screen",
        metadata={"help": "random: k at random (the paper); retrieve: the k whose task "
                          "signatures fit the examples best; retrieve+screen: the best "
                          "screen_pool by signature, each scored alone, the k best kept"},
    )
    screen_pool: int = field(
        default=20, metadata={"help": "modules retrieved before the screen keeps k"})
    include_composed: bool = field(
        default=False,
        metadata={"help": "also draw modules composed from others (their parents are in the "
                          "pool already, so by default they are left out)"},
    )

    def query(self, base_model: str) -> SearchQuery:
        """The registry query: plain LoRA modules of ``base_model`` that match the filters."""
        from registry.entities import SearchQuery

        return SearchQuery(text=self.text, task=self.task, tags=self.tags, rank=self.rank,
                           base_model=base_model, kind="lora", composable=True,
                           include_composed=self.include_composed)


@dataclass(frozen=True)
class ComposeRequest:
    """One ``loradex compose`` run: what to compose, on which examples, and where to write it."""

    examples: Path = field(metadata={"help": "few-shot JSONL file the weights are fitted on"})
    out: Path = field(metadata={"help": "folder to write the composed module into"})
    candidates: tuple[str, ...] | RegistrySelection = field(
        default=(),
        metadata={"help": "the candidates: adapter folders or Hub ids (ID[@REV]), or a "
                          "selection from the registry"},
    )
    module_dirs: tuple[Path, ...] = field(
        default=(),
        metadata={"help": "where folders of locally indexed modules (ids local/NAME) live, "
                          "before the loradex home's modules/"},
    )
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"help": "the base model"})
    compose: ComposeConfig = field(
        default_factory=lambda: ComposeConfig(objective="auto"),
        metadata={"help": "method, objective and search; objective 'auto' is choice when "
                          "every example has choices, else lm"},
    )
    holdout: Path | None = field(
        default=None,
        metadata={"help": "held-out JSONL: loss and accuracy of zero weights, the result and "
                          "each candidate alone"},
    )
    output: str = field(
        default="lora",
        metadata={"help": "lora: one PEFT adapter; hydra: a Hydra module (shared composed A, "
                          "heads from the most weighted candidates, router fitted)"},
    )
    hydra_heads: int | None = field(
        default=None, metadata={"help": "output hydra: heads (default min(4, candidates))"}
    )
    router_steps: int = field(
        default=30, metadata={"help": "output hydra: router fit steps on the examples"}
    )
    name: str | None = field(
        default=None, metadata={"help": "title of the model card (default: folder name)"}
    )
    index: bool = field(default=True, metadata={"help": "index the result in the registry"})
    overwrite: bool = field(default=False, metadata={"help": "replace out if it exists"})


@dataclass
class ComposeOutcome:
    """What a compose run produced: the folder written, the search and, for a Hydra output,
    the module built from it."""

    folder: Path
    result: ComposeResult
    hydra: HydraComposeResult | None = None
    registry_id: str | None = None


def _quiet(message: str) -> None:
    pass


def select_candidates(
    request: ComposeRequest, settings: Settings, fetch: Fetcher | None = None,
    few: Sequence[Example] = (),
) -> tuple[list[Candidate], dict[str, Any] | None]:
    """The request's candidates, read from disk (fetched first when only on a Hub), and,
    for a registry selection, what chose them. A screen comes later, with the model."""
    from composer.candidates import resolve_candidate, select_from_registry
    from composer.models import base_model_name_for

    dirs = [*request.module_dirs, settings.home / "modules"]
    chosen = request.candidates
    if isinstance(chosen, RegistrySelection) and chosen.select != "random":
        return _retrieve_candidates(request, chosen, settings, fetch, few, dirs)
    if isinstance(chosen, RegistrySelection):
        return select_from_registry(
            settings.db_url, chosen.query(base_model_name_for(request.model.name_or_path)),
            k=chosen.k, seed=request.compose.search.seed, cache_dir=settings.cache_dir,
            module_dirs=dirs, fetch=fetch,
        ), ({"method": "random", "k": chosen.k} if chosen.k is not None else None)
    if not chosen:
        raise ConfigError("no candidates: give adapter folders or ids, or a registry selection")
    with local_module_lookup(settings.db_url) as lookup:
        return [resolve_candidate(ref, settings.cache_dir, dirs, fetch, lookup)
                for ref in chosen], None


@contextmanager
def local_module_lookup(db_url: str) -> Iterator[Callable[[str], Module | None]]:
    """A lookup of ``local/NAME`` in the registry (None when not indexed or no registry
    there), open for the ``with`` block: the store is opened at the first lookup, once."""
    from loradex.errors import RegistryNotFound
    from registry.entities import LOCAL_SOURCE
    from registry.schema import registry_missing
    from registry.store import RegistryStore

    stores: list[RegistryStore] = []

    def lookup(repo_id: str) -> Module | None:
        if not stores:
            if registry_missing(db_url):
                return None
            try:
                stores.append(RegistryStore.from_url(db_url))
            except RegistryNotFound:
                return None
        try:
            return stores[0].get_module(repo_id, source=LOCAL_SOURCE)
        except ModuleNotFound:
            return None

    try:
        yield lookup
    finally:
        for store in stores:
            store.engine.dispose()


def _retrieve_candidates(
    request: ComposeRequest, chosen: RegistrySelection, settings: Settings,
    fetch: Fetcher | None, few: Sequence[Example], dirs: Sequence[Path],
) -> tuple[list[Candidate], dict[str, Any]]:
    """The best modules of the registry query by task signature (``k``, or ``screen_pool``
    before a screen), with their scores."""
    from composer.candidates import candidate_from_module
    from composer.models import base_model_name_for
    from composer.selection import check_select
    from registry.embedders import load_embedder
    from registry.retrieval import retrieve
    from registry.store import RegistryStore

    if chosen.k is None:
        raise ConfigError("taking every match (k None, --all-compatible) goes with --select random")
    k = chosen.k
    check_select(chosen.select, k, chosen.screen_pool)
    wanted = k if chosen.select == "retrieve" else max(k, chosen.screen_pool)
    embedder = load_embedder()
    store = RegistryStore.from_url(settings.db_url)
    try:
        pool = store.matching_keys(chosen.query(base_model_name_for(request.model.name_or_path)))
        if not pool:
            raise ModuleNotFound("no module in the registry matches the query")
        hits = retrieve(store, embedder, [e.input for e in few], pool, limit=wanted)
        modules = {(m.source, m.repo_id): m for m in store.modules_by_keys([h.key for h in hits])}
    finally:
        store.engine.dispose()
    selection: dict[str, Any] = {
        "method": chosen.select, "embedder": embedder.name, "pool_size": len(pool), "k": k,
        "retrieved": [{"repo_id": h.repo_id, "score": round(h.score, 6),
                       "signature": h.signature} for h in hits],
    }
    return [candidate_from_module(modules[hit.key], settings.cache_dir, dirs, fetch)
            for hit in hits], selection


def hydra_head_count(num_heads: int | None, router_steps: int, n_candidates: int) -> int:
    """Check ``--hydra-heads`` / ``--router-steps`` before any model work; return N.

    N defaults to ``min(4, number of candidates)``.
    """
    heads = num_heads if num_heads is not None else min(4, n_candidates)
    if not 1 <= heads <= n_candidates:
        raise ConfigError(
            f"--hydra-heads must be between 1 and the number of candidates ({n_candidates}), "
            f"got {heads}"
        )
    if router_steps < 0:
        raise ConfigError(f"--router-steps must be >= 0, got {router_steps}")
    return heads


def run_compose(
    request: ComposeRequest,
    settings: Settings,
    *,
    fetch: Fetcher | None = None,
    load_model: Callable[[ModelSpec], LoadedModel] | None = None,
    notify: Callable[[str], None] = _quiet,
    progress: bool = True,
) -> ComposeOutcome:
    """Compose the request's candidates on its examples and write the result (and index it).

    ``fetch`` gets a Hub module that is not on disk yet; ``load_model`` loads the base model
    (default :func:`composer.models.load_base_model`) once every check has passed; ``notify``
    hears what is about to be composed.
    """
    from composer.adapter_io import check_output_dir
    from composer.compose import compose, write_composition
    from composer.data import load_examples
    from composer.models import base_model_name_for, load_base_model
    from composer.objectives import default_objective
    from loradex.files import file_sha256

    if request.output not in OUTPUTS:
        raise ConfigError(f"--output must be one of {', '.join(OUTPUTS)}, got {request.output!r}")
    few = load_examples(request.examples)
    config = request.compose
    if config.objective == "auto":
        config = replace(config, objective=default_objective(few))
    method = config.make_method()
    config.search.validate()
    check_output_dir(request.out, request.overwrite)
    held = load_examples(request.holdout) if request.holdout else []
    candidates, selection = select_candidates(request, settings, fetch, few)
    # Refuse incompatible candidates before paying for the model.
    method.check(candidates, base_model=base_model_name_for(request.model.name_or_path))
    screening = selection is not None and selection["method"] == "retrieve+screen"
    config.check_budget(selection["k"] if screening and selection else len(candidates))
    n_heads = None
    if request.output == "hydra":
        if config.method != "lorahub":
            raise ConfigError("--output hydra needs --method lorahub (candidates of one rank)")
        if config.layer_groups != 1:
            raise ConfigError("--output hydra needs one weight per candidate (--layer-groups 1)")
        n_heads = hydra_head_count(request.hydra_heads, request.router_steps, len(candidates))
    chosen_by = f" ({selection['method']})" if selection is not None else ""
    notify(f"{len(candidates)} candidates{chosen_by}, {len(few)} examples, "
           f"method {config.method}")

    loaded = (load_model or load_base_model)(request.model)
    if screening and selection is not None:
        from composer.selection import screen

        screened = screen(loaded, candidates, few, selection["k"], objective=config.objective,
                          method=config.method, use_chat_template=config.use_chat_template)
        selection["screen"] = [{"repo_id": c.repo_id, "loss": round(loss, 6)}
                               for c, loss in zip(candidates, screened.losses, strict=True)]
        candidates = [candidates[i] for i in screened.kept]
        notify(f"screened {len(screened.losses)} retrieved modules alone on the examples; "
               f"kept {len(candidates)}")
    result = compose(loaded, candidates, few, config, holdout=held, progress=progress)
    result.selection = selection
    hydra = None
    if n_heads is not None:
        from composer.hydra.compose import compose_result_to_hydra

        hydra = compose_result_to_hydra(
            loaded, result, few, request.out, num_heads=n_heads, holdout=held,
            fit_steps=request.router_steps, overwrite=request.overwrite,
        )
        assert hydra.out_dir is not None
        folder = hydra.out_dir
    else:
        folder = write_composition(
            result, loaded, request.out, examples_file=str(request.examples),
            examples_sha256=file_sha256(request.examples), n_examples=len(few),
            name=request.name, overwrite=request.overwrite,
        )
    registry_id = None
    if request.index:
        from composer.registry_link import index_adapter_folder

        registry_id = index_adapter_folder(settings.db_url, folder)
    return ComposeOutcome(folder=folder, result=result, hydra=hydra, registry_id=registry_id)
