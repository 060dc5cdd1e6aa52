"""Training a Hydra module on the tiny model: auto N, balance term, saved folder, model intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from composer.hydra.format import load_hydra
from composer.hydra.training import HydraTrainConfig, train_hydra
from loradex.errors import ConfigError, InvalidDataFile
from registry.cards import parse_card
from registry.hydra import CONFIG_NAME, hydra_module_entity, read_config

from .conftest import make_loaded, write_topic_files


def test_train_auto_heads_writes_a_loadable_module(tmp_path: Path) -> None:
    loaded = make_loaded()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        before = loaded.model(input_ids=ids).logits
    paths = write_topic_files(tmp_path)
    out = tmp_path / "hydra"
    config = HydraTrainConfig(heads="auto", max_heads=5, rank=4, steps=20, lr=1e-2, batch_size=8)
    result = train_hydra(loaded, paths, out, config, progress=False)

    assert result.num_heads == 2  # two clearly separated topics in the inputs
    assert result.head_selection is not None and result.head_selection.k == (1, 2, 3, 4, 5)
    assert len(result.losses) == 20
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5

    module = load_hydra(out)
    assert module.config.num_heads == 2
    assert module.config.head_selection["method"] == "auto"
    assert module.config.task["datasets"] == ["cooking.jsonl", "astronomy.jsonl"]
    front, body = parse_card((out / "README.md").read_text())
    assert front["library_name"] == "loradex"
    assert "datasets" not in front  # local files are not Hub dataset ids: listed in the block
    assert list(front["loradex"]["training_files"]) == ["cooking.jsonl", "astronomy.jsonl"]
    assert "hydra-lora" in front["tags"]
    assert front["loradex"]["kind"] == "hydra" and front["loradex"]["num_heads"] == 2
    assert front["loradex"]["head_selection"]["inertia"] == pytest.approx(
        list(result.head_selection.inertia), abs=1e-5
    )
    assert len(front["loradex"]["head_usage"]["top1_share"]) == 2
    assert "## Head usage" in body and "| k | inertia |" in body
    assert (out / "training_log.json").is_file()
    assert hydra_module_entity(out).num_heads == 2

    # The base model is given back untouched and trainable flags restored.
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, before)
    assert all(p.requires_grad for p in loaded.model.parameters())


def test_balance_term_spreads_head_usage(tmp_path: Path) -> None:
    paths = write_topic_files(tmp_path)
    usage = {}
    for coef in (0.0, 1.0):
        config = HydraTrainConfig(heads=4, rank=4, steps=30, lr=5e-3, balance_coef=coef)
        result = train_hydra(make_loaded(), paths, None, config, progress=False)
        usage[coef] = result.head_usage
        assert sum(result.head_usage.top1_share) == pytest.approx(1.0)
    assert usage[1.0].normalized_entropy > usage[0.0].normalized_entropy
    assert max(usage[1.0].top1_share) < max(usage[0.0].top1_share)
    assert max(usage[1.0].top1_share) < 0.35  # near the even 0.25


def test_heldout_losses_reported(tmp_path: Path) -> None:
    from composer.data import load_examples

    paths = write_topic_files(tmp_path)
    heldout = load_examples(paths[0])[:4]
    config = HydraTrainConfig(heads=2, rank=4, steps=20, lr=1e-2)
    result = train_hydra(make_loaded(), paths, None, config, heldout=heldout, progress=False)
    assert result.heldout_loss_before is not None and result.heldout_loss_after is not None
    assert result.heldout_loss_after < result.heldout_loss_before


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (HydraTrainConfig(heads=0), "heads must be 'auto' or a positive integer"),
        (HydraTrainConfig(balance="aux"), "unknown balance term 'aux'"),
        (HydraTrainConfig(router_temperature=0.0), "router temperature must be > 0"),
        (HydraTrainConfig(steps=5, epochs=1.0), "either steps or epochs"),
    ],
)
def test_bad_settings_refused_before_work(
    tmp_path: Path, config: HydraTrainConfig, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train_hydra(make_loaded(), write_topic_files(tmp_path), tmp_path / "o", config)
    assert not (tmp_path / "o").exists()


def test_bad_data_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x"}\n')
    with pytest.raises(InvalidDataFile, match="missing 'target'"):
        train_hydra(make_loaded(), [bad], tmp_path / "o", HydraTrainConfig(heads=1))
    with pytest.raises(InvalidDataFile, match="no training data file"):
        train_hydra(make_loaded(), [], tmp_path / "o", HydraTrainConfig(heads=1))
    assert not (tmp_path / "o" / CONFIG_NAME).exists()


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    paths = write_topic_files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        train_hydra(make_loaded(), paths, out, HydraTrainConfig(heads=1, steps=1))
    train_hydra(
        make_loaded(), paths, out, HydraTrainConfig(heads=1, steps=1), overwrite=True,
        progress=False,
    )
    assert read_config(out).num_heads == 1
    assert not (out / "keep.txt").exists()


def test_train_on_a_seq2seq_model(tmp_path: Path, tiny_seq2seq_dir: Path, load_tiny) -> None:
    """Encoder and decoder layers are wrapped alike; padding is left out of the balance term."""
    from .conftest import write_topic_files as topics

    loaded = load_tiny(tiny_seq2seq_dir)
    config = HydraTrainConfig(heads=2, rank=4, steps=6, lr=5e-3, targets=("q", "v"))
    result = train_hydra(loaded, topics(tmp_path, n_per_topic=6), tmp_path / "t5", config,
                         progress=False)
    module = load_hydra(tmp_path / "t5")
    assert any(name.startswith("encoder.") for name in module.layers)
    assert any(name.startswith("decoder.") for name in module.layers)
    assert len(result.balance_losses) == 6 and all(b >= 1.0 - 1e-6 for b in result.balance_losses)
