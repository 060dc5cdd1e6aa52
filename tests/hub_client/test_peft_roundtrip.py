"""A published adapter, pulled back, loads with ``peft.PeftModel.from_pretrained`` unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub_client import HubClient, publish_folder, pull_module
from registry.db import make_engine
from registry.store import RegistryStore
from tests.support.hub import HubServer, make_adapter


@pytest.mark.slow
@pytest.mark.parametrize("hub", ["sqlite"], indirect=True)
def test_published_adapter_loads_with_peft(hub: HubServer, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = make_adapter(tmp_path / "tiny", rank=4, hidden=16, layers=2, seed=5)
    store = RegistryStore(make_engine(hub.db_url))
    published = publish_folder(
        HubClient(hub.url, hub.alice), store, folder, "alice/tiny-llama-lora"
    )
    pulled = pull_module(
        HubClient(hub.url, cache_dir=tmp_path / "cache"),
        store,
        "alice/tiny-llama-lora",
        published.revision,
        target=tmp_path / "pulled",
    )

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = PeftModel.from_pretrained(LlamaForCausalLM(config), str(pulled.folder))
    expected = load_file(str(folder / "adapter_model.safetensors"))
    state = model.state_dict()
    for name, array in expected.items():
        loaded = state[name.replace(".weight", ".default.weight")]
        assert torch.equal(loaded, torch.from_numpy(array))
    out = model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 32) and torch.isfinite(out).all()
