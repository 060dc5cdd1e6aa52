"""sync, pull and publish against a real ``loradex serve`` (SQLite and PostgreSQL backends).

The registry the client writes to is the server's own database: synced modules carry the
endpoint URL as their source, the server's commit-time index carries ``local``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub_client import HubClient, SyncOptions, publish_folder, pull_module, sync_hub
from loradex.errors import HubUnavailable, InvalidAdapter, ModuleNotFound
from loradex.files import current_umask
from registry.db import make_engine
from registry.server.launch import free_port
from registry.store import RegistryStore
from tests.support.adapters import write_pickle_only_adapter
from tests.support.hub import HubServer, loradex, make_adapter


@pytest.fixture
def store(hub: HubServer) -> Iterator[RegistryStore]:
    engine = make_engine(hub.db_url)
    yield RegistryStore(engine)
    engine.dispose()


def upload_adapter(hub: HubServer, repo_id: str, folder: Path, token: str | None = None) -> str:
    api = hub.api(token or (hub.bob if repo_id.startswith("bob/") else hub.alice))
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(repo_id=repo_id, folder_path=folder).oid)


def test_publish_completes_the_card_uploads_once_and_indexes(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = make_adapter(tmp_path / "composed", card="", seed=3)
    provenance = {
        "method": "lorahub",
        "lineage": [
            {"repo_id": "alice/parent-a", "revision": "a" * 40, "weight": 0.7, "role": "parent"},
            {"repo_id": "alice/parent-b", "weight": 0.3},
        ],
    }
    (folder / "loradex_provenance.json").write_text(json.dumps(provenance))
    # what a trainer leaves beside an adapter, and a link out of the folder: never uploaded
    (folder / "optimizer.pt").write_bytes(b"\x80\x04pickle")
    (folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (tmp_path / "id_rsa").write_text("secret")
    (folder / "notes.txt").symlink_to(tmp_path / "id_rsa")
    before = sorted(p.name for p in folder.iterdir())
    client = HubClient(hub.url, hub.alice)
    result = publish_folder(client, store, folder, "alice/composed", license_id="mit")
    assert result.skipped == ("notes.txt", "optimizer.pt", "training_args.bin")

    assert sorted(p.name for p in folder.iterdir()) == before  # the user's folder is untouched
    info = hub.api().model_info("alice/composed")
    assert info.sha == result.revision
    assert len(hub.api().list_repo_commits("alice/composed")) == 2  # creation + one upload
    assert {s.rfilename for s in info.siblings} == {
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "loradex_provenance.json",
    }
    card = info.card_data
    assert card["base_model"] == "org/tiny-llama" and card["library_name"] == "peft"
    assert card["license"] == "mit" and {"lora", "peft"} <= set(card["tags"])
    assert card["loradex"]["lineage"][0]["repo_id"] == "alice/parent-a"
    assert "base_model:adapter:org/tiny-llama" in info.tags

    module = store.get_module("alice/composed", source=hub.url)
    assert module.revision == result.revision
    assert [(e.parent_repo_id, e.weight) for e in module.lineage] == [
        ("alice/parent-a", 0.7),
        ("alice/parent-b", 0.3),
    ]
    # the server indexed the same revision into its own source at commit time
    assert store.get_module("alice/composed", source="local").revision == result.revision
    # publishing again with unchanged content still yields a valid head
    again = publish_folder(client, store, folder, "alice/composed", license_id="mit")
    assert hub.api().model_info("alice/composed").sha == again.revision


def test_publish_refuses_a_broken_folder_before_touching_the_hub(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = make_adapter(tmp_path / "bad")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated tensors
    with pytest.raises(InvalidAdapter, match=r"adapter_model\.safetensors"):
        publish_folder(HubClient(hub.url, hub.alice), store, folder, "alice/never-created")
    assert not hub.api().repo_exists("alice/never-created")
    result = loradex(
        "--db",
        hub.db_url,
        "publish",
        str(folder),
        "--repo",
        "alice/never-created",
        "--endpoint",
        hub.url,
        "--token",
        hub.alice,
        check=False,
    )
    assert result.returncode == 4 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")


def test_sync_is_incremental_and_records_failures(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    for i in range(5):
        upload_adapter(hub, f"bob/sync-{i}", make_adapter(tmp_path / f"a{i}", seed=i, rank=2 + i))
    upload_adapter(hub, "bob/sync-broken", make_adapter(tmp_path / "broken", config_rank=16))
    upload_adapter(
        hub,
        "bob/sync-other-base",
        make_adapter(tmp_path / "other", base_model="org/other-base", seed=9),
    )
    hub.api(hub.bob).create_repo("bob/not-an-adapter")
    client = HubClient(hub.url)
    options = SyncOptions(author="bob", search="sync-", progress=False, jobs=4)

    first = sync_hub(client, store, options)
    assert (first.new, first.updated, first.unchanged, first.failed) == (6, 0, 0, 1)
    assert first.failures[0][0] == "bob/sync-broken" and "16" in first.failures[0][1]
    module = store.get_module("bob/sync-3", source=hub.url)
    assert module.rank == 5 and module.revision == hub.api().model_info("bob/sync-3").sha
    weights = (tmp_path / "a3" / "adapter_model.safetensors").read_bytes()
    assert {f.path: f.sha256 for f in module.files}["adapter_model.safetensors"] == (
        hashlib.sha256(weights).hexdigest()
    )
    assert module.description and "seed 3" in module.description

    second = sync_hub(client, store, options)
    assert (second.new, second.updated, second.unchanged, second.failed) == (0, 0, 7, 0)

    hub.api(hub.bob).upload_file(
        path_or_fileobj=b"---\nbase_model: org/tiny-llama\nlibrary_name: "
        b"peft\ntags: [lora, changed]\n---\nChanged.\n",
        path_in_repo="README.md",
        repo_id="bob/sync-0",
    )
    third = sync_hub(client, store, options)
    assert (third.new, third.updated, third.unchanged, third.failed) == (0, 1, 6, 0)
    assert "changed" in store.get_module("bob/sync-0", source=hub.url).tags

    only_other = sync_hub(client, store, SyncOptions(base_model="org/other-base", progress=False))
    assert only_other.unchanged == 1 and only_other.new == 0

    states = {s.repo_id: s for s in store.sync_states(hub.url)}
    assert states["bob/sync-broken"].status == "skipped" and states["bob/sync-broken"].error


def test_sync_prune_removes_modules_whose_repo_is_gone(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    for i in range(3):
        upload_adapter(hub, f"bob/prune-{i}", make_adapter(tmp_path / f"p{i}", seed=30 + i))
    upload_adapter(hub, "alice/prune-kept", make_adapter(tmp_path / "kept", seed=40))
    client = HubClient(hub.url)
    everything = SyncOptions(search="prune-", progress=False)
    assert sync_hub(client, store, everything).new == 4

    hub.api(hub.bob).delete_repo("bob/prune-1")
    hub.api(hub.alice).delete_repo("alice/prune-kept")
    plain = sync_hub(client, store, everything)
    assert plain.removed is None and "removed" not in plain.summary()
    store.get_module("bob/prune-1", source=hub.url)  # without --prune nothing is removed

    # Scoped to bob: alice's deleted repo is outside the listing and stays.
    pruned = sync_hub(client, store, SyncOptions(author="bob", search="prune-", prune=True,
                                                 progress=False))
    assert (pruned.unchanged, pruned.removed) == (2, 1)
    assert pruned.summary().endswith(", removed 1")
    with pytest.raises(ModuleNotFound):
        store.get_module("bob/prune-1", source=hub.url)
    assert "bob/prune-1" not in {s.repo_id for s in store.sync_states(hub.url)}
    store.get_module("alice/prune-kept", source=hub.url)
    store.get_module("bob/prune-0", source=hub.url)
    # The server's own index of its repos (source "local") is not the sync's to prune.
    assert store.get_module("bob/prune-0", source="local")

    result = loradex("--db", hub.db_url, "sync", "--endpoint", hub.url, "--search", "prune-",
                     "--prune", "--quiet")
    assert result.stdout.strip().splitlines()[-1].endswith("removed 1")
    with pytest.raises(ModuleNotFound):
        store.get_module("alice/prune-kept", source=hub.url)
    refused = loradex("--db", hub.db_url, "sync", "--endpoint", hub.url, "--prune", "--limit",
                      "5", "--quiet", check=False)
    assert refused.returncode == 11 and "--prune needs the complete listing" in refused.stderr


class InterruptingClient(HubClient):
    """The real client, plus a Ctrl-C after a number of adapter fetches (the user's finger)."""

    def __init__(self, *args: Any, interrupt_after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.interrupt_after = interrupt_after

    def fetch_safetensors_header(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        return super().fetch_safetensors_header(*args, **kwargs)


def test_interrupted_sync_resumes(hub: HubServer, store: RegistryStore, tmp_path: Path) -> None:
    for i in range(6):
        upload_adapter(hub, f"team/resume-{i}", make_adapter(tmp_path / f"r{i}", seed=10 + i))
    options = SyncOptions(author="team", search="resume-", progress=False, jobs=1)
    with pytest.raises(KeyboardInterrupt):
        sync_hub(InterruptingClient(hub.url, interrupt_after=3), store, options)
    done = [s.repo_id for s in store.sync_states(hub.url) if s.repo_id.startswith("team/resume-")]
    assert 1 <= len(done) <= 3
    for repo_id in done:
        store.get_module(repo_id, source=hub.url)
    resumed = sync_hub(HubClient(hub.url), store, options)
    assert resumed.unchanged == len(done) and resumed.new == 6 - len(done) and resumed.failed == 0


def test_sync_cli_prints_a_summary_and_fails_clearly_when_the_hub_is_down(hub: HubServer) -> None:
    upload_adapter(hub, "team/cli-sync", make_adapter(Path(hub.data_dir.parent) / "cli-sync"))
    ok = loradex(
        "--db",
        hub.db_url,
        "sync",
        "--endpoint",
        hub.url,
        "--author",
        "team",
        "--search",
        "cli-sync",
        "--quiet",
    )
    assert ok.stdout.strip().splitlines()[-1] == "new 1, updated 0, unchanged 0, failed 0"
    dead = f"http://127.0.0.1:{free_port()}"
    down = loradex("--db", hub.db_url, "sync", "--endpoint", dead, "--quiet", check=False)
    assert down.returncode == 7
    assert down.stderr.count("\n") == 1 and f"cannot reach the Hub at {dead}" in down.stderr


def test_pull_verifies_hashes_places_files_and_works_offline(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = make_adapter(tmp_path / "pullme", seed=21)
    first = upload_adapter(hub, "alice/pullme", folder)
    client = HubClient(hub.url, cache_dir=tmp_path / "cache")
    result = pull_module(client, store, "alice/pullme", target=tmp_path / "out")
    assert result.revision == first and not result.from_cache
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (tmp_path / "out" / name).read_bytes() == (folder / name).read_bytes()
        # placed through a temporary file, yet readable like any file the user writes
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o666 & ~current_umask()

    # a later commit does not hide the old revision
    hub.api(hub.alice).upload_file(
        path_or_fileobj=b"---\nlicense: mit\n---\nv2\n",
        path_in_repo="README.md",
        repo_id="alice/pullme",
    )
    old = pull_module(client, store, "alice/pullme", first)
    assert (
        old.revision == first
        and (old.folder / "README.md").read_bytes() == (folder / "README.md").read_bytes()
    )

    # offline: the same cache behind an endpoint that does not answer
    dead = HubClient(f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path / "cache")
    offline = pull_module(dead, store, "alice/pullme", first)
    assert offline.from_cache and offline.revision == first
    with pytest.raises(HubUnavailable):
        pull_module(dead, store, "alice/never-pulled")

    # a cached file that no longer matches its sha256 is refused
    cached = old.folder / "adapter_model.safetensors"  # the snapshot in the cache
    blob = cached.resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(InvalidAdapter, match="sha256"):
        pull_module(client, store, "alice/pullme", first)


def test_pull_refuses_pickle_only_repos_and_unknown_ids(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = write_pickle_only_adapter(tmp_path / "pickled")
    upload_adapter(hub, "alice/pickled", folder)
    client = HubClient(hub.url, cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidAdapter, match="pickle"):
        pull_module(client, store, "alice/pickled")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.bin"))
    with pytest.raises(ModuleNotFound):
        pull_module(client, store, "alice/no-such-adapter")
    cli = loradex(
        "--db",
        hub.db_url,
        "--home",
        str(tmp_path / "home"),
        "pull",
        "alice/pickled",
        "--endpoint",
        hub.url,
        check=False,
    )
    assert cli.returncode == 4 and "pickle" in cli.stderr and cli.stderr.count("\n") == 1


def test_pull_refuses_a_malformed_adapter_the_hub_serves_and_places_nothing(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    """The hashes match what the Hub announces; the content is still judged before placing."""
    broken = make_adapter(tmp_path / "rank-lie", config_rank=8)  # the tensors are rank 4
    upload_adapter(hub, "alice/rank-lie", broken)
    garbled = make_adapter(tmp_path / "garbled")
    weights = garbled / "adapter_model.safetensors"
    weights.write_bytes(b"\x10" + b"\x00" * 7 + b"{not json at all" + weights.read_bytes()[24:])
    upload_adapter(hub, "alice/garbled", garbled)
    client = HubClient(hub.url, cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidAdapter, match=r"alice/rank-lie@[0-9a-f]{12}: .*rank"):
        pull_module(client, store, "alice/rank-lie", target=tmp_path / "out")
    with pytest.raises(InvalidAdapter, match=r"alice/garbled@.*not valid JSON"):
        pull_module(client, store, "alice/garbled", target=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cli = loradex(
        "--db", hub.db_url, "--home", str(tmp_path / "home"),
        "pull", "alice/rank-lie", "--endpoint", hub.url, "--to", str(tmp_path / "cli-out"),
        check=False,
    )
    assert cli.returncode == 4 and "rank" in cli.stderr and cli.stderr.count("\n") == 1
    assert not (tmp_path / "cli-out").exists()


def test_pull_and_publish_cli(hub: HubServer, tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "cli-pub", seed=33)
    published = loradex(
        "--db",
        hub.db_url,
        "publish",
        str(folder),
        "--repo",
        "alice/cli-pub",
        "--endpoint",
        hub.url,
        "--token",
        hub.alice,
    )
    line = published.stdout.strip()
    assert line.startswith("published alice/cli-pub@") and line.endswith(f"{hub.url}/alice/cli-pub")
    pulled = loradex(
        "--db",
        hub.db_url,
        "--home",
        str(tmp_path / "home"),
        "pull",
        "alice/cli-pub",
        "--endpoint",
        hub.url,
        "--to",
        str(tmp_path / "got"),
    )
    assert Path(pulled.stdout.strip()) == tmp_path / "got"
    offline = loradex(
        "--db",
        hub.db_url,
        "--home",
        str(tmp_path / "home"),
        "pull",
        "alice/cli-pub",
        "--endpoint",
        hub.url,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert "offline: served from the cache" in offline.stderr
    assert Path(offline.stdout.strip()).name == line.split("@")[1].split()[0]  # snapshot folder
    assert (tmp_path / "got" / "adapter_model.safetensors").read_bytes() == (
        folder / "adapter_model.safetensors"
    ).read_bytes()


def test_listing_without_file_sizes_falls_back_to_model_info(
    hub: HubServer, tmp_path: Path
) -> None:
    """huggingface.co lists siblings by name only; the sync then asks model_info for sizes."""
    from huggingface_hub.hf_api import ModelInfo

    from hub_client.sync import module_from_hub

    folder = make_adapter(tmp_path / "sizes", seed=44)
    sha = upload_adapter(hub, "team/no-sizes", folder)
    raw = httpx.get(
        f"{hub.url}/api/models", params={"author": "team", "search": "no-sizes", "full": "true"}
    ).json()[0]
    raw["siblings"] = [{"rfilename": s["rfilename"]} for s in raw["siblings"]]
    module = module_from_hub(HubClient(hub.url), ModelInfo(**raw))
    assert module.revision == sha
    sizes = {f.path: f.size for f in module.files}
    assert (
        sizes["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").stat().st_size
    )


def test_signatures_round_trip_through_publish_sync_and_pull(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    """A data signature is published with its module, read back by sync (a bad one is a
    warning, the repo still indexed), travels with pull, and card signatures are made for
    every synced module by the embedder given."""
    from registry.embedders import load_embedder
    from registry.signatures import (
        SIGNATURE_FILE,
        InvalidSignature,
        data_signature,
        read_signature_file,
        write_signature_file,
    )

    embedder = load_embedder()
    folder = make_adapter(tmp_path / "signed", seed=1)
    signature = data_signature(embedder, ["Rewrite in the past tense: I walk.", "He runs."])
    write_signature_file(folder, signature)
    client = HubClient(hub.url, hub.alice)
    published = publish_folder(client, store, folder, "alice/sig-good", embedder=embedder)
    assert sorted(s.kind for s in store.signatures("alice/sig-good", source=hub.url)) == [
        "card", "data"]
    assert published.module.repo_id == "alice/sig-good"
    # The server's own commit-time index reads the data signature too.
    hosted = store.signatures("alice/sig-good", source="local")
    assert [(s.kind, s.vectors) for s in hosted] == [("data", signature.vectors)]

    bad = make_adapter(tmp_path / "bad", seed=2)
    (bad / SIGNATURE_FILE).write_bytes(b"\x08" + b"\0" * 7 + b"{}")
    with pytest.raises(InvalidSignature):  # a publish is refused before touching the Hub
        publish_folder(client, store, bad, "alice/sig-bad", embedder=embedder)
    upload_adapter(hub, "alice/sig-bad", bad)  # another tool could still push one

    report = sync_hub(HubClient(hub.url), store,
                      SyncOptions(author="alice", search="sig-", progress=False), embedder)
    assert report.failed == 0 and report.new + report.updated == 2
    assert [r for r, _ in report.warnings] == ["alice/sig-bad"]
    good = {(s.kind, s.embedder): s for s in store.signatures("alice/sig-good", source=hub.url)}
    assert good[("data", embedder.name)].vectors == signature.vectors
    assert ("card", embedder.name) in good
    assert [s.kind for s in store.signatures("alice/sig-bad", source=hub.url)] == ["card"]

    pulled = pull_module(HubClient(hub.url), store, "alice/sig-good", None)
    assert read_signature_file(pulled.folder / SIGNATURE_FILE).vectors == signature.vectors
