"""``loradex sync``: index the PEFT adapters and Hydra modules of a Hub into the registry.

For each adapter repo whose head sha differs from the recorded sync state, three small reads
(``adapter_config.json``, ``README.md``, the safetensors header by range request) feed the
registry's own ``module_from_metadata``; the weights are never downloaded. Hydra repos
(``hydra_config.json`` + ``hydra_model.safetensors``, tagged ``hydra-lora``; see
``docs/hydra-format.md``) are read the same way and judged by ``hydra_module_from_metadata``.
Fetches run in a bounded thread pool; writes happen in the calling thread in short batches
(modules first, then their sync states, at least once a second and again on Ctrl-C), so an
interrupted sync resumes where it stopped, and a killed one redoes at most its last batch.

What a real Hub does to a sync, and what the sync records (``SyncState.status``): a 429 is
waited out as the Hub says (``hub_client.throttle``), with fewer fetches in flight; a gated
repo the token may not read is ``gated``; a repo deleted (or made private) between the
listing and its fetch is ``gone``; a repo with pickle weights only is ``skipped`` for that
reason, as is a broken adapter; a refusal of another kind is ``error``, retried next time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hub_client.throttle import RateGate
from loradex.errors import (
    ConfigError,
    GatedRepo,
    HubError,
    HubRateLimited,
    HubRepoNotFound,
    HubUnavailable,
    InvalidAdapter,
    LoradexError,
)
from registry.adapter_files import PICKLE_WEIGHTS, parse_json_object
from registry.adapter_metadata import module_from_metadata
from registry.cards import CARD
from registry.entities import Module, ModuleFile, Signature, SyncState
from registry.hydra import CONFIG_NAME as HYDRA_CONFIG
from registry.hydra import WEIGHTS_NAME as HYDRA_WEIGHTS
from registry.hydra import hydra_module_from_metadata
from registry.lora_tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from registry.signatures import DATA, SIGNATURE_FILE, read_signature_file, sign_modules
from registry.signatures import MAX_FILE_BYTES as MAX_SIGNATURE_BYTES

if TYPE_CHECKING:
    from huggingface_hub.hf_api import ModelInfo

    from hub_client.client import HubClient
    from registry.embedders import Embedder
    from registry.store import RegistryStore

PEFT_FILTER = "peft"
HYDRA_FILTER = "hydra-lora"  # ``loradex publish`` tags Hydra repos with it
STATUS_OK = "ok"
# Not indexable at that sha (broken, or pickle weights only): not retried until it changes.
STATUS_SKIPPED = "skipped"
STATUS_ERROR = "error"  # the Hub refused a request: retried on the next sync
# Gated and this token has no access: not retried at that sha unless --retry-failed.
STATUS_GATED = "gated"
# Deleted (or made private) after the listing showed it: looked at again if listed again.
STATUS_GONE = "gone"


@dataclass(frozen=True)
class SyncOptions:
    """What to sync and how."""

    author: str | None = field(default=None, metadata={"help": "only this namespace"})
    search: str | None = field(default=None, metadata={"help": "substring of the repo id"})
    base_model: str | None = field(default=None, metadata={"help": "only adapters of this base"})
    limit: int | None = field(default=None, metadata={"help": "look at most at N repos"})
    jobs: int = field(default=8, metadata={"help": "repos fetched in parallel"})
    retry_failed: bool = field(
        default=False, metadata={"help": "refetch broken repos at an unchanged sha"}
    )
    prune: bool = field(
        default=False,
        metadata={"help": "remove modules whose repo the Hub no longer lists (deleted, private)"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    max_wait: float = field(
        default=900.0,
        metadata={"help": "longest rate-limit wait (s) before the sync stops; it resumes later"},
    )
    page_size: int = field(
        default=1000, metadata={"help": "repos per listing page (the Hub's own maximum)"}
    )


@dataclass
class SyncReport:
    """Counts of one sync run, and why each failure failed."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0  # pickle weights only
    gated: int = 0
    gone: int = 0  # deleted between the listing and the fetch
    removed: int | None = None  # None: not pruned
    failures: list[tuple[str, str]] = field(default_factory=list)
    # Repos not indexed but not failed either: (repo, status, reason).
    not_indexed: list[tuple[str, str, str]] = field(default_factory=list)
    # Repos indexed without their signature file, and why (a bad or oversized file).
    warnings: list[tuple[str, str]] = field(default_factory=list)
    rate_limited: int = 0  # 429 answers seen
    waited: float = 0.0  # seconds spent waiting them out
    lowest_jobs: int = 0  # fewest fetches in flight the rate limits brought the sync down to

    def summary(self) -> str:
        """The one summary line ``loradex sync`` prints."""
        line = (
            f"new {self.new}, updated {self.updated}, unchanged {self.unchanged}, "
            f"failed {self.failed}"
        )
        for name in ("skipped", "gated", "gone"):
            if getattr(self, name):
                line += f", {name} {getattr(self, name)}"
        return line if self.removed is None else f"{line}, removed {self.removed}"


def adapter_filters(base_model: str | None) -> list[str]:
    """Tag filters selecting PEFT adapter repos (of one base model when given)."""
    if base_model:
        return [f"base_model:adapter:{base_model}"]
    return [PEFT_FILTER]


def adapter_listings(base_model: str | None) -> list[list[str]]:
    """The listings (each a list of tag filters, ANDed) that together find every adapter repo.

    PEFT repos carry ``peft``; Hydra repos carry ``hydra-lora``. Both carry
    ``base_model:adapter:<base>`` (the Hub derives it for PEFT, ``loradex publish`` writes it
    into a Hydra card), so one listing covers a base model.
    """
    if base_model:
        return [adapter_filters(base_model)]
    return [[PEFT_FILTER], [HYDRA_FILTER]]


def _as_utc(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def module_from_hub(client: HubClient, info: ModelInfo) -> Module:
    """Fetch an adapter repo's metadata at ``info.sha`` and build its Module (no weights)."""
    repo_id, sha = info.id, info.sha
    if not sha:
        raise InvalidAdapter(f"{repo_id}: the Hub gave no commit sha")
    siblings = {s.rfilename: s for s in info.siblings or []}
    if siblings and any(s.size is None for s in siblings.values()):
        # Listings of the public Hub carry names only; sizes and LFS hashes need model_info.
        info = client.model_info(repo_id, revision=sha)
        siblings = {s.rfilename: s for s in info.siblings or []}
    hydra = ADAPTER_CONFIG not in siblings and HYDRA_CONFIG in siblings
    config_name, weights_name = (
        (HYDRA_CONFIG, HYDRA_WEIGHTS) if hydra else (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    )
    if weights_name not in siblings:
        if PICKLE_WEIGHTS in siblings:
            raise PickleOnly(
                f"{repo_id}: pickle weights only ({PICKLE_WEIGHTS}); loradex reads "
                f"{ADAPTER_WEIGHTS} (pickle can run code)"
            )
        raise InvalidAdapter(f"{repo_id}: no {weights_name}")
    if config_name not in siblings:
        raise InvalidAdapter(f"{repo_id}: no {config_name}")
    config = parse_json_object(
        client.fetch_text(repo_id, config_name, sha), f"{repo_id}/{config_name}"
    )
    weights = siblings[weights_name]
    header = client.fetch_safetensors_header(repo_id, weights_name, sha, weights.size)
    card_text = client.fetch_text(repo_id, CARD, sha) if CARD in siblings else None
    signature, signature_problem = _data_signature(client, repo_id, sha, siblings)
    files = [
        ModuleFile(
            path=s.rfilename,
            size=int(s.size or 0),
            sha256=s.lfs.sha256 if s.lfs else None,
            lfs=s.lfs is not None,
        )
        for s in siblings.values()
        if not s.rfilename.startswith(".")
    ]
    hub_fields: dict[str, Any] = {
        "revision": sha,
        "source": client.endpoint,
        "files": files,
        "author": info.author,
        "downloads": info.downloads or 0,
        "likes": info.likes or 0,
        "created_at": _as_utc(info.created_at),
        "updated_at": _as_utc(info.last_modified),
    }
    if hydra:
        module = hydra_module_from_metadata(repo_id, config, header, card_text, **hub_fields)
    else:
        module = module_from_metadata(
            repo_id, config, header, card_text, label=repo_id, **hub_fields
        )
    if signature is not None:
        module = replace(module, signatures=(signature,))
    if signature_problem is not None:
        raise _IndexedWithout(module, signature_problem)
    return module


class PickleOnly(InvalidAdapter):
    """A repo whose weights exist only as a pickle: not broken, not read (pickle runs code)."""


class _IndexedWithout(Exception):
    """A module to index without its signature file, and why (the sync reports it)."""

    def __init__(self, module: Module, reason: str) -> None:
        super().__init__(reason)
        self.module = module
        self.reason = reason


def _data_signature(client: HubClient, repo_id: str, sha: str, siblings: dict[str, Any],
                    ) -> tuple[Signature | None, str | None]:
    """The repo's data signature when it has a valid one, else (None, why not)."""
    sibling = siblings.get(SIGNATURE_FILE)
    if sibling is None:
        return None, None
    label = f"{repo_id}/{SIGNATURE_FILE}"
    if sibling.size is not None and sibling.size > MAX_SIGNATURE_BYTES:
        return None, f"{label}: {sibling.size} bytes, over the {MAX_SIGNATURE_BYTES} limit"
    try:
        data = client.fetch_bytes(repo_id, SIGNATURE_FILE, sha, MAX_SIGNATURE_BYTES)
        signature = read_signature_file(data, label=label)
    except InvalidAdapter as exc:  # InvalidSignature, or the file over the limit
        return None, str(exc).splitlines()[0]
    if signature.kind != DATA:
        return None, f"{label}: a {signature.kind!r} signature; a module carries a 'data' one"
    return signature, None


def sync_hub(client: HubClient, store: RegistryStore, options: SyncOptions,
             embedder: Embedder | None = None) -> SyncReport:
    """Sync the adapters ``options`` selects from ``client``'s Hub into ``store`` (with card
    signatures by ``embedder`` when given, and each repo's data signature file if it has one)."""
    if options.prune and (options.limit or options.base_model):
        raise ConfigError(
            "--prune needs the complete listing: it cannot be combined with --limit or "
            "--base-model"
        )
    report = SyncReport(lowest_jobs=options.jobs)
    client.check_reachable()
    gate = RateGate(options.jobs, options.max_wait)
    try:
        return _sync(client, store, options, embedder, report, gate)
    finally:
        report.rate_limited, report.waited = gate.hits, gate.waited
        report.lowest_jobs = gate.lowest


def list_adapters(client: HubClient, options: SyncOptions, gate: RateGate) -> dict[str, ModelInfo]:
    """Every adapter repo ``options`` selects, by id, each once, following the listing's
    ``Link`` pages (and waiting out rate limits through ``gate``)."""
    listed: dict[str, ModelInfo] = {}
    page_size = min(options.page_size, options.limit or options.page_size)
    for filters in adapter_listings(options.base_model):
        url: str | None = client.listing_url(
            filters=filters, author=options.author, search=options.search, page_size=page_size
        )
        seen: set[str] = set()
        while url is not None:
            if url in seen:  # a Hub sending the same page again would keep us here forever
                raise HubError(f"listing models: the Hub at {client.endpoint} repeats {url}")
            seen.add(url)
            page, url = gate.call(client.list_models_page, url)
            for info in page:
                listed.setdefault(info.id, info)
            if options.limit and len(listed) >= options.limit:
                return listed
    return listed


def _sync(client: HubClient, store: RegistryStore, options: SyncOptions,
          embedder: Embedder | None, report: SyncReport, gate: RateGate) -> SyncReport:
    from tqdm import tqdm

    states = {s.repo_id: s for s in store.sync_states(client.endpoint)}
    listed = list_adapters(client, options, gate)
    infos = list(listed.values())[: options.limit] if options.limit else list(listed.values())
    todo: list[tuple[ModelInfo, bool]] = []  # (info, already known)
    for info in infos:
        state = states.get(info.id)
        if (
            state is not None
            and state.last_sha == info.sha
            and (
                state.status == STATUS_OK
                or (state.status in (STATUS_SKIPPED, STATUS_GATED) and not options.retry_failed)
            )
        ):
            report.unchanged += 1
            continue
        todo.append((info, state is not None and state.status == STATUS_OK))

    writer = _BatchWriter(store, client.endpoint, report, embedder)
    with tqdm(
        total=len(todo), unit="repo", desc="sync", disable=not options.progress, leave=False
    ) as bar:
        try:
            for (info, known), outcome in _fetch_all(client, todo, options.jobs, gate):
                writer.add(info, known, outcome)
                bar.update(1)
        finally:
            writer.flush()  # also on Ctrl-C: what was fetched is kept, the rest resumes
    if options.prune:
        gone = [r for r in states if r not in listed and _in_scope(r, options)]
        report.removed = store.forget_repos(client.endpoint, gone)
    return report


def _in_scope(repo_id: str, options: SyncOptions) -> bool:
    """Whether a listing with ``options``' author and search would show ``repo_id``."""
    if options.author and repo_id.split("/", 1)[0].lower() != options.author.lower():
        return False
    return not options.search or options.search.lower() in repo_id.lower()


def failure_status(error: BaseException) -> tuple[str, str]:
    """(sync status, report count) of a repo whose fetch raised ``error``."""
    if isinstance(error, PickleOnly):
        return STATUS_SKIPPED, "skipped"
    if isinstance(error, InvalidAdapter):
        return STATUS_SKIPPED, "failed"
    if isinstance(error, GatedRepo):
        return STATUS_GATED, "gated"
    if isinstance(error, HubRepoNotFound):
        return STATUS_GONE, "gone"
    return STATUS_ERROR, "failed"


class _BatchWriter:
    """Writes fetched modules and their sync states in short batches (one transaction each).

    One transaction per repo would cap a sync at the database's commit rate; a batch of at
    most ``BATCH`` repos, or ``BATCH_SECONDS`` of work, keeps an interrupted sync cheap to
    resume while letting the writes keep up with parallel fetches.
    """

    BATCH = 200
    BATCH_SECONDS = 1.0

    def __init__(self, store: RegistryStore, endpoint: str, report: SyncReport,
                 embedder: Embedder | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.endpoint = endpoint
        self.report = report
        self.modules: list[Module] = []
        self.states: list[SyncState] = []
        # (repo, known, report bucket, reason): what the report counts once written
        self.pending: list[tuple[str, bool, str, str | None]] = []
        self.started = time.monotonic()

    def add(self, info: ModelInfo, known: bool, outcome: Module | BaseException) -> None:
        """Queue one repo's outcome; flush when the batch is full or old enough."""
        if isinstance(outcome, _IndexedWithout):
            self.report.warnings.append((info.id, outcome.reason))
            outcome = outcome.module
        if isinstance(outcome, Module):
            self.modules.append(outcome)
            self.states.append(SyncState(self.endpoint, info.id, info.sha, STATUS_OK, None))
            self.pending.append((info.id, known, STATUS_OK, None))
        else:
            status, bucket = failure_status(outcome)
            reason = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
            self.states.append(SyncState(self.endpoint, info.id, info.sha, status, reason))
            self.pending.append((info.id, known, bucket, reason))
        if len(self.states) >= self.BATCH or time.monotonic() - self.started >= self.BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the queued modules, then their sync states; count them in the report."""
        if self.modules:
            if self.embedder is not None:
                self.modules = sign_modules(self.modules, self.embedder)
            self.store.bulk_upsert(self.modules)
        if self.states:
            self.store.set_sync_states(self.states)
        for repo_id, known, bucket, reason in self.pending:
            if reason is not None and bucket == "failed":
                self.report.failed += 1
                self.report.failures.append((repo_id, reason))
            elif reason is not None:
                setattr(self.report, bucket, getattr(self.report, bucket) + 1)
                self.report.not_indexed.append((repo_id, bucket, reason))
            elif known:
                self.report.updated += 1
            else:
                self.report.new += 1
        self.modules, self.states, self.pending = [], [], []
        self.started = time.monotonic()


def _fetch_all(
    client: HubClient, todo: Iterable[tuple[ModelInfo, bool]], jobs: int, gate: RateGate
) -> Iterable[tuple[tuple[ModelInfo, bool], Module | BaseException]]:
    """Yield (item, Module or the error) with at most ``2 * jobs`` fetches queued and at most
    ``gate.limit`` of them sending requests.

    A Hub that cannot be reached, or whose rate limit cannot be waited out, stops the whole
    sync (every repo would fail the same way); any other error belongs to its repo. On Ctrl-C,
    queued fetches are cancelled and waiting ones woken.
    """
    pending: dict[Future[Module], tuple[ModelInfo, bool]] = {}
    items = iter(todo)
    executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sync")
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * jobs:
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                pending[executor.submit(gate.call, module_from_hub, client, item[0])] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                error = future.exception()
                if isinstance(error, _IndexedWithout):
                    yield item, error
                    continue
                if isinstance(error, (HubUnavailable, HubRateLimited)) or (
                    error is not None and not isinstance(error, Exception)
                ):
                    raise error  # Hub down for everyone, or Ctrl-C / exit: stop the whole sync
                if error is not None and not isinstance(error, LoradexError):
                    # Unexpected: recorded against the repo (status error, retried next time).
                    error = LoradexError(f"{item[0].id}: {type(error).__name__}: {error}")
                yield item, (error if error is not None else future.result())
    finally:
        gate.close()
        executor.shutdown(wait=True, cancel_futures=True)
