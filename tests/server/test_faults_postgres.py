"""PostgreSQL stops and starts again under 20 clients committing through huggingface_hub.

A private cluster of this test's own (``tests.support.pg_cluster``) is stopped for a few seconds
and started again while ``loradex serve --workers 2`` serves 20 real clients: every commit the
server acknowledged is there afterwards with every sha256 intact; every refused one was refused
with a 503 (or a 409) and lands when retried; the server recovers by itself, answers no other
5xx, and the registry catches up with every repo's head once the database is back.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, set_client_factory
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils._http import default_client_factory

from loradex.errors import ModuleNotFound
from registry.db import make_engine
from registry.server.indexing import PENDING_DIR
from registry.store import RegistryStore
from tests.support.faults import start_fault_hub
from tests.support.hub import HubServer, make_adapter
from tests.support.pg_cluster import PgCluster, missing_reason, private_cluster

pytestmark = pytest.mark.slow

CLIENTS = 20
REPOS = 4  # five clients race on each repo's branch
OUTAGE_SECONDS = 3.0
DEADLINE_SECONDS = 150  # the whole exchange; a hang fails the test instead of blocking CI


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(f"cannot start a private PostgreSQL cluster: {reason}")
    with private_cluster() as pg:
        yield pg


@pytest.fixture
def statuses() -> Iterator[Counter[tuple[str, int]]]:
    """Every answer huggingface_hub receives in this test, retried ones included, counted by
    (method, status)."""
    seen: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def record(response: object) -> None:
        with lock:
            seen[(response.request.method, response.status_code)] += 1  # type: ignore[attr-defined]

    def factory() -> object:
        client = default_client_factory()
        client.event_hooks = {**client.event_hooks, "response": [record]}
        return client

    set_client_factory(factory)  # type: ignore[arg-type]
    try:
        yield seen
    finally:
        set_client_factory(default_client_factory)


@dataclass
class Ledger:
    """What the clients saw: acknowledged commits (repo, sha, {path: sha256}), refusals by
    status, and anything else (which fails the test)."""

    acknowledged: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)
    landed_after_refusal: int = 0
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _commit_until_it_lands(
    api: HfApi, repo: str, files: dict[str, bytes], ledger: Ledger, deadline: float
) -> None:
    refused = False
    while time.monotonic() < deadline:
        ops = [CommitOperationAdd(path, data) for path, data in files.items()]
        try:
            info = api.create_commit(repo, ops, commit_message=f"{len(files)} file(s)")
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else -1
            with ledger.lock:
                ledger.refused[status] += 1
                if status not in (409, 503):
                    ledger.unexpected.append(f"{repo}: {status} {exc}")
                    return
            refused = True
            time.sleep(0.5)
            continue
        except Exception as exc:  # a reset or a timeout: the server must never do that
            with ledger.lock:
                ledger.unexpected.append(f"{repo}: {type(exc).__name__}: {exc}")
            return
        digests = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
        with ledger.lock:
            ledger.acknowledged.append((repo, info.oid, digests))
            ledger.landed_after_refusal += refused
        return
    with ledger.lock:
        ledger.unexpected.append(f"{repo}: still refused at the deadline")


def _client(
    hub: HubServer, index: int, adapter: Path, stop: threading.Event, ledger: Ledger,
    deadline: float,
) -> None:
    api = hub.api(hub.alice)
    repo = f"alice/pg-restart-{index % REPOS}"
    first = {f"c{index}/{p.name}": p.read_bytes() for p in sorted(adapter.iterdir())}
    if index < REPOS:  # the repo's adapter at its root: every commit re-indexes the repo
        first.update({p.name: p.read_bytes() for p in sorted(adapter.iterdir())})
    _commit_until_it_lands(api, repo, first, ledger, deadline)
    round_ = 0
    while not stop.is_set() and time.monotonic() < deadline:
        round_ += 1
        weights = os.urandom(20_000 + 997 * index + round_)
        files = {
            f"c{index}/r{round_}.safetensors": weights,  # LFS: batch, PUT, verify, commit
            f"c{index}/r{round_}.txt": f"client {index} round {round_}\n".encode(),  # base64
        }
        _commit_until_it_lands(api, repo, files, ledger, deadline)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_postgres_restart_under_twenty_committing_clients(
    cluster: PgCluster, statuses: Counter[tuple[str, int]], tmp_path: Path
) -> None:
    for repo in range(REPOS):
        make_adapter(tmp_path / f"adapter{repo}", seed=repo)
    hub = start_fault_hub(tmp_path, cluster.url, workers=2)
    try:
        api = hub.api(hub.alice)
        for repo in range(REPOS):
            api.create_repo(f"alice/pg-restart-{repo}")
        ledger, stop = Ledger(), threading.Event()
        deadline = time.monotonic() + DEADLINE_SECONDS
        threads = [
            threading.Thread(
                target=_client,
                args=(hub, i, tmp_path / f"adapter{i % REPOS}", stop, ledger, deadline),
                daemon=True,
            )
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        try:
            _wait_for(lambda: len(ledger.acknowledged) >= CLIENTS, 60, "the first commits")
            before_outage = len(ledger.acknowledged)
            cluster.stop("fast")  # every connection is cut; new ones are refused
            time.sleep(OUTAGE_SECONDS)
            cluster.start()
            _wait_for(
                lambda: len(ledger.acknowledged) >= before_outage + 2 * CLIENTS,
                90,
                "commits after the restart",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=max(deadline - time.monotonic(), 1))
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert ledger.unexpected == []

        # The outage was seen, and answered only with 503 (+ Retry-After) or 409.
        server_errors = {status for (_, status) in statuses if status >= 500}
        client_errors = {status for (_, status) in statuses if 400 <= status < 500}
        assert server_errors == {503}, statuses
        assert client_errors <= {409}, statuses
        assert set(ledger.refused) <= {409, 503}  # and each of them landed when retried
        assert hub.internal_errors() == []

        # Every acknowledged commit is there, byte for byte, at its own revision and at the head.
        heads = {f"alice/pg-restart-{r}": api.model_info(f"alice/pg-restart-{r}").sha
                 for r in range(REPOS)}
        head_files = {repo: set(api.list_repo_files(repo)) for repo in heads}
        with httpx.Client(base_url=hub.url, timeout=30) as http:
            for repo_id, sha, digests in ledger.acknowledged:
                assert set(digests) <= head_files[repo_id], f"{repo_id}@{sha} lost files"
                for path, digest in digests.items():
                    got = http.get(f"/{repo_id}/resolve/{sha}/{path}")
                    assert got.status_code == 200, (repo_id, sha, path, got.status_code)
                    assert hashlib.sha256(got.content).hexdigest() == digest, (repo_id, sha, path)

        # The registry catches up with every head (re-indexing of what failed meanwhile).
        engine = make_engine(cluster.url)
        store = RegistryStore(engine)

        def indexed() -> bool:
            try:
                return all(store.get_module(repo, source="local").revision == sha
                           for repo, sha in heads.items())
            except ModuleNotFound:
                return False

        try:
            _wait_for(indexed, 30, "the registry to match every head")
        finally:
            engine.dispose()
        _wait_for(lambda: not list((hub.data_dir / PENDING_DIR).glob("*.pending")), 30,
                  "no repo left pending re-indexing")
        print(
            f"\nacknowledged {len(ledger.acknowledged)} commits ({before_outage} before the "
            f"outage); refused {dict(ledger.refused)}, each landed on retry "
            f"({ledger.landed_after_refusal} commits needed a retry); answers seen by the "
            f"clients: {dict(sorted(statuses.items()))}"
        )
    finally:
        hub.launched.stop(timeout=15)
