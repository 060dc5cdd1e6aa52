"""``loradex sync`` against what a real Hub does: rate limits, Link pages that move while they are
read, gated repos, pickle-only repos, repos deleted under the sync, and a sync killed mid-run.

Every fault is real HTTP: ``loradex serve`` behaves as huggingface.co does (``--rate-limit``,
``PUT /api/models/{id}/settings`` for gating) and the client is the real huggingface_hub, on
SQLite and on PostgreSQL. Repos are uploaded through the file's ``hub`` server; the rate-limited
server is a second ``loradex serve`` on the same database and blob store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import parse_ratelimit_headers

from hub_client import HubClient, SyncOptions, sync_hub
from loradex.errors import HubRateLimited
from registry.db import make_engine
from registry.entities import SyncState
from registry.server.launch import LaunchedServer, start_server
from registry.store import RegistryStore
from tests.support.adapters import write_pickle_only_adapter
from tests.support.hub import HubServer, loradex, make_adapter

QUOTA, WINDOW = 8, 2  # the rate-limited server: 8 requests of a kind per 2 s window


@pytest.fixture
def store(hub: HubServer) -> Iterator[RegistryStore]:
    engine = make_engine(hub.db_url)
    yield RegistryStore(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def limited(hub: HubServer) -> Iterator[LaunchedServer]:
    """``loradex serve --rate-limit 8/2`` (one worker) on the ``hub`` server's database."""
    log = hub.data_dir.parent / "limited.log"
    server = start_server(hub.db_url, hub.data_dir, workers=1, rate_limit=f"{QUOTA}/{WINDOW}",
                          log_level="warning", log_path=log)
    try:
        yield server
    finally:
        server.stop(timeout=15)
    lines = log.read_text(errors="replace").splitlines()
    assert not [ln for ln in lines if "Traceback" in ln or "internal error" in ln], "\n".join(lines)


def upload(hub: HubServer, repo_id: str, folder: Path) -> str:
    api = hub.api(hub.bob if repo_id.startswith("bob/") else hub.alice)
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(repo_id=repo_id, folder_path=folder).oid)


def state_of(store: RegistryStore, endpoint: str, repo_id: str) -> SyncState:
    return {s.repo_id: s for s in store.sync_states(endpoint)}[repo_id]


def module_rows(hub: HubServer, source: str, like: str) -> list[str]:
    """repo ids of the registry's module rows from ``source`` (one row each, or a duplicate)."""
    engine = make_engine(hub.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT repo_id FROM modules WHERE source = :s AND repo_id LIKE :p"),
                {"s": source, "p": like},
            ).scalars().all()
    finally:
        engine.dispose()
    return sorted(rows)


def test_rate_limited_server_answers_429_with_the_hubs_headers(limited: LaunchedServer) -> None:
    with httpx.Client(base_url=limited.url, trust_env=False) as http:
        answers = [http.get("/api/models", params={"limit": 1}) for _ in range(3 * QUOTA)]
    assert {r.status_code for r in answers} == {200, 429}
    ok = parse_ratelimit_headers(next(r for r in answers if r.status_code == 200).headers)
    assert ok is not None and ok.resource_type == "api" and 0 <= ok.remaining < QUOTA
    refused = next(r for r in answers if r.status_code == 429)
    info = parse_ratelimit_headers(refused.headers)  # huggingface_hub's own parser
    assert info is not None and (info.remaining, info.limit, info.window_seconds) == (
        0, QUOTA, WINDOW
    )
    assert 1 <= info.reset_in_seconds <= WINDOW
    assert refused.headers["retry-after"] == str(info.reset_in_seconds)
    assert "rate limit" in refused.headers["x-error-message"]
    assert "rate limit" in refused.json()["error"]
    # The real client waits as told on its listing and gets its answer.
    from huggingface_hub import HfApi

    assert list(HfApi(endpoint=limited.url, token=False).list_models(search="no-such-repo")) == []


def test_sync_waits_out_rate_limits_with_fewer_fetches_in_flight(
    hub: HubServer, limited: LaunchedServer, store: RegistryStore, tmp_path: Path
) -> None:
    shas = {
        f"team/rl-{i}": upload(hub, f"team/rl-{i}", make_adapter(tmp_path / f"r{i}", seed=50 + i))
        for i in range(8)
    }
    options = SyncOptions(search="rl-", jobs=4, page_size=4, progress=False)
    report = sync_hub(HubClient(limited.url), store, options)
    print(f"\nrate-limited sync: {report.summary()}; {report.rate_limited} x 429, waited "
          f"{report.waited:.1f} s, down to {report.lowest_jobs} of {options.jobs} fetches")
    assert (report.new, report.failed) == (8, 0)
    assert report.rate_limited >= 1 and report.waited > 0
    assert report.lowest_jobs < options.jobs  # it lowered its concurrency
    for repo_id, sha in shas.items():
        assert store.get_module(repo_id, source=limited.url).revision == sha
    again = sync_hub(HubClient(limited.url), store, options)
    assert (again.unchanged, again.new, again.failed) == (8, 0, 0)


class _AddingClient(HubClient):
    """Creates repos and commits to one already listed, after the first listing page."""

    def __init__(self, url: str, during_listing: object) -> None:
        super().__init__(url)
        self.pages: list[str] = []
        self.during_listing = during_listing

    def list_models_page(self, url: str) -> tuple[list[ModelInfo], str | None]:
        page = super().list_models_page(url)
        self.pages.append(url)
        if len(self.pages) == 1:
            self.during_listing()  # type: ignore[operator]
        return page


def test_listing_follows_link_pages_and_repos_added_meanwhile_are_neither_missed_nor_doubled(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    for i in range(9):
        upload(hub, f"team/page-{i}", make_adapter(tmp_path / f"p{i}", seed=60 + i))
    first_listed = []

    def meanwhile() -> None:
        for name in ("page-00", "page-5b", "page-99"):  # before, among and after the others
            upload(hub, f"team/{name}", make_adapter(tmp_path / name, seed=70))
        # the newest repo, on the first page (already read): a commit moves its head
        hub.api(hub.alice).upload_file(path_or_fileobj=b"notes\n", path_in_repo="notes.txt",
                                       repo_id="team/page-8")
        first_listed.append(True)

    client = _AddingClient(hub.url, meanwhile)
    options = SyncOptions(search="page-", page_size=4, progress=False)
    report = sync_hub(client, store, options)
    peft_pages = [url for url in client.pages if "filter=peft" in url]
    assert first_listed and len(peft_pages) == 3  # 9 repos, 4 a page, every Link followed
    assert all("cursor=" in url for url in peft_pages[1:])
    assert (report.new, report.failed) == (9, 0)  # exactly the repos there when it started
    assert module_rows(hub, hub.url, "team/page-%") == [f"team/page-{i}" for i in range(9)]

    later = sync_hub(HubClient(hub.url), store, options)
    assert (later.new, later.updated, later.unchanged, later.failed) == (3, 1, 8, 0)
    assert len(module_rows(hub, hub.url, "team/page-%")) == 12
    head = hub.api().model_info("team/page-8").sha
    assert store.get_module("team/page-8", source=hub.url).revision == head


def test_gated_repo_answers_401_or_403_and_sync_records_it_as_gated(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    repo = "bob/gated-lora"
    upload(hub, repo, make_adapter(tmp_path / "gated", seed=80))
    owner = hub.api(hub.bob)
    owner.update_repo_settings(repo, gated="manual")  # what huggingface_hub sends
    assert hub.api().model_info(repo).gated == "manual"  # info stays public, as on the Hub
    assert [m.gated for m in hub.api().list_models(search="gated-lora")] == ["manual"]

    def download(token: str | bool) -> Path:
        return Path(hf_hub_download(repo, "adapter_config.json", endpoint=hub.url, token=token,
                                    cache_dir=tmp_path / f"cache-{token!s:.8}"))

    with pytest.raises(GatedRepoError) as anonymous:
        download(False)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as reader:
        download(hub.reader)  # carol's token: valid, no access
    assert reader.value.response.status_code == 403
    assert json.loads(download(hub.bob).read_text())["r"] == 4  # the owner reads it

    with pytest.raises(HfHubHTTPError) as stranger:
        hub.api(hub.alice).update_repo_settings(repo, gated=False)
    assert stranger.value.response.status_code == 403
    with httpx.Client(base_url=hub.url, trust_env=False) as http:
        auth = {"authorization": f"Bearer {hub.bob}"}
        url = f"/api/models/{repo}/settings"
        assert http.put(url, json={"gated": False}).status_code == 401
        assert http.put(url, json={"gated": "sometimes"}, headers=auth).status_code == 400
        assert http.put(url, json={"private": True}, headers=auth).status_code == 400
        missing = http.put("/api/models/bob/no-such/settings", json={"gated": False}, headers=auth)
        assert (missing.status_code, missing.headers["x-error-code"]) == (404, "RepoNotFound")

    options = SyncOptions(search="gated-lora", progress=False)
    report = sync_hub(HubClient(hub.url), store, options)
    assert (report.new, report.failed, report.gated) == (0, 0, 1)
    assert report.summary().endswith(", gated 1")
    state = state_of(store, hub.url, repo)
    assert state.status == "gated" and "gated repo" in (state.error or "")
    assert "401" in (state.error or "")
    assert sync_hub(HubClient(hub.url), store, options).unchanged == 1  # not refetched

    with_access = sync_hub(HubClient(hub.url, hub.bob), store,
                           SyncOptions(search="gated-lora", retry_failed=True, progress=False))
    assert (with_access.new, with_access.gated) == (1, 0)
    assert state_of(store, hub.url, repo).status == "ok"

    owner.update_repo_settings(repo, gated=False)
    assert json.loads(download(False).read_text())["r"] == 4


def test_pickle_only_repo_is_skipped_for_that_reason(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = write_pickle_only_adapter(
        tmp_path / "pickled", card="---\nlibrary_name: peft\nbase_model: org/tiny-llama\n---\n")
    upload(hub, "bob/pickle-only", folder)
    result = loradex("--db", hub.db_url, "sync", "--endpoint", hub.url, "--search", "pickle-only",
                     "--quiet")
    assert result.stdout.strip().splitlines()[-1] == (
        "new 0, updated 0, unchanged 0, failed 0, skipped 1"
    )
    assert "  skipped bob/pickle-only: " in result.stderr and "pickle" in result.stderr
    state = state_of(store, hub.url, "bob/pickle-only")
    assert state.status == "skipped" and "adapter_model.bin" in (state.error or "")
    again = sync_hub(HubClient(hub.url), store, SyncOptions(search="pickle-only", progress=False))
    assert (again.unchanged, again.skipped, again.failed) == (1, 0, 0)


class _DeletingClient(HubClient):
    """Deletes a repo on the Hub right after the listing that shows it."""

    def __init__(self, url: str, hub: HubServer, repo_id: str) -> None:
        super().__init__(url)
        self.hub, self.repo_id = hub, repo_id

    def list_models_page(self, url: str) -> tuple[list[ModelInfo], str | None]:
        page = super().list_models_page(url)
        if any(info.id == self.repo_id for info in page[0]):
            self.hub.api(self.hub.bob).delete_repo(self.repo_id)
        return page


def test_repo_deleted_between_listing_and_fetch_is_recorded_gone(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    upload(hub, "bob/gone-0", make_adapter(tmp_path / "g0", seed=90))
    upload(hub, "bob/gone-1", make_adapter(tmp_path / "g1", seed=91))
    options = SyncOptions(search="gone-", progress=False)
    report = sync_hub(_DeletingClient(hub.url, hub, "bob/gone-1"), store, options)
    assert (report.new, report.failed, report.gone) == (1, 0, 1)
    state = state_of(store, hub.url, "bob/gone-1")
    assert state.status == "gone" and "Repository Not Found" in (state.error or "")

    after = sync_hub(HubClient(hub.url), store, options)  # no longer listed: nothing to do
    assert (after.new, after.unchanged, after.failed, after.gone) == (0, 1, 0, 0)
    upload(hub, "bob/gone-1", make_adapter(tmp_path / "g1b", seed=92))  # created afresh
    back = sync_hub(HubClient(hub.url), store, options)
    assert (back.new, back.unchanged, back.failed) == (1, 1, 0)
    assert state_of(store, hub.url, "bob/gone-1").status == "ok"


def test_sync_killed_mid_run_resumes_with_nothing_lost_or_duplicated(
    hub: HubServer, limited: LaunchedServer, store: RegistryStore, tmp_path: Path
) -> None:
    repos = [f"team/kill-{i}" for i in range(8)]
    for i, repo in enumerate(repos):
        upload(hub, repo, make_adapter(tmp_path / f"k{i}", seed=100 + i))
    # The rate limit paces the sync (24 file reads at 8 per 2 s: three windows at least), so it
    # is still running when its first batch (written after 1 s) is in the registry.
    process = subprocess.Popen(
        [sys.executable, "-m", "loradex", "--db", hub.db_url, "sync", "--endpoint", limited.url,
         "--search", "kill-", "--jobs", "2", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 60
        while not [s for s in store.sync_states(limited.url) if s.repo_id in repos]:
            assert process.poll() is None, "the sync ended before it could be killed"
            assert time.monotonic() < deadline, "the sync wrote nothing in 60 s"
            time.sleep(0.05)
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = [s.repo_id for s in store.sync_states(limited.url) if s.repo_id in repos]
    assert 1 <= len(done) < len(repos)
    for repo in done:  # a recorded state means its module was written first
        store.get_module(repo, source=limited.url)

    resumed = sync_hub(HubClient(limited.url), store,
                       SyncOptions(search="kill-", jobs=2, progress=False))
    assert resumed.failed == 0 and resumed.unchanged == len(done)
    assert resumed.new + resumed.updated == len(repos) - len(done)
    assert module_rows(hub, limited.url, "team/kill-%") == sorted(repos)
    states = [s for s in store.sync_states(limited.url) if s.repo_id in repos]
    assert sorted(s.repo_id for s in states) == sorted(repos)
    assert {s.status for s in states} == {"ok"}


def test_a_wait_longer_than_max_wait_stops_the_sync_in_one_line(
    hub: HubServer, limited: LaunchedServer, store: RegistryStore
) -> None:
    def spend_the_quota() -> None:
        """Use up this client's api quota at the start of a window (windows start at multiples
        of WINDOW seconds since the epoch), so the sync's listing, next, is refused."""
        time.sleep(WINDOW - time.time() % WINDOW)
        with httpx.Client(base_url=limited.url, trust_env=False) as http:
            codes = [http.get("/api/models", params={"limit": 1}).status_code
                     for _ in range(QUOTA + 1)]
        assert codes[-1] == 429, codes

    options = SyncOptions(max_wait=0, progress=False)
    for _attempt in range(3):  # a machine so slow that the window ends first tries again
        spend_the_quota()
        try:
            sync_hub(HubClient(limited.url), store, options)
        except HubRateLimited as exc:
            stop = exc
            break
    else:
        raise AssertionError("the sync never met the rate limit")
    assert "longer than the 0 s this sync may wait" in str(stop)
    assert "\n" not in str(stop) and stop.exit_code == 8


def test_a_bad_rate_limit_option_is_one_line(tmp_path: Path) -> None:
    result = loradex("--db", f"sqlite:///{tmp_path / 'x.db'}", "serve", "--rate-limit", "many",
                     check=False)
    assert result.returncode == 11 and result.stderr.count("\n") == 1
    assert "invalid --rate-limit 'many'" in result.stderr


def test_a_503_with_retry_after_is_waited_out_like_a_rate_limit() -> None:
    """A Hub that answers 503 with Retry-After (loradex serve while its database restarts)
    asks the sync to wait, as a 429 does; a 503 without it is the Hub failing."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from hub_client.client import HubClient
    from loradex.errors import HubRateLimited, HubUnavailable

    client = HubClient("http://127.0.0.1:9")
    request = httpx2.Request("GET", "http://127.0.0.1:9/api/models")
    for headers, error in (({"Retry-After": "3"}, HubRateLimited), ({}, HubUnavailable)):
        response = httpx2.Response(503, headers=headers, request=request)
        with pytest.raises(error) as info, client.errors("listing models"):
            raise HfHubHTTPError("Service Unavailable", response=response)
        if error is HubRateLimited:
            assert info.value.retry_after == 3.0 and "temporarily unavailable" in str(info.value)
