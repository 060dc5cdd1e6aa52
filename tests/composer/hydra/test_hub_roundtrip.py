"""A Hydra module saved by ``save_hydra`` goes through a real ``loradex serve`` and comes back.

publish (validated, card completed) -> the server's commit-time index -> sync into a fresh
registry -> pull -> ``load_hydra`` gives the same tensors, and the runtime the same outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from composer.hydra.format import load_hydra, save_hydra
from composer.hydra.runtime import attach_hydra
from hub_client import HubClient, SyncOptions, publish_folder, pull_module, sync_hub
from registry.db import make_engine
from registry.schema import ensure_schema
from registry.store import RegistryStore
from tests.support.hub import HubServer

from .conftest import random_hydra


@pytest.fixture
def store(hub: HubServer) -> Iterator[RegistryStore]:
    engine = make_engine(hub.db_url)
    yield RegistryStore(engine)
    engine.dispose()


def test_saved_hydra_round_trips_through_the_hub(
    hub: HubServer,
    store: RegistryStore,
    tmp_path: Path,
    tiny_llama,
) -> None:
    module = random_hydra(tiny_llama, num_heads=3)
    folder = save_hydra(module, tmp_path / "saved")
    client = HubClient(hub.url, hub.alice, cache_dir=tmp_path / "cache")
    result = publish_folder(client, store, folder, "alice/saved-hydra")
    assert store.get_module("alice/saved-hydra", source="local").revision == result.revision

    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    ensure_schema(fresh_url)
    fresh = RegistryStore(make_engine(fresh_url))
    report = sync_hub(HubClient(hub.url), fresh, SyncOptions(progress=False))
    assert report.failed == 0 and report.new >= 1, report.failures
    synced = fresh.get_module("alice/saved-hydra", source=hub.url)
    assert (synced.kind, synced.num_heads, synced.rank) == ("hydra", 3, 4)
    fresh.engine.dispose()

    pulled = pull_module(client, store, "alice/saved-hydra", target=tmp_path / "pulled")
    loaded = load_hydra(pulled.folder)
    assert loaded.config.num_heads == 3
    for name, layer in module.layers.items():
        got = loaded.layers[name]
        assert torch.equal(got.lora_A, layer.lora_A)
        assert torch.equal(got.lora_B, layer.lora_B)
        assert torch.equal(got.router_weight, layer.router_weight)

    ids = torch.tensor([[3, 5, 7, 11, 13]])
    with torch.no_grad():
        handle = attach_hydra(tiny_llama, module)
        expected = tiny_llama(input_ids=ids).logits
        handle.detach()
        handle = attach_hydra(tiny_llama, loaded)
        got_logits = tiny_llama(input_ids=ids).logits
        handle.detach()
    assert torch.equal(got_logits, expected)
