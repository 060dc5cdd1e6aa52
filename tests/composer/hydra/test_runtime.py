"""Runtime: the wrapped forward equals the formula, PEFT equivalences, detach, dtypes, balance."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from composer.hydra.format import HydraModule
from composer.hydra.runtime import (
    HydraLinear,
    attach_hydra,
    constant_gate_lora,
    export_constant_gate_to_peft,
)
from loradex.errors import IncompatibleModules
from registry.adapter_files import inspect_adapter_folder

from .conftest import random_hydra

INPUT = torch.tensor([[5, 17, 3, 42, 8, 90, 1], [7, 7, 60, 2, 33, 4, 11]])


def logits(model: nn.Module, ids: torch.Tensor = INPUT) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def formula_hook(module: HydraModule, name: str):
    """A forward hook adding s * Σ_j g_j(x) B_j A x to a plain nn.Linear, token by token."""
    weights = module.layers[name]
    config = module.config

    def hook(_layer: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0].double()
        flat = x.reshape(-1, x.shape[-1])
        rows = []
        for token in flat:
            logits_g = weights.router_weight.double() @ token + weights.router_bias.double()
            gates = torch.softmax(logits_g / config.router_temperature, dim=0)
            hidden = weights.lora_A.double() @ token
            update = sum(
                gates[j] * (weights.lora_B[j].double() @ hidden) for j in range(len(gates))
            )
            rows.append(config.scale * update)
        delta = torch.stack(rows).reshape(*x.shape[:-1], -1)
        return output + delta.to(output.dtype)

    return hook


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_forward_equals_formula(tiny_llama, temperature: float) -> None:
    module = random_hydra(tiny_llama, num_heads=3, temperature=temperature)
    reference = copy.deepcopy(tiny_llama)
    for name in module.layers:
        reference.get_submodule(name).register_forward_hook(formula_hook(module, name))
    expected = logits(reference)
    handle = attach_hydra(tiny_llama, module)
    assert all(isinstance(tiny_llama.get_submodule(n), HydraLinear) for n in module.layers)
    got = logits(tiny_llama)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # And the adapter matters: the output differs from the bare base model.
    handle.detach()
    assert not torch.allclose(logits(tiny_llama), expected, atol=1e-3)


def test_detach_restores_the_original_layers(tiny_llama) -> None:
    before = logits(tiny_llama)
    originals = {n: m for n, m in tiny_llama.named_modules() if isinstance(m, nn.Linear)}
    handle = attach_hydra(tiny_llama, random_hydra(tiny_llama))
    handle.detach()
    after = {n: m for n, m in tiny_llama.named_modules() if isinstance(m, nn.Linear)}
    assert after.keys() == originals.keys()
    assert all(after[n] is originals[n] for n in originals)
    assert torch.equal(logits(tiny_llama), before)


def test_batched_equals_one_sequence_at_a_time(tiny_llama) -> None:
    attach_hydra(tiny_llama, random_hydra(tiny_llama))
    batched = logits(tiny_llama)
    for i in range(INPUT.shape[0]):
        single = logits(tiny_llama, INPUT[i : i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-5)


def _peft_lora(model: nn.Module, module: HydraModule, b_of) -> nn.Module:
    config = module.config
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            target_modules=list(config.target_modules),
            lora_dropout=0.0,
        ),
    )
    for name, weights in module.layers.items():
        layer = peft_model.base_model.model.get_submodule(name)
        layer.lora_A["default"].weight.data.copy_(weights.lora_A)
        layer.lora_B["default"].weight.data.copy_(b_of(name))
    return peft_model.eval()


def test_single_head_equals_plain_peft_lora(tiny_llama) -> None:
    module = random_hydra(tiny_llama, num_heads=1)
    peft_model = _peft_lora(copy.deepcopy(tiny_llama), module, lambda n: module.layers[n].lora_B[0])
    expected = logits(peft_model)
    attach_hydra(tiny_llama, module)  # N = 1: the softmax gate is constant 1 whatever the router
    assert torch.allclose(logits(tiny_llama), expected, atol=1e-5)


def test_constant_gate_merges_to_one_lora(tiny_llama) -> None:
    module = random_hydra(tiny_llama, num_heads=3)
    gates = [0.2, 0.5, 0.3]
    merged = constant_gate_lora(module, gates)
    peft_model = _peft_lora(copy.deepcopy(tiny_llama), module, lambda n: merged[n][1])
    handle = attach_hydra(tiny_llama, module)
    handle.set_fixed_gates(gates)
    assert torch.allclose(logits(tiny_llama), logits(peft_model), atol=1e-5)


@pytest.mark.parametrize("gates", [[0.2, 0.5, 0.3], None])
def test_static_export_loads_in_peft_and_matches(tiny_llama, tmp_path: Path, gates) -> None:
    module = random_hydra(tiny_llama, num_heads=3)
    out = export_constant_gate_to_peft(module, gates, tmp_path / "peft")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    indexed = inspect_adapter_folder(out)  # the registry accepts it as a plain LoRA
    assert (indexed.kind, indexed.rank) == ("lora", module.config.rank)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), str(out)).eval()
    handle = attach_hydra(tiny_llama, module)
    if gates is None:
        # The default export gate is the router at x = 0: softmax(b / T), per layer.
        for name, layer in handle.layers.items():
            bias = module.layers[name].router_bias
            assert bias is not None
            layer.fixed_gates = torch.softmax(bias / module.config.router_temperature, dim=0)
    else:
        handle.set_fixed_gates(gates)
    assert torch.allclose(logits(tiny_llama), logits(peft_model), atol=1e-5)


def test_training_touches_only_hydra_parameters(tiny_llama) -> None:
    tiny_llama.requires_grad_(False)
    base_state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    handle = attach_hydra(tiny_llama, random_hydra(tiny_llama), trainable=True)
    trainable = [p for p in tiny_llama.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in handle.parameters()}
    optimizer = torch.optim.SGD(handle.parameters(), lr=0.1)
    loss = tiny_llama(input_ids=INPUT, labels=INPUT).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in handle.parameters())
    optimizer.step()
    handle.detach()
    for key, value in tiny_llama.state_dict().items():
        assert torch.equal(value, base_state[key]), key


def test_bfloat16_model_with_float32_adapter(tiny_llama) -> None:
    module = random_hydra(tiny_llama)
    reference = logits(copy.deepcopy(tiny_llama).to(torch.bfloat16))
    model = tiny_llama.to(torch.bfloat16)
    spare = copy.deepcopy(model)
    handle = attach_hydra(model, module)
    out = logits(model)
    assert out.dtype == torch.bfloat16
    assert next(iter(handle.layers.values())).lora_A.dtype == torch.float32
    assert not torch.equal(out, reference)
    half = attach_hydra(spare, module, dtype=torch.bfloat16)
    with pytest.raises(IncompatibleModules, match="already has a Hydra module"):
        attach_hydra(spare, module)
    assert next(iter(half.layers.values())).lora_B.dtype == torch.bfloat16


def test_attach_refuses_a_mismatched_model(tiny_llama) -> None:
    module = random_hydra(tiny_llama)
    renamed = {k.replace("layers.1", "layers.7"): v for k, v in module.layers.items()}
    with pytest.raises(IncompatibleModules, match=r"layers\.7\.self_attn\.q_proj' is missing"):
        attach_hydra(tiny_llama, HydraModule(module.config, renamed))
    # Nothing was wrapped by the refused call.
    assert not any(isinstance(m, HydraLinear) for m in tiny_llama.modules())


def test_balance_loss_spreads_usage() -> None:
    """A router that sends ~all tokens to head 0 is spread out by the balance term alone."""
    torch.manual_seed(0)
    base = nn.Linear(16, 16)
    from composer.hydra.format import HydraLayerWeights

    router = torch.randn(4, 16) * 0.1
    weights = HydraLayerWeights(
        lora_A=torch.randn(4, 16),
        lora_B=torch.randn(4, 16, 4),
        router_weight=router,
        router_bias=torch.tensor([4.0, 0.0, 0.0, 0.0]),
    )
    model = nn.Sequential()
    model.add_module("proj", base)
    from registry.hydra import HydraConfig

    config = HydraConfig("toy", ("proj",), rank=4, alpha=4, num_heads=4)
    handle = attach_hydra(model, HydraModule(config, {"proj": weights}), trainable=True)
    x = torch.randn(8, 32, 16)

    def usage() -> tuple[float, ...]:
        handle.clear_recorded()
        with torch.no_grad(), handle.recording():
            model(x)
        return handle.head_usage().top1_share

    before = usage()
    assert before[0] > 0.9
    optimizer = torch.optim.Adam(handle.router_parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        with handle.recording():
            model(x)
        handle.balance_loss().backward()
        optimizer.step()
    after = usage()
    assert max(after) < 0.5
    assert min(after) > 0.1
