"""Hydra on the embedded SmolLM2-135M (slow): train a few steps, save, export, load with PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from composer.hydra.format import load_hydra
from composer.hydra.runtime import attach_hydra, export_constant_gate_to_peft
from composer.hydra.training import HydraTrainConfig, train_hydra

pytestmark = pytest.mark.slow

PAST = ["walk", "jump", "play", "cook"]
PLURAL = ["cat", "dog", "house", "tree"]


def test_train_hydra_on_smollm(smollm, tmp_path: Path) -> None:
    past = tmp_path / "past.jsonl"
    past.write_text("".join(
        json.dumps({"input": f"Past tense of the verb {v}:", "target": f"{v}ed"}) + "\n"
        for v in PAST
    ))
    plural = tmp_path / "plural.jsonl"
    plural.write_text("".join(
        json.dumps({"input": f"Plural of the noun {n}?", "target": f"{n}s"}) + "\n"
        for n in PLURAL
    ))
    ids = smollm.tokenizer("Past tense of the verb walk:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = smollm.model(input_ids=ids).logits

    config = HydraTrainConfig(
        heads="auto", max_heads=3, rank=4, steps=2, lr=2e-3, batch_size=4, max_length=32
    )
    result = train_hydra(smollm, [past, plural], tmp_path / "hydra", config, progress=False)
    assert result.num_heads == 2
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert sum(result.head_usage.top1_share) == pytest.approx(1.0)

    module = load_hydra(tmp_path / "hydra")
    assert module.config.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(module.layers) == 2 * smollm.model.config.num_hidden_layers

    # The base model is given back unchanged; the Hydra module changes its output.
    with torch.no_grad():
        assert torch.equal(smollm.model(input_ids=ids).logits, before)
    handle = attach_hydra(smollm.model, module)
    handle.set_fixed_gates([0.5, 0.5])
    try:
        with torch.no_grad():
            hydra_logits = smollm.model(input_ids=ids).logits
    finally:
        handle.detach()
    assert not torch.equal(hydra_logits, before)

    # The constant-gate export loads in stock PEFT and gives the same output.
    from peft import PeftModel

    peft_dir = export_constant_gate_to_peft(module, [0.5, 0.5], tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(smollm.model, str(peft_dir))
    try:
        with torch.no_grad():
            assert torch.allclose(peft_model(input_ids=ids).logits, hydra_logits, atol=1e-4)
    finally:
        smollm.model = peft_model.unload()
    with torch.no_grad():
        assert torch.equal(smollm.model(input_ids=ids).logits, before)
