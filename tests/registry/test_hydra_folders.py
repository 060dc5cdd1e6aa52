"""``inspect_adapter_folder`` on Hydra folders (written torch-free by tests.support.adapters)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loradex.errors import InvalidAdapter
from registry.adapter_files import inspect_adapter_folder
from registry.entities import SearchQuery
from registry.store import RegistryStore
from tests.support.adapters import write_hydra_module, write_lora_adapter


def test_hydra_folder_is_indexed_as_kind_hydra(tmp_path: Path, db_url: str) -> None:
    folder = write_hydra_module(
        tmp_path / "mix", num_heads=3, rank=4, hidden=32, layers=2,
        front_matter={"license": "mit", "tags": ["mixture"],
                      "loradex": {"lineage": [{"repo_id": "alice/a", "weight": 0.5}]}},
    )
    module = inspect_adapter_folder(folder)
    assert (module.kind, module.num_heads, module.rank) == ("hydra", 3, 4)
    assert module.peft_type == "HYDRA"
    # per layer and target: A [4, 32], 3 heads [32, 4], router [3, 32] + bias [3]
    assert module.num_parameters == 2 * 2 * (4 * 32 + 3 * 32 * 4 + 3 * 32 + 3)
    assert set(module.tags) >= {"hydra-lora", "mixture"} and module.license == "mit"
    assert [e.parent_repo_id for e in module.lineage] == ["alice/a"]

    store = RegistryStore.from_url(db_url)
    try:
        store.upsert_module(module)
        store.upsert_module(inspect_adapter_folder(write_lora_adapter(tmp_path / "plain")))
        hydras = store.search(SearchQuery(kind="hydra"))
        loras = store.search(SearchQuery(kind="lora"))
    finally:
        store.engine.dispose()
    assert [m.repo_id for m in hydras] == ["local/mix"]
    assert [m.repo_id for m in loras] == ["local/plain"]


def test_bad_hydra_folders_are_refused_naming_the_file(tmp_path: Path) -> None:
    wrong_heads = write_hydra_module(tmp_path / "heads", num_heads=2,
                                     config_overrides={"num_heads": 3})
    with pytest.raises(InvalidAdapter, match=r"hydra_model\.safetensors.*num_heads=3"):
        inspect_adapter_folder(wrong_heads)

    truncated = write_hydra_module(tmp_path / "cut")
    weights = truncated / "hydra_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(InvalidAdapter, match="truncated"):
        inspect_adapter_folder(truncated)

    bad_json = write_hydra_module(tmp_path / "json")
    (bad_json / "hydra_config.json").write_text("{not json")
    with pytest.raises(InvalidAdapter, match=r"hydra_config\.json: not valid JSON"):
        inspect_adapter_folder(bad_json)

    no_weights = write_hydra_module(tmp_path / "none")
    (no_weights / "hydra_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match=r"no hydra_model\.safetensors"):
        inspect_adapter_folder(no_weights)

    other_format = write_hydra_module(tmp_path / "fmt", config_overrides={"format": "peft"})
    with pytest.raises(InvalidAdapter, match="'format' must be 'loradex-hydra'"):
        inspect_adapter_folder(other_format)
