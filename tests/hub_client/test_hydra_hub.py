"""Hydra modules on a real ``loradex serve``: commit-time index, publish, sync, pull (torch-free).

Hydra folders are written with ``tests.support.adapters.write_hydra_module`` (safetensors.numpy), so
this file never imports torch; the format itself is tested in tests/composer/hydra.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_client import HubClient, SyncOptions, publish_folder, pull_module, sync_hub
from loradex.errors import InvalidAdapter, ModuleNotFound
from registry.db import make_engine
from registry.schema import ensure_schema
from registry.store import RegistryStore
from tests.support.adapters import write_hydra_module
from tests.support.hub import HubServer, loradex, make_adapter

LINEAGE = [
    {"repo_id": "alice/parent-a", "revision": "a" * 40, "weight": 0.6, "role": "parent"},
    {"repo_id": "alice/parent-b", "weight": 0.4},
]


@pytest.fixture
def store(hub: HubServer) -> Iterator[RegistryStore]:
    engine = make_engine(hub.db_url)
    yield RegistryStore(engine)
    engine.dispose()


def test_server_indexes_an_uploaded_hydra_repo_and_refuses_a_broken_one(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = write_hydra_module(tmp_path / "raw", num_heads=3, rank=4, seed=1)
    api = hub.api(hub.alice)
    api.create_repo("alice/raw-hydra")
    sha = api.upload_folder(repo_id="alice/raw-hydra", folder_path=folder).oid
    module = store.get_module("alice/raw-hydra", source="local")
    assert (module.kind, module.num_heads, module.rank, module.revision) == ("hydra", 3, 4, sha)
    assert module.peft_type == "HYDRA"
    assert {f.path for f in module.files} == {"hydra_config.json", "hydra_model.safetensors"}

    # a head count the tensors do not have: stored (this is a Hub) but dropped from the index
    config = json.loads((folder / "hydra_config.json").read_text())
    config["num_heads"] = 5
    api.upload_file(
        path_or_fileobj=json.dumps(config).encode(),
        path_in_repo="hydra_config.json",
        repo_id="alice/raw-hydra",
    )
    with pytest.raises(ModuleNotFound):
        store.get_module("alice/raw-hydra", source="local")
    assert "alice/raw-hydra" in {m.id for m in hub.api().list_models(author="alice")}


def test_publish_sync_and_pull_a_hydra_module(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = write_hydra_module(tmp_path / "composed", num_heads=2, rank=4, seed=2)
    (folder / "loradex_provenance.json").write_text(json.dumps({"lineage": LINEAGE}))
    client = HubClient(hub.url, hub.alice)
    result = publish_folder(client, store, folder, "alice/hydra-composed", license_id="mit")

    info = hub.api().model_info("alice/hydra-composed")
    assert info.sha == result.revision
    card = info.card_data
    assert card["library_name"] == "loradex" and card["base_model"]
    assert {"loradex", "hydra-lora"} <= set(card["tags"])
    assert card["loradex"]["kind"] == "hydra" and card["loradex"]["num_heads"] == 2
    base = card["base_model"]
    assert f"base_model:adapter:{base}" in info.tags and "peft" not in info.tags
    published = store.get_module("alice/hydra-composed", source=hub.url)
    assert (published.kind, published.num_heads) == ("hydra", 2)
    assert [(e.parent_repo_id, e.weight) for e in published.lineage] == [
        ("alice/parent-a", 0.6),
        ("alice/parent-b", 0.4),
    ]
    assert store.get_module("alice/hydra-composed", source="local").kind == "hydra"

    # sync: a fresh registry finds the Hydra repo beside a PEFT one, by tag and by base model
    make_adapter(tmp_path / "peft", seed=5)
    hub.api(hub.bob).create_repo("bob/plain-lora")
    hub.api(hub.bob).upload_folder(repo_id="bob/plain-lora", folder_path=tmp_path / "peft")
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ensure_schema(fresh_url)
    fresh = RegistryStore(make_engine(fresh_url))
    report = sync_hub(HubClient(hub.url), fresh, SyncOptions(progress=False))
    assert report.failed == 0, report.failures
    synced = fresh.get_module("alice/hydra-composed", source=hub.url)
    assert (synced.kind, synced.num_heads, synced.revision) == ("hydra", 2, result.revision)
    assert synced.num_parameters == published.num_parameters
    assert fresh.get_module("bob/plain-lora", source=hub.url).kind == "lora"
    by_base = sync_hub(
        HubClient(hub.url), fresh, SyncOptions(base_model=base, progress=False, retry_failed=True)
    )
    assert by_base.failed == 0 and by_base.new == 0  # listed under the base, already current

    # pull: the Hydra files, sha256-checked against the registry
    pulled = pull_module(
        HubClient(hub.url, cache_dir=tmp_path / "cache"),
        store,
        "alice/hydra-composed",
        target=tmp_path / "out",
    )
    names = sorted(p.name for p in pulled.files)
    assert names == ["README.md", "hydra_config.json", "hydra_model.safetensors"]
    for name in ("hydra_config.json", "hydra_model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (folder / name).read_bytes()
    cached = HubClient(hub.url, cache_dir=tmp_path / "cache").download(
        "alice/hydra-composed", "hydra_model.safetensors", revision=result.revision
    )
    data = cached.resolve().read_bytes()
    assert hashlib.sha256(data).hexdigest() == next(
        f.sha256 for f in published.files if f.path == "hydra_model.safetensors"
    )
    cached.resolve().write_bytes(data[:-1] + b"\x01")
    with pytest.raises(InvalidAdapter, match="sha256"):
        pull_module(
            HubClient(hub.url, cache_dir=tmp_path / "cache"), store, "alice/hydra-composed"
        )


def test_publish_refuses_a_broken_hydra_folder_before_touching_the_hub(
    hub: HubServer, store: RegistryStore, tmp_path: Path
) -> None:
    folder = write_hydra_module(
        tmp_path / "bad", num_heads=3, config_overrides={"num_heads": 4}, seed=3
    )
    with pytest.raises(InvalidAdapter, match=r"num_heads=4"):
        publish_folder(HubClient(hub.url, hub.alice), store, folder, "alice/bad-hydra")
    assert "alice/bad-hydra" not in {m.id for m in hub.api().list_models(author="alice")}


def test_hydra_cli_publish_pull_search(hub: HubServer, tmp_path: Path) -> None:
    folder = write_hydra_module(tmp_path / "cli-hydra", num_heads=3, seed=4)
    home = str(tmp_path / "home")
    common = ("--db", hub.db_url, "--home", home)
    published = loradex(*common, "publish", str(folder), "--repo", "alice/cli-hydra",
                        "--endpoint", hub.url, "--token", hub.alice)
    assert published.stdout.startswith("published alice/cli-hydra@")
    pulled = loradex(*common, "pull", "alice/cli-hydra", "--endpoint", hub.url,
                     "--to", str(tmp_path / "got"))
    assert (tmp_path / "got" / "hydra_model.safetensors").read_bytes() == (
        folder / "hydra_model.safetensors"
    ).read_bytes()
    assert Path(pulled.stdout.strip()) == tmp_path / "got"
    table = loradex(*common, "search", "--kind", "hydra", "--author", "alice").stdout
    assert "alice/cli-hydra" in table and "4x3" in table
    lora_only = loradex(*common, "search", "--kind", "lora", "--author", "alice").stdout
    assert "hydra" not in lora_only


def test_hub_client_stays_torch_free_with_hydra() -> None:
    code = (
        "import sys, hub_client.sync, hub_client.publish, hub_client.pull, "
        "registry.server.indexing, registry.hydra; "
        "assert 'torch' not in sys.modules and 'composer' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
