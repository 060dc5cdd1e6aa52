"""Fixtures for the Hydra tests: a tiny random Llama-style model and Hydra modules for it."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from composer.hydra.format import HydraModule
from composer.hydra.runtime import init_hydra_module
from composer.hydra.spec import HydraConfig


def make_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 32, random weights, eval mode, float32."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def random_hydra(
    model: torch.nn.Module,
    *,
    num_heads: int = 3,
    rank: int = 4,
    alpha: float = 8.0,
    temperature: float = 1.0,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 1,
) -> HydraModule:
    """A Hydra module with every tensor random (non-zero heads, non-trivial router)."""
    config = HydraConfig(
        base_model="tiny-llama",
        target_modules=targets,
        rank=rank,
        alpha=alpha,
        num_heads=num_heads,
        router_temperature=temperature,
    )
    module = init_hydra_module(model, config, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    for layer in module.layers.values():
        layer.lora_B = torch.randn(layer.lora_B.shape, generator=generator) * 0.3
        layer.router_weight = torch.randn(layer.router_weight.shape, generator=generator)
        assert layer.router_bias is not None
        layer.router_bias = torch.randn(layer.router_bias.shape, generator=generator)
    return module


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """A fresh tiny random Llama for each test."""
    return make_tiny_llama()
