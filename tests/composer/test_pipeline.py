"""The compose pipeline called directly: a request in, the written module out, every refusal
before the base model is loaded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from composer.compose import ComposeConfig
from composer.models import LoadedModel, ModelSpec
from composer.pipeline import ComposeRequest, RegistrySelection, run_compose
from composer.registry_link import index_adapter_folder
from composer.search import SearchConfig
from loradex.errors import ConfigError
from loradex.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", db_url=f"sqlite:///{tmp_path / 'registry.db'}")


def _loader(tiny_causal_dir: Path, load_tiny: Callable[..., object],
            loads: list[ModelSpec]) -> Callable[[ModelSpec], LoadedModel]:
    def load(spec: ModelSpec) -> LoadedModel:
        loads.append(spec)
        loaded = load_tiny(tiny_causal_dir)
        assert isinstance(loaded, LoadedModel)
        return loaded

    return load


def test_a_request_composes_writes_and_indexes(
    tiny_causal_dir, tiny_loras, load_tiny, few_shot_file, tmp_path, settings
):
    request = ComposeRequest(
        examples=few_shot_file, out=tmp_path / "out",
        candidates=tuple(str(p) for p in tiny_loras[:2]),
        model=ModelSpec(name_or_path=str(tiny_causal_dir), device="cpu"),
        compose=ComposeConfig(objective="auto", search=SearchConfig(budget=3)),
    )
    loads: list[ModelSpec] = []
    said: list[str] = []
    outcome = run_compose(request, settings, load_model=_loader(tiny_causal_dir, load_tiny, loads),
                          notify=said.append, progress=False)
    assert loads == [request.model]
    assert said == ["2 candidates, 5 examples, method lorahub"]
    assert outcome.folder == tmp_path / "out" and outcome.hydra is None
    assert outcome.registry_id == "local/out"
    assert outcome.result.config.objective == "lm"  # auto: not every example has choices
    provenance = json.loads((outcome.folder / "loradex_provenance.json").read_text())
    assert [e["repo_id"] for e in provenance["lineage"]] == ["local/mod0", "local/mod1"]


def test_a_registry_selection_draws_k_seeded_candidates(
    tiny_causal_dir, tiny_loras, load_tiny, few_shot_file, tmp_path, settings
):
    for folder in tiny_loras:
        index_adapter_folder(settings.db_url, folder)
    request = ComposeRequest(
        examples=few_shot_file, out=tmp_path / "out",
        candidates=RegistrySelection(k=2, select="random"),
        module_dirs=(tiny_loras[0].parent,),
        model=ModelSpec(name_or_path=str(tiny_causal_dir), device="cpu"),
        compose=ComposeConfig(search=SearchConfig(budget=2, seed=1)), index=False,
    )
    loads: list[ModelSpec] = []
    outcome = run_compose(request, settings, load_model=_loader(tiny_causal_dir, load_tiny, loads),
                          progress=False)
    picked = [c.repo_id for c in outcome.result.candidates]
    assert len(picked) == 2 and set(picked) <= {f"local/mod{i}" for i in range(4)}
    assert outcome.registry_id is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"candidates": ()}, "no candidates"),
        ({"output": "onnx"}, "--output must be one of"),
        ({"output": "hydra", "hydra_heads": 3}, "--hydra-heads must be between 1"),
        ({"output": "hydra", "router_steps": -1}, "--router-steps must be >= 0"),
        ({"compose": ComposeConfig(method="mixed-rank", search=SearchConfig(budget=2)),
          "output": "hydra"}, "needs --method lorahub"),
    ],
)
def test_refusals_come_before_the_model_is_loaded(
    changes, message, tiny_causal_dir, tiny_loras, few_shot_file, tmp_path, settings
):
    request = replace(ComposeRequest(
        examples=few_shot_file, out=tmp_path / "out",
        candidates=tuple(str(p) for p in tiny_loras[:2]),
        model=ModelSpec(name_or_path=str(tiny_causal_dir), device="cpu"),
        compose=ComposeConfig(search=SearchConfig(budget=2)),
    ), **changes)

    def must_not_load(spec: ModelSpec) -> LoadedModel:
        raise AssertionError("the model was loaded")

    with pytest.raises(ConfigError, match=message):
        run_compose(request, settings, load_model=must_not_load, progress=False)
    assert not (tmp_path / "out").exists()
