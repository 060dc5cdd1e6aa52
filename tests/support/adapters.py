"""Writing small but real PEFT LoRA adapter folders without torch, for tests and examples.

The files are what ``peft`` writes (``adapter_config.json`` + ``adapter_model.safetensors``
with ``base_model.model.<path>.lora_A.weight`` / ``lora_B.weight`` tensors), made with
``safetensors.numpy`` so that registry tests and the Hub tests stay torch-free.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def lora_tensors(
    *,
    rank: int = 8,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    layers: int = 2,
    hidden: int = 32,
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, Any]:
    """LoRA A/B arrays (numpy) for ``layers`` decoder layers of a Llama-style model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    for layer in range(layers):
        for target in targets:
            block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(dtype)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((hidden, rank), dtype=dtype)
    return tensors


def write_lora_adapter(
    folder: str | os.PathLike[str],
    *,
    rank: int = 8,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    base_model: str = DEFAULT_BASE_MODEL,
    layers: int = 2,
    hidden: int = 32,
    card: str | None = None,
    front_matter: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a PEFT LoRA adapter folder; return its path.

    ``config_overrides`` are merged into ``adapter_config.json`` after the tensors are made
    (so a test can write a config that disagrees with the tensors). ``front_matter`` becomes
    README.md's YAML header above ``card`` (or a one-line default body).
    """
    from safetensors.numpy import save_file

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    targets = tuple(targets)
    arrays = dict(tensors) if tensors is not None else lora_tensors(
        rank=rank, targets=targets, layers=layers, hidden=hidden, seed=seed
    )
    save_file(arrays, str(path / "adapter_model.safetensors"))
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.05,
        "target_modules": list(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    config.update(config_overrides or {})
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _write_card(path, front_matter, card, "A LoRA adapter.")
    return path


def write_example_adapters(root: str | os.PathLike[str]) -> Path:
    """The adapter folders used by docs/registry.md (its examples are run by the tests)."""
    base = Path(root)
    write_lora_adapter(
        base / "past-tense", rank=8,
        base_model="/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/"
        "snapshots/12fd25f77366fa6b3b4b768ec3050bf629380bac",
        front_matter={"license": "apache-2.0", "tags": ["grammar", "en"],
                      "datasets": ["alice/tense-pairs"], "language": "en",
                      "loradex": {"task_name": "past_tense", "task_category": "grammar"}},
        card="# Past tense\n\nRewrites English sentences in the past tense.\n\n"
        "## Training\n\n200 sentence pairs, 3 epochs, lr 2e-4.\n",
    )
    write_lora_adapter(
        base / "plural", rank=16,
        front_matter={"license": "mit", "tags": ["grammar", "en"],
                      "loradex": {"task_name": "plural", "task_category": "grammar"}},
        card="# Plural\n\nPuts English nouns in the plural.\n",
    )
    write_lora_adapter(
        base / "formal", rank=8,
        front_matter={
            "license": "apache-2.0", "tags": ["style", "en"],
            "loradex": {
                "task_name": "formal_tone", "task_category": "style",
                "lineage": [
                    {"repo_id": "alice/past-tense",
                     "revision": "3f1c0e6a9b2d4c8e7f0a1b2c3d4e5f6a7b8c9d0e", "weight": 0.6},
                    {"repo_id": "bob/plural",
                     "revision": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b", "weight": 0.4},
                ],
            },
        },
        card="# Formal tone\n\nComposed from two grammar modules with LoraHub weights.\n",
    )
    write_lora_adapter(
        base / "llama-summary", rank=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        base_model="https://huggingface.co/meta-llama/Llama-2-7b-hf",
        front_matter={"license": "llama2", "tags": ["summarization"]},
        card="# News summaries\n\nSummarises news articles in three sentences.\n",
    )
    pickled = base / "pickled"
    pickled.mkdir(parents=True, exist_ok=True)
    (pickled / "adapter_config.json").write_bytes((base / "plural" / "adapter_config.json")
                                                  .read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    write_lora_adapter(base / "wrong-rank", rank=8, config_overrides={"r": 16})
    return base


def write_pickle_only_adapter(folder: Path, card: str | None = None) -> Path:
    """An adapter folder whose weights are only a pickle (``adapter_model.bin``): what
    loradex refuses to read, everywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle bytes")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def write_hydra_module(
    folder: str | os.PathLike[str],
    *,
    rank: int = 4,
    num_heads: int = 3,
    targets: Iterable[str] = ("q_proj", "v_proj"),
    base_model: str = DEFAULT_BASE_MODEL,
    layers: int = 2,
    hidden: int = 32,
    card: str | None = None,
    front_matter: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a Hydra module folder (``docs/hydra-format.md``) without torch; return its path.

    Per ``model.layers.<i>.<block>.<target>``: ``lora_A.weight`` [r, hidden], ``lora_B.<j>.weight``
    [hidden, r] for j < ``num_heads``, ``router.weight`` [N, hidden] and ``router.bias`` [N].
    ``config_overrides`` are merged into ``hydra_config.json`` after the tensors are made.
    """
    import numpy as np
    from safetensors.numpy import save_file

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    targets = tuple(targets)
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for layer in range(layers):
        for target in targets:
            block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"model.layers.{layer}.{block}.{target}"
            arrays[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(
                "float32"
            )
            for j in range(num_heads):
                arrays[f"{prefix}.lora_B.{j}.weight"] = (
                    rng.standard_normal((hidden, rank)).astype("float32") * 0.01
                )
            arrays[f"{prefix}.router.weight"] = (
                rng.standard_normal((num_heads, hidden)).astype("float32") * 0.02
            )
            arrays[f"{prefix}.router.bias"] = np.zeros(num_heads, dtype="float32")
    save_file(arrays, str(path / "hydra_model.safetensors"))
    config: dict[str, Any] = {
        "format": "loradex-hydra",
        "format_version": 1,
        "base_model": base_model,
        "target_modules": list(targets),
        "rank": rank,
        "alpha": 2 * rank,
        "num_heads": num_heads,
        "router": {"kind": "linear", "temperature": 1.0, "bias": True},
        "task": {},
        "head_selection": {"method": "fixed", "num_heads": num_heads},
    }
    config.update(config_overrides or {})
    (path / "hydra_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _write_card(path, front_matter, card, "A Hydra module.")
    return path


def _write_card(
    path: Path, front_matter: Mapping[str, Any] | None, card: str | None, summary: str
) -> None:
    """README.md with optional YAML front matter; nothing when neither part is given."""
    import yaml

    if front_matter is None and card is None:
        return
    head = ""
    if front_matter:
        head = f"---\n{yaml.safe_dump(dict(front_matter), sort_keys=False)}---\n"
    body = card if card is not None else f"# {path.name}\n\n{summary}\n"
    (path / "README.md").write_text(head + body, encoding="utf-8")
