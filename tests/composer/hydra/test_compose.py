"""Compose into a Hydra module: exact LoraHub reproduction before the fit, router-only fit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from composer.data import load_examples
from composer.hydra.compose import (
    LoraCandidate,
    compose_hydra_module,
    compose_lora,
    compose_to_hydra,
    fit_router,
    group_candidates,
    load_peft_candidate,
)
from composer.hydra.format import load_hydra
from composer.hydra.runtime import attach_hydra
from loradex.errors import IncompatibleModules
from registry.hydra import hydra_module_entity

from .conftest import make_loaded, make_tiny_llama, write_topic_files

INPUT = torch.tensor([[5, 17, 3, 42, 8, 9, 1], [7, 7, 30, 2, 33, 4, 11]])
WEIGHTS = [0.9, -0.4, 0.25, 0.6, -0.1]


def make_candidates(model: torch.nn.Module, count: int = 5, rank: int = 4) -> list[LoraCandidate]:
    generator = torch.Generator().manual_seed(7)
    layers = {
        name: (sub.in_features, sub.out_features)
        for name, sub in model.named_modules()
        if name.endswith(("q_proj", "v_proj"))
    }
    return [
        LoraCandidate(
            repo_id=f"alice/task-{i}",
            rank=rank,
            alpha=2.0 * rank,
            target_modules=("q_proj", "v_proj"),
            base_model="tiny-llama",
            layers={
                name: (
                    torch.randn(rank, fan_in, generator=generator) * 0.3,
                    torch.randn(fan_out, rank, generator=generator) * 0.3,
                )
                for name, (fan_in, fan_out) in layers.items()
            },
        )
        for i in range(count)
    ]


def lorahub_logits(model: torch.nn.Module, candidates, weights) -> torch.Tensor:
    """The LoraHub result as stock PEFT computes it: one LoRA with composed A and B."""
    composed = compose_lora(candidates, weights)
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, lora_alpha=8.0, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    for name, (a, b) in composed.items():
        layer = peft_model.base_model.model.get_submodule(name)
        layer.lora_A["default"].weight.data.copy_(a)
        layer.lora_B["default"].weight.data.copy_(b)
    with torch.no_grad():
        return peft_model.eval()(input_ids=INPUT).logits


@pytest.mark.parametrize(("num_heads", "grouping"), [(3, "top"), (3, "cluster"), (1, "top"),
                                                      (5, "top"), (9, "cluster")])
def test_hydra_reproduces_the_lorahub_composition(num_heads: int, grouping: str) -> None:
    model = make_tiny_llama()
    candidates = make_candidates(model)
    expected = lorahub_logits(model, candidates, WEIGHTS)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=INPUT).logits, expected, atol=1e-2)
    module, groups = compose_to_hydra(
        candidates, WEIGHTS, num_heads=num_heads, grouping=grouping  # type: ignore[arg-type]
    )
    assert module.config.num_heads == min(num_heads, len(candidates)) == len(groups)
    assert sorted(r for g in groups for r in g.repo_ids) == sorted(c.repo_id for c in candidates)
    attach_hydra(model, module)
    with torch.no_grad():
        got = model(input_ids=INPUT).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_top_grouping_puts_the_largest_weights_alone() -> None:
    candidates = make_candidates(make_tiny_llama())
    groups = group_candidates(candidates, WEIGHTS, 3, "top")
    assert groups == [[0], [3], [1, 2, 4]]  # |0.9| and |0.6| alone, the rest merged


def test_router_fit_lowers_fewshot_loss_and_freezes_a_and_heads(tmp_path: Path) -> None:
    loaded = make_loaded()
    candidates = make_candidates(loaded.model)
    module, _ = compose_to_hydra(candidates, WEIGHTS, num_heads=3)
    paths = write_topic_files(tmp_path, n_per_topic=6)
    few_shot = load_examples(paths[0])[:3] + load_examples(paths[1])[:3]
    holdout = load_examples(paths[0])[3:] + load_examples(paths[1])[3:]
    result = fit_router(loaded, module, few_shot, holdout=holdout, steps=10, lr=0.05)
    assert result.fewshot_loss_after < result.fewshot_loss_before
    assert result.heldout_loss_before is not None and result.heldout_loss_after is not None
    for name, layer in module.layers.items():
        fitted = result.module.layers[name]
        assert torch.equal(fitted.lora_A, layer.lora_A)
        assert torch.equal(fitted.lora_B, layer.lora_B)
        assert not torch.equal(fitted.router_weight, layer.router_weight)
    # The base model is untouched.
    assert not any(type(m).__name__ == "HydraLinear" for m in loaded.model.modules())


def test_compose_writes_a_module_with_lineage(tmp_path: Path) -> None:
    loaded = make_loaded()
    candidates = make_candidates(loaded.model)
    paths = write_topic_files(tmp_path, n_per_topic=4)
    few_shot = load_examples(paths[0])
    result = compose_hydra_module(
        loaded, candidates, WEIGHTS, few_shot, tmp_path / "out", num_heads=2, fit_steps=3,
        provenance={"optimizer": "CMA", "budget": 40},
    )
    assert result.fit is not None and len(result.fit.losses) == 3
    module = load_hydra(tmp_path / "out")
    assert module.config.num_heads == 2
    assert module.config.head_selection["method"] == "compose"
    entity = hydra_module_entity(tmp_path / "out")
    assert [(e.parent_repo_id, e.weight) for e in entity.lineage] == [
        (c.repo_id, w) for c, w in zip(candidates, WEIGHTS, strict=True)
    ]
    fit = result.front_matter["loradex"]["router_fit"]
    assert fit["fewshot_loss_before"] is not None and fit["fewshot_loss_after"] is not None
    assert result.front_matter["loradex"]["provenance"] == {"optimizer": "CMA", "budget": 40}


def test_load_peft_candidate(tmp_path: Path) -> None:
    model = make_tiny_llama()
    cand = make_candidates(model, count=1)[0]
    folder = tmp_path / "peft"
    folder.mkdir()
    tensors = {}
    for name, (a, b) in cand.layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"],
        "base_model_name_or_path": "tiny-llama",
    }))
    loaded = load_peft_candidate(folder, repo_id="alice/x")
    assert (loaded.rank, loaded.alpha, loaded.target_modules) == (4, 8.0, ("q_proj", "v_proj"))
    for name, (a, b) in cand.layers.items():
        assert torch.equal(loaded.layers[name][0], a) and torch.equal(loaded.layers[name][1], b)


def test_incompatible_candidates_refused() -> None:
    model = make_tiny_llama()
    four = make_candidates(model, count=2, rank=4)
    eight = make_candidates(model, count=1, rank=8)
    with pytest.raises(IncompatibleModules, match="needs equal ranks"):
        compose_to_hydra([*four, *eight], [1.0, 1.0, 1.0], num_heads=2)
    with pytest.raises(IncompatibleModules, match="2 weights for 3 candidates"):
        compose_to_hydra([*four, *four[:1]], [1.0, 1.0], num_heads=2)


def test_from_the_composers_cma_es_result(
    tmp_path: Path, tiny_causal_dir: Path, tiny_loras: list[Path], few_shot_file: Path, load_tiny
) -> None:
    """End to end with the composer: CMA-ES weights -> PEFT folder and Hydra module agree."""
    from peft import PeftModel

    from composer.candidates import read_candidate
    from composer.compose import ComposeConfig, compose, write_composition
    from composer.hydra.compose import compose_result_to_hydra, lora_candidate_from
    from composer.search import SearchConfig

    loaded = load_tiny(tiny_causal_dir)
    candidates = [read_candidate(p) for p in tiny_loras]
    examples = load_examples(few_shot_file)
    config = ComposeConfig(search=SearchConfig(budget=8, seed=1))
    result = compose(loaded, candidates, examples, config, progress=False)
    assert np_any_nonzero(result.weights)
    peft_dir = write_composition(result, loaded, tmp_path / "lorahub")

    ids = torch.tensor([[5, 17, 3, 42, 8, 9, 1]])
    lorahub = PeftModel.from_pretrained(load_tiny(tiny_causal_dir).model, str(peft_dir)).eval()
    with torch.no_grad():
        expected = lorahub(input_ids=ids).logits
    module, _ = compose_to_hydra(
        [lora_candidate_from(c) for c in candidates], list(result.weights), num_heads=3
    )
    handle = attach_hydra(loaded.model, module)
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, expected, atol=1e-5)
    handle.detach()

    out = compose_result_to_hydra(
        loaded, result, examples, tmp_path / "hydra", num_heads=3, fit_steps=5, fit_lr=0.05
    )
    assert out.fit is not None
    assert out.fit.fewshot_loss_before == pytest.approx(result.search.loss, rel=1e-4)
    assert out.fit.fewshot_loss_after <= out.fit.fewshot_loss_before
    assert load_hydra(tmp_path / "hydra").config.num_heads == 3


def np_any_nonzero(values) -> bool:
    return any(abs(float(v)) > 0 for v in values)
