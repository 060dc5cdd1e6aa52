"""Index hosted adapters into the registry tables of the server's own database at commit time.

A repo holding ``adapter_config.json`` + ``adapter_model.safetensors`` (a PEFT LoRA), or
``hydra_config.json`` + ``hydra_model.safetensors`` (a Hydra module), becomes a registry module
(source = the server's public URL, or ``local``) as soon as the commit lands, so
``loradex --db SAME search`` sees uploads at once. The adapter is judged by the registry's own
``module_from_metadata`` (``hydra_module_from_metadata`` for Hydra); a broken adapter stays
stored (this is a Hub) but is not indexed, and the reason is logged. A deleted repo, or one
whose head is no longer a valid adapter, leaves the registry.

Indexing never fails a commit, and never loses one either. Before a commit's transaction the
indexer leaves a marker file in ``DATA/index-pending/``; only an indexing that left the registry
matching the repo's head removes it. A failure (the database down or locked, a bug) is logged,
with its traceback when it is not one of loradex's typed errors, and the marker stays: every
server process retries the pending repos every ``RETRY_INTERVAL`` seconds, and ``loradex serve``
reports and retries them at start (a server killed between a commit and its indexing included).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from loradex.errors import (
    DatabaseConflict,
    DatabaseLocked,
    InvalidAdapter,
    LoradexError,
    ModuleNotFound,
)
from registry.adapter_files import read_json_object
from registry.adapter_metadata import module_from_metadata
from registry.cards import CARD
from registry.entities import Module, ModuleFile
from registry.hub_models import SqlHubRepo
from registry.hydra import CONFIG_NAME as HYDRA_CONFIG
from registry.hydra import WEIGHTS_NAME as HYDRA_WEIGHTS
from registry.hydra import hydra_module_from_metadata
from registry.lora_tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from registry.safetensors_header import read_safetensors_header
from registry.server.blobstore import BlobStore
from registry.server.errors import HubHTTPError
from registry.server.queries import resolve_revision, tree_files
from registry.server.repos import DEFAULT_BRANCH
from registry.server.timestamps import utcnow
from registry.server.types import HostedCommit, ServerConfig
from registry.store import RegistryStore

log = logging.getLogger("loradex.server")

PENDING_DIR = "index-pending"
RETRY_INTERVAL = 5.0  # seconds between two rounds of re-indexing in each server process
# A locked database (or another process's upsert of the same module) is retried this many
# times before the commit returns; then the repo is left pending.
LOCKED_ATTEMPTS = 4


def hosted_module(commit: HostedCommit, source: str) -> Module | None:
    """The registry Module of a hosted commit, or None when the repo holds no adapter."""
    files = {f.path: f for f in commit.files}
    if ADAPTER_CONFIG in files and ADAPTER_WEIGHTS in files:
        config_name, weights_name = ADAPTER_CONFIG, ADAPTER_WEIGHTS
    elif HYDRA_CONFIG in files and HYDRA_WEIGHTS in files and ADAPTER_CONFIG not in files:
        config_name, weights_name = HYDRA_CONFIG, HYDRA_WEIGHTS
    else:
        return None
    label = f"{commit.repo_id}@{commit.sha[:12]}"
    config_path = commit.blobs.path_for(files[config_name].sha256)
    config = read_json_object(config_path, f"{label}/{config_name}")
    header = read_safetensors_header(
        commit.blobs.path_for(files[weights_name].sha256), name=f"{label}/{weights_name}"
    )
    card = files.get(CARD)
    card_text = (
        commit.blobs.path_for(card.sha256).read_text(encoding="utf-8", errors="replace")
        if card is not None
        else None
    )
    module_files = [
        ModuleFile(f.path, f.size, f.sha256, f.is_lfs)
        for f in commit.files
        if f.path != ".gitattributes"
    ]
    created = commit.created_at.replace(tzinfo=UTC)
    if config_name == HYDRA_CONFIG:
        return hydra_module_from_metadata(
            commit.repo_id, config, header, card_text, revision=commit.sha, source=source,
            files=module_files, created_at=created, updated_at=created,
        )
    return module_from_metadata(
        commit.repo_id, config, header, card_text, revision=commit.sha, source=source,
        files=module_files, created_at=created, updated_at=created, label=label,
    )


class IndexQueue:
    """Repos whose registry entry may lag their head: one empty marker file per commit in
    flight or failed, ``<namespace>--<name>.<uuid>.pending`` (repo names never hold ``--``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, repo_id: str) -> Path:
        """A new marker for ``repo_id``."""
        marker = self.folder / f"{repo_id.replace('/', '--')}.{uuid.uuid4().hex}.pending"
        marker.touch(exist_ok=False)
        return marker

    @staticmethod
    def remove(markers: list[Path]) -> None:
        """Drop markers (another process may have dropped them already)."""
        for marker in markers:
            marker.unlink(missing_ok=True)

    def pending(self) -> dict[str, list[Path]]:
        """The markers left, by repo id."""
        found: dict[str, list[Path]] = {}
        for marker in sorted(self.folder.glob("*.pending")):
            repo_id = marker.name.split(".", 1)[0].replace("--", "/", 1)
            found.setdefault(repo_id, []).append(marker)
        return found

    @contextlib.contextmanager
    def round_lock(self) -> Iterator[bool]:
        """One re-indexing round at a time across the server's processes; yields False when
        another process holds it (that round covers this one's work)."""
        fd = os.open(self.folder / ".round.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock


class RegistryIndexer:
    """Hosted adapters into the registry of the server's database, with nothing left behind:
    see the module docstring for the pending markers and their retry."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.store = RegistryStore(engine)
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.source = config.source
        self.blobs = BlobStore(config.blobs_dir)
        self.queue = IndexQueue(config.data_dir / PENDING_DIR)

    def expect(self, repo_id: str) -> object:
        """A marker for a commit about to happen (see :class:`~registry.server.types.Indexer`)."""
        return self.queue.add(repo_id)

    def forget(self, token: object) -> None:
        """The commit announced did not happen."""
        if isinstance(token, Path):
            self.queue.remove([token])

    def __call__(self, commit: HostedCommit, token: object = None) -> None:
        """Index a new head now; on failure log it and leave the repo pending (never raises)."""
        markers = [token] if isinstance(token, Path) else []
        if self._index_logged(commit, "will retry in the background"):
            self.queue.remove(markers)
        elif not markers:
            self.queue.add(commit.repo_id)  # a deletion, announced by no expect()

    def pending(self) -> list[str]:
        """Repo ids waiting to be re-indexed."""
        return list(self.queue.pending())

    def retry_pending(self) -> tuple[int, int]:
        """Index the current head of every pending repo; returns (done, still pending).

        A repo stays pending when indexing fails again or its head moved meanwhile."""
        with self.queue.round_lock() as mine:
            if not mine:
                return 0, len(self.queue.pending())
            done = left = 0
            for repo_id, markers in self.queue.pending().items():
                try:
                    head = self.head_commit(repo_id)
                except LoradexError as exc:
                    log.warning("re-indexing %s postponed: %s", repo_id, exc)
                    left += 1
                    continue
                if self._index_logged(head, "still pending"):
                    self.queue.remove(markers)
                    done += 1
                else:
                    left += 1
            return done, left

    def head_commit(self, repo_id: str) -> HostedCommit:
        """What the registry should hold for ``repo_id``: its default branch's head, or an
        empty commit for a repo that no longer exists."""
        with self.sessions.begin() as session:
            found = _head(session, repo_id)
            if found is None:
                return HostedCommit(repo_id, "", utcnow(), (), self.blobs)
            sha, created_at, commit_id = found
            files = tuple(tree_files(session, commit_id))
        return HostedCommit(repo_id, sha, created_at, files, self.blobs)

    def _index_logged(self, commit: HostedCommit, then: str) -> bool:
        """Index ``commit``; True when the registry then matches the repo's head. A failure is
        logged in one line when it is a fault that passes (database down or locked, disk
        full), with its traceback otherwise."""
        label = f"{commit.repo_id}@{commit.sha[:12] or 'deleted'}"
        try:
            self._index_with_retries(commit)
            current = self.head_commit(commit.repo_id)
        except LoradexError as exc:
            log.warning("not indexed yet: %s: %s; %s", label, exc, then)
            return False
        except Exception:
            log.exception("indexing %s failed; %s", label, then)
            return False
        if current.sha != commit.sha:  # another commit landed meanwhile: its head is due
            log.info("indexed %s, but the head moved to %s; %s", label, current.sha[:12], then)
            return False
        return True

    def _index_with_retries(self, commit: HostedCommit) -> None:
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                index_commit(self.store, commit, self.source)
                return
            except (DatabaseLocked, DatabaseConflict):  # busy, or another process's upsert
                if attempt == LOCKED_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)


def _head(session: Session, repo_id: str) -> tuple[str, datetime, int] | None:
    """(sha, created_at, id) of the default branch's head; None when the repo is gone."""
    repo = session.scalar(select(SqlHubRepo).where(SqlHubRepo.full_id == repo_id))
    if repo is None:
        return None
    try:
        commit = resolve_revision(session, repo, DEFAULT_BRANCH)
    except HubHTTPError:  # deleted between the two reads (SQLite reads are not one snapshot)
        return None
    return commit.sha, commit.created_at, commit.id


def index_commit(store: RegistryStore, commit: HostedCommit, source: str) -> None:
    """Make the registry entry of ``commit.repo_id`` match ``commit``: upsert its module, or
    drop a stale one when the repo is gone, holds no adapter or a broken one (logged)."""
    try:
        module = hosted_module(commit, source)
    except InvalidAdapter as exc:
        log.warning("stored but not indexed: %s", exc)
        module = None
    if module is None:  # deleted, no longer an adapter, or broken: drop a stale entry
        with contextlib.suppress(ModuleNotFound):
            store.delete_module(commit.repo_id, source=source)
        return
    # bulk_upsert, not upsert_module: the latter reads the module back in a second
    # transaction, which another process's upsert of the same repo can replace in between.
    store.bulk_upsert([_with_data_signature(module, commit)])


def make_registry_indexer(engine: Engine, config: ServerConfig) -> RegistryIndexer:
    """An indexer writing hosted adapters into the registry of ``engine``."""
    return RegistryIndexer(engine, config)


class RetryLoop:
    """A daemon thread re-indexing the pending repos every ``interval`` seconds while a
    server process runs (started and stopped by the app's lifespan)."""

    def __init__(self, indexer: RegistryIndexer, interval: float = RETRY_INTERVAL) -> None:
        self.indexer = indexer
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loradex-reindex", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for its round to finish (bounded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        reported = 0  # pending count last logged: a long outage logs a line when it changes
        while not self._stop.wait(self.interval):
            if not self.indexer.queue.pending():
                continue
            try:
                done, left = self.indexer.retry_pending()
            except Exception:  # never let the loop die: the next round tries again
                log.exception("re-indexing round failed")
                continue
            if done or left != reported:
                log.warning("re-indexed %d repo(s); %d still pending re-indexing", done, left)
                reported = left


def _with_data_signature(module: Module, commit: HostedCommit) -> Module:
    """The module with the data signature its commit carries (a bad file is logged and left
    out: the repo is still indexed). Card signatures need the embedder, which the server
    does not load: ``loradex db sign`` makes them."""
    from dataclasses import replace

    from registry.signatures import DATA, SIGNATURE_FILE, InvalidSignature, read_signature_file

    entry = next((f for f in commit.files if f.path == SIGNATURE_FILE), None)
    if entry is None:
        return module
    label = f"{commit.repo_id}@{commit.sha[:12]}/{SIGNATURE_FILE}"
    try:
        signature = read_signature_file(commit.blobs.path_for(entry.sha256), label=label)
    except InvalidSignature as exc:
        log.warning("indexed without its signature: %s", exc)
        return module
    if signature.kind != DATA:
        log.warning("indexed without its signature: %s is a %r signature", label, signature.kind)
        return module
    return replace(module, signatures=(signature,))
