"""Fixtures for the Hydra tests: a tiny random Llama-style model and Hydra modules for it."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from composer.hydra.format import HydraModule
from composer.hydra.runtime import init_hydra_module
from registry.hydra import HydraConfig


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


_WORD_TEXT = (
    "bake oven flour sugar butter whisk dough recipe boil simmer pan salt "
    "planet orbit galaxy telescope star comet nebula gravity moon solar eclipse asteroid "
    "stock bond dividend market loan equity portfolio asset bank credit debt yield "
    "yes no red blue green one two three the of and to is what how please"
)
WORDS = _WORD_TEXT.split()


def make_tiny_tokenizer():
    """A word-level fast tokenizer over :data:`WORDS` (no chat template, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


def make_loaded(seed: int = 0):
    """A composer ``LoadedModel`` holding the tiny Llama and the tiny tokenizer."""
    from composer.models import LoadedModel

    model = make_tiny_llama(seed)
    model.config.pad_token_id = 0
    return LoadedModel(
        model=model,
        tokenizer=make_tiny_tokenizer(),
        name="tiny-llama",
        source="test",
        is_seq2seq=False,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture
def tiny_loaded():
    """The tiny Llama + tokenizer as the composer passes models around."""
    return make_loaded()


def write_topic_files(folder, n_per_topic: int = 24, seed: int = 0) -> list:
    """Two JSONL task files whose inputs form two clear topics (cooking, astronomy)."""
    import json
    import random

    rng = random.Random(seed)
    topics = {
        "cooking": (WORDS[0:12], "yes"),
        "astronomy": (WORDS[12:24], "no"),
    }
    paths = []
    for name, (vocab, answer) in topics.items():
        path = folder / f"{name}.jsonl"
        lines = [
            json.dumps({"input": " ".join(rng.sample(vocab, 5)), "target": answer})
            for _ in range(n_per_topic)
        ]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths
