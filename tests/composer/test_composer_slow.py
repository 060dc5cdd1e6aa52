"""The embedded SmolLM2-135M-Instruct, end to end: train, compose, load with PEFT, evaluate.

Slow (the model is loaded once per session, see ``conftest.smollm``); still runs in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from composer.candidates import read_candidate
from composer.compose import ComposeConfig, compose, write_composition
from composer.data import Example
from composer.metrics import EvalConfig, evaluate_examples
from composer.models import DEFAULT_BASE_MODEL
from composer.search import SearchConfig
from composer.train import TaskInfo, TrainConfig, train_lora

pytestmark = pytest.mark.slow

VERBS = [("walk", "walked"), ("jump", "jumped"), ("play", "played"), ("talk", "talked"),
         ("cook", "cooked"), ("open", "opened"), ("call", "called"), ("help", "helped"),
         ("paint", "painted"), ("clean", "cleaned"), ("look", "looked"), ("ask", "asked")]
TRAIN = [Example(f"Past tense of '{v}':", p) for v, p in VERBS]
FEW = TRAIN[:5]


@pytest.fixture(scope="module")
def trained(smollm, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("smol") / "past_tense"
    config = TrainConfig(rank=16, steps=8, batch_size=4, lr=1e-3, seed=0, save_dtype="float16")
    return train_lora(smollm, TRAIN, out, config, task=TaskInfo(name="past_tense"),
                      progress=False)


@pytest.fixture(scope="module")
def random_modules(smollm, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two rank-16 q/v modules with small random weights (PEFT's own save)."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("smolrand")
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(smollm.model, config)
    paths = []
    try:
        for i in range(2):
            gen = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for name, p in peft_model.named_parameters():
                    if "lora_" in name:
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.005)
            peft_model.save_pretrained(root / f"rand{i}")
            cfg_path = root / f"rand{i}" / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = DEFAULT_BASE_MODEL
            cfg_path.write_text(json.dumps(cfg))
            paths.append(root / f"rand{i}")
    finally:
        smollm.model = peft_model.unload()
    return paths


def test_embedded_model_is_known_by_its_hub_name(smollm):
    assert smollm.name == DEFAULT_BASE_MODEL
    assert smollm.gguf_file is not None and smollm.gguf_file.endswith(".gguf")
    assert smollm.dtype == torch.float32 and smollm.kind == "causal"
    assert smollm.tokenizer.chat_template


def test_training_a_few_steps_lowers_the_loss(trained):
    assert len(trained.losses) == 8
    assert sum(trained.losses[-3:]) / 3 < trained.losses[0] - 0.5
    cfg = json.loads((trained.out_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == DEFAULT_BASE_MODEL and cfg["r"] == 16


def test_compose_three_load_with_peft_and_evaluate(smollm, trained, random_modules, tmp_path):
    from peft import PeftModel

    cands = [read_candidate(p) for p in [trained.out_dir, *random_modules]]
    config = ComposeConfig(search=SearchConfig(budget=6, seed=0))
    result = compose(smollm, cands, FEW, config, progress=False)
    assert result.search.objective <= result.zero_loss + 1e-6
    out = write_composition(result, smollm, tmp_path / "composed", n_examples=len(FEW))

    peft_model = PeftModel.from_pretrained(smollm.model, str(out))
    try:
        smollm.model = peft_model.get_base_model()
        report = evaluate_examples(smollm, FEW, EvalConfig(max_new_tokens=6), progress=False)
    finally:
        smollm.model = peft_model.unload()
    # The module PEFT loads scores the loss the search found for it.
    assert report.loss == pytest.approx(result.search.loss, abs=2e-3)
    assert 0.0 <= (report.exact_match or 0.0) <= 1.0 and len(report.predictions) == len(FEW)
    assert not any("lora" in name for name, _ in smollm.model.named_modules())
