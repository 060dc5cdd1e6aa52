"""Indexing Hydra folders in the registry: from the header only, searchable by kind."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from composer.hydra.format import save_hydra
from loradex.errors import InvalidAdapter
from registry.entities import SearchQuery
from registry.hydra import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    hydra_module_entity,
    hydra_module_from_metadata,
    index_hydra_folder,
)
from registry.safetensors_header import read_safetensors_header
from registry.store import RegistryStore

from .conftest import random_hydra

CARD = """---
license: apache-2.0
tags: [composition]
loradex:
  lineage:
    - {repo_id: alice/past-tense, weight: 0.7, role: candidate}
---
A Hydra module for tests.
"""


@pytest.fixture
def hydra_folder(tmp_path: Path, tiny_llama) -> Path:
    module = random_hydra(tiny_llama, num_heads=3)
    module.config = replace(module.config, task={"name": "mixture", "datasets": ["a.jsonl"]})
    return save_hydra(module, tmp_path / "my-hydra", card=CARD)


def test_entity_from_folder(hydra_folder: Path) -> None:
    module = hydra_module_entity(hydra_folder)
    assert module.repo_id == "local/my-hydra"
    assert module.kind == "hydra"
    assert module.num_heads == 3
    assert module.rank == 4
    assert module.target_modules == ("q_proj", "v_proj")
    assert module.dtype == "float32"
    assert "hydra-lora" in module.tags and "composition" in module.tags
    assert module.task_name == "mixture"
    assert module.license == "apache-2.0"
    assert [e.parent_repo_id for e in module.lineage] == ["alice/past-tense"]
    paths = {f.path: f for f in module.files}
    assert set(paths) == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    assert all(f.sha256 and len(f.sha256) == 64 for f in module.files)


def test_entity_from_hub_metadata(hydra_folder: Path) -> None:
    config = json.loads((hydra_folder / CONFIG_NAME).read_text())
    header = read_safetensors_header(hydra_folder / WEIGHTS_NAME)
    module = hydra_module_from_metadata("bob/hydra", config, header, CARD, revision="abc")
    assert (module.kind, module.num_heads, module.revision) == ("hydra", 3, "abc")
    config["num_heads"] = 2
    with pytest.raises(InvalidAdapter, match="bob/hydra"):
        hydra_module_from_metadata("bob/hydra", config, header, CARD)


def test_indexed_and_searchable(hydra_folder: Path, db_url: str) -> None:
    store = RegistryStore.from_url(db_url)
    store.upsert_module(hydra_module_entity(hydra_folder, repo_id="bob/hydra"))
    found = store.search(SearchQuery(kind="hydra"))
    assert [(m.repo_id, m.num_heads) for m in found] == [("bob/hydra", 3)]
    assert store.search(SearchQuery(kind="lora")) == []


def test_index_hydra_folder(hydra_folder: Path, db_url: str) -> None:
    assert index_hydra_folder(db_url, hydra_folder) == "local/my-hydra"
    stored = RegistryStore.from_url(db_url).get_module("local/my-hydra")
    assert (stored.kind, stored.num_heads, stored.rank) == ("hydra", 3, 4)


def test_indexing_does_not_import_torch(hydra_folder: Path) -> None:
    code = (
        "import sys; from registry.hydra import hydra_module_entity; "
        f"m = hydra_module_entity({str(hydra_folder)!r}); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(m.num_heads)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
