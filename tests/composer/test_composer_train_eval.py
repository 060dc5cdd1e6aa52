"""Training, evaluation and model loading on tiny real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from composer.data import Example
from composer.inference import generate_answers, sequence_logprobs
from composer.metrics import EvalConfig, evaluate_examples
from composer.models import (
    DEFAULT_BASE_MODEL,
    ModelSpec,
    base_model_license_for,
    base_model_name_for,
    embedded_gguf_path,
    load_base_model,
    resolve_device,
    resolve_dtype,
)
from composer.train import TaskInfo, TrainConfig, train_lora
from loradex.errors import ConfigError, ModelLoadError
from tests.support.tiny_models import FEW_SHOT, direct_logprobs

TRAIN = [Example(f"count {i}", ["one", "two", "three"][i % 3]) for i in range(12)]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_lowers_the_loss_writes_a_peft_folder_and_restores_the_model(
    tiny_causal_dir, load_tiny, tmp_path
):
    from peft import PeftModel

    loaded = load_tiny(tiny_causal_dir)
    before = _state(loaded.model)
    config = TrainConfig(rank=4, steps=30, lr=5e-2, batch_size=4, seed=1, save_dtype="float16")
    result = train_lora(
        loaded, TRAIN, tmp_path / "mod", config,
        task=TaskInfo(name="count", category="toy", license="MIT"), heldout=TRAIN[:3],
        progress=False,
    )
    assert result.losses[-1] < result.losses[0] - 0.2
    assert result.heldout_loss_after is not None and result.heldout_loss_before is not None
    assert result.heldout_loss_after < result.heldout_loss_before
    # The base model is exactly as before.
    after = _state(loaded.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    out = result.out_dir
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert len(tensors) == 2 * 2 * 2  # 2 blocks x (q, v) x (A, B)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["target_modules"] == ["q_proj", "v_proj"]
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["library_name"] == "peft" and front["license"] == "MIT"
    assert front["loradex"]["task_name"] == "count"
    assert front["loradex"]["training"]["steps"] == 30
    assert front["loradex"]["heldout"]["loss"] == pytest.approx(result.heldout_loss_after, abs=1e-3)
    # PEFT loads it unchanged.
    fresh = load_tiny(tiny_causal_dir)
    PeftModel.from_pretrained(fresh.model, str(out))


def test_training_is_deterministic_with_a_seed(tiny_causal_dir, load_tiny, tmp_path):
    loaded = load_tiny(tiny_causal_dir)
    config = TrainConfig(rank=2, steps=4, batch_size=3, seed=7)
    first = train_lora(loaded, TRAIN, tmp_path / "a", config, progress=False)
    second = train_lora(loaded, TRAIN, tmp_path / "b", config, progress=False)
    assert first.losses == second.losses
    ta = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    tb = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_training_a_seq2seq_model(tiny_seq2seq_dir, load_tiny, tmp_path):
    loaded = load_tiny(tiny_seq2seq_dir)
    config = TrainConfig(rank=4, steps=20, lr=5e-2, batch_size=4, targets=("q", "v"))
    result = train_lora(loaded, TRAIN, tmp_path / "t5", config, progress=False)
    assert result.losses[-1] < result.losses[0]
    cfg = json.loads((tmp_path / "t5" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_2_SEQ_LM"


def test_bad_training_settings(tiny_causal_dir, load_tiny, tmp_path):
    with pytest.raises(ConfigError, match="either steps or epochs"):
        TrainConfig(steps=3, epochs=1).validate()
    with pytest.raises(ConfigError, match="rank"):
        TrainConfig(rank=0).validate()
    loaded = load_tiny(tiny_causal_dir)
    with pytest.raises(ConfigError, match="gate_projx"):
        train_lora(loaded, TRAIN, tmp_path / "x", TrainConfig(targets=("gate_projx",)),
                   progress=False)
    assert not (tmp_path / "x").exists()


def test_batched_generation_equals_one_prompt_at_a_time(tiny_causal_dir, load_tiny):
    loaded = load_tiny(tiny_causal_dir)
    prompts = [loaded.tokenizer(t)["input_ids"] for t in
               ["the cat", "one two three four", "past tense of walk is", "yes"]]
    batched = generate_answers(loaded, prompts, max_new_tokens=6, batch_size=4)
    single = [generate_answers(loaded, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single


def test_exact_match_and_choice_accuracy(tiny_causal_dir, load_tiny):
    from composer.data import EncodedExample, encode_prompt, encode_target, render_prompt

    loaded = load_tiny(tiny_causal_dir)
    examples = [Example(r["input"], r["target"], tuple(r["choices"]) if "choices" in r else None)
                for r in FEW_SHOT]
    report = evaluate_examples(loaded, examples, EvalConfig(max_new_tokens=4), progress=False)
    assert report.n_examples == 5 and report.n_choice_examples == 1
    # Exact match agrees with the predictions it reports.
    assert report.exact_match == sum(p["correct"] for p in report.predictions) / 5
    # The choice picked is the one with the larger log-likelihood, computed here directly.
    ex = examples[4]
    tok = loaded.tokenizer
    prompt = tuple(encode_prompt(tok, render_prompt(tok, ex.input)))
    options = [EncodedExample(prompt, tuple(encode_target(tok, c, seq2seq=False)))
               for c in ex.choices]
    scores = sequence_logprobs(loaded, options)
    direct = direct_logprobs(loaded.model, options)
    assert scores == pytest.approx(direct, abs=1e-4)
    best = ex.choices[max(range(2), key=direct.__getitem__)]
    assert report.choice_accuracy == float(best == ex.target)
    assert report.label_distribution == {best: 1}
    # The one example with choices has target "yes": always answering it scores 1.0.
    assert (report.majority_label, report.majority_rate) == (ex.target, 1.0)
    assert report.summary()["majority_rate"] == 1.0


def test_a_module_takes_its_base_models_licence(tiny_causal_dir, load_tiny, tmp_path):
    # A module is a derivative of its base: without a licence of its own it takes the base's.
    folder = tmp_path / "gemma-like"
    shutil.copytree(tiny_causal_dir, folder)
    (folder / "README.md").write_text("---\nlicense: gemma\n---\n# A base model\n")
    loaded = load_tiny(folder)
    assert loaded.license == "gemma"
    config = TrainConfig(rank=2, steps=1, batch_size=2)
    cards = {}
    for name, task in (("own", TaskInfo(name="t")), ("given", TaskInfo(name="t", license="MIT"))):
        out = train_lora(loaded, TRAIN[:4], tmp_path / name, config, task=task, progress=False)
        cards[name] = yaml.safe_load((out.out_dir / "README.md").read_text().split("---")[1])
    assert cards["own"]["license"] == "gemma" and cards["given"]["license"] == "MIT"
    # A base whose licence is unknown has none (its modules then default to Apache-2.0).
    assert load_tiny(tiny_causal_dir).license is None


def test_base_model_licences_known_without_loading(tmp_path: Path):
    assert base_model_license_for(None) == "apache-2.0"  # the embedded SmolLM2
    assert base_model_license_for(str(tmp_path / "gemma-3-270m-q4_k_m.gguf")) == "gemma"
    assert base_model_name_for(str(tmp_path / "gemma-3-270m-q4_k_m.gguf")) == "google/gemma-3-270m"
    assert base_model_license_for(str(tmp_path / "other.gguf")) is None
    assert base_model_name_for(str(tmp_path / "other.gguf")) == "other"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert base_model_license_for(str(tmp_path / "bad")) is None
    assert base_model_license_for("org/model") is None


def test_model_loading_errors(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_base_model(ModelSpec(name_or_path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_base_model(ModelSpec(name_or_path=str(tmp_path / "empty")))
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_base_model(ModelSpec(name_or_path="nobody-xyz/no-such-model-123"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_base_model(ModelSpec(name_or_path=str(tmp_path / "x.gguf")))


def test_device_dtype_and_names():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError):
        resolve_dtype("int8", torch.device("cpu"))
    assert embedded_gguf_path().suffix == ".gguf"
    assert base_model_name_for(None) == DEFAULT_BASE_MODEL
    assert base_model_name_for(str(embedded_gguf_path())) == DEFAULT_BASE_MODEL
    assert base_model_name_for("org/model") == "org/model"


def test_tiny_folder_loads_with_its_kind(tiny_causal_dir, tiny_seq2seq_dir, load_tiny):
    causal = load_tiny(tiny_causal_dir)
    seq = load_tiny(tiny_seq2seq_dir, dtype="bfloat16")
    assert causal.kind == "causal" and seq.kind == "seq2seq"
    assert seq.dtype == torch.bfloat16
    assert next(seq.model.parameters()).dtype == torch.bfloat16
