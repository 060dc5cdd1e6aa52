"""On-disk format: exact round trips, torch-free inspection, and refusal of bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from composer.hydra.format import load_hydra, save_hydra
from loradex.errors import InvalidAdapter
from loradex.files import current_umask
from registry.hydra import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    inspect_hydra_folder,
)

from .conftest import random_hydra


@pytest.fixture
def saved(tmp_path: Path, tiny_llama) -> Path:
    folder = tmp_path / "hydra"
    save_hydra(random_hydra(tiny_llama), folder, card="---\ntags: [hydra-lora]\n---\n")
    return folder


def test_save_load_round_trip_is_exact(tmp_path: Path, tiny_llama) -> None:
    module = random_hydra(tiny_llama, num_heads=4)
    save_hydra(module, tmp_path / "h")
    loaded = load_hydra(tmp_path / "h")
    assert loaded.config == module.config
    assert loaded.layers.keys() == module.layers.keys()
    for name, layer in module.layers.items():
        other = loaded.layers[name]
        assert torch.equal(other.lora_A, layer.lora_A)
        assert torch.equal(other.lora_B, layer.lora_B)
        assert torch.equal(other.router_weight, layer.router_weight)
        assert other.router_bias is not None and layer.router_bias is not None
        assert torch.equal(other.router_bias, layer.router_bias)
    # No temporary files left behind, and the files written through them are not 0600.
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (tmp_path / "h" / name).stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_tensor_names_and_shapes_on_disk(saved: Path) -> None:
    tensors = load_file(str(saved / WEIGHTS_NAME))
    layer = "model.layers.0.self_attn.q_proj"
    assert tensors[f"{layer}.lora_A.weight"].shape == (4, 32)
    assert tensors[f"{layer}.lora_B.2.weight"].shape == (32, 4)
    assert tensors[f"{layer}.router.weight"].shape == (3, 32)
    assert tensors[f"{layer}.router.bias"].shape == (3,)
    assert (saved / "README.md").read_text().startswith("---")


def test_inspect_reads_header_only(saved: Path) -> None:
    header = inspect_hydra_folder(saved)
    assert header.config.num_heads == 3
    assert header.config.rank == 4
    assert len(header.layers) == 4  # q and v of 2 layers
    assert header.dtype == "F32"
    # q_proj: A 4*32 + B 3*32*4 + router 3*32 + bias 3 ; v_proj out is 16 (2 kv heads * 8).
    q = 4 * 32 + 3 * 32 * 4 + 3 * 32 + 3
    v = 4 * 32 + 3 * 16 * 4 + 3 * 32 + 3
    assert header.num_parameters == 2 * (q + v)


def _rewrite_config(folder: Path, **changes) -> None:
    path = folder / CONFIG_NAME
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


def _rewrite_tensors(folder: Path, edit) -> None:
    path = folder / WEIGHTS_NAME
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 4}, "has heads [0, 1, 2] but num_heads=4"),
        ({"format_version": 2}, "unsupported format_version 2"),
        ({"rank": None}, "missing key 'rank'"),
        ({"router": {"kind": "mlp", "temperature": 1.0}}, "unknown router kind 'mlp'"),
        ({"router": {"kind": "linear", "temperature": 0}}, "temperature' must be a positive"),
        ({"rank": 8}, "expected [8, in]"),
        ({"target_modules": ["q_proj"]}, "not in target_modules"),
        ({"format": "peft"}, "'format' must be 'loradex-hydra'"),
    ],
)
def test_bad_config_is_refused(saved: Path, changes: dict, message: str) -> None:
    _rewrite_config(saved, **changes)
    with pytest.raises(InvalidAdapter, match=None) as info:
        load_hydra(saved)
    assert message in str(info.value)
    assert CONFIG_NAME in str(info.value) or WEIGHTS_NAME in str(info.value)
    with pytest.raises(InvalidAdapter):
        inspect_hydra_folder(saved)


def test_missing_router_is_refused(saved: Path) -> None:
    _rewrite_tensors(saved, lambda t: t.pop("model.layers.1.self_attn.v_proj.router.weight"))
    with pytest.raises(InvalidAdapter, match=r"v_proj' has no router"):
        load_hydra(saved)


def test_missing_head_is_refused(saved: Path) -> None:
    _rewrite_tensors(saved, lambda t: t.pop("model.layers.0.self_attn.q_proj.lora_B.1.weight"))
    with pytest.raises(InvalidAdapter, match=r"heads \[0, 2\] but num_heads=3"):
        load_hydra(saved)


def test_router_shape_mismatch_is_refused(saved: Path) -> None:
    def edit(tensors: dict) -> None:
        tensors["model.layers.0.self_attn.q_proj.router.weight"] = torch.zeros(3, 31)

    _rewrite_tensors(saved, edit)
    expected = r"router\.weight has shape \[3, 31\], expected \[3, 32\]"
    with pytest.raises(InvalidAdapter, match=expected):
        load_hydra(saved)


def test_unknown_tensor_is_refused(saved: Path) -> None:
    def edit(tensors: dict) -> None:
        tensors["model.layers.0.self_attn.q_proj.lora_C.weight"] = torch.zeros(1)

    _rewrite_tensors(saved, edit)
    with pytest.raises(InvalidAdapter, match="unexpected tensor"):
        load_hydra(saved)


def test_pickle_only_and_truncated_are_refused(saved: Path) -> None:
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidAdapter, match="truncated"):
        load_hydra(saved)
    (saved / WEIGHTS_NAME).unlink()
    (saved / "hydra_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidAdapter, match="safetensors only"):
        inspect_hydra_folder(saved)


def test_not_a_hydra_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match=r"no hydra_config\.json"):
        load_hydra(tmp_path)


def test_save_refuses_inconsistent_module(tmp_path: Path, tiny_llama) -> None:
    module = random_hydra(tiny_llama)
    next(iter(module.layers.values())).router_weight = torch.zeros(2, 32)
    with pytest.raises(InvalidAdapter, match=r"router\.weight has shape"):
        save_hydra(module, tmp_path / "out")
    assert not (tmp_path / "out" / CONFIG_NAME).exists()
