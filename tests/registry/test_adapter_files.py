"""Reading adapters without loading them: safetensors headers, configs vs tensors, cards."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save, save_file

from loradex.errors import InvalidAdapter
from registry.adapter_files import inspect_adapter_folder
from registry.adapter_metadata import module_from_metadata
from registry.cards import parse_card
from registry.entities import LineageEdge
from registry.safetensors_header import read_safetensors_header
from tests.support.adapters import lora_tensors, write_lora_adapter


def _raw_file(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


# --------------------------------------------------------------------------- safetensors header


def test_header_matches_what_safetensors_reads(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(lora_tensors(rank=4, layers=1), str(path), metadata={"format": "pt"})
    header = read_safetensors_header(path)
    assert header["__metadata__"] == {"format": "pt"}
    with safe_open(str(path), framework="numpy") as fh:
        for name in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            assert header[name]["shape"] == list(fh.get_slice(name).get_shape())
            assert header[name]["dtype"] == "F32"


def test_header_from_bytes_whole_file_and_prefix() -> None:
    data = save(lora_tensors(rank=2, layers=1))
    whole = read_safetensors_header(data)
    (length,) = struct.unpack("<Q", data[:8])
    prefix = read_safetensors_header(data[: 8 + length], file_size=len(data))
    assert whole == prefix
    with pytest.raises(InvalidAdapter, match="only 10 bytes given"):
        read_safetensors_header(data[:10], file_size=len(data), name="remote.safetensors")


def test_truncated_file_is_refused_naming_it(tmp_path: Path) -> None:
    data = save(lora_tensors(rank=2, layers=1))
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(data[:-5])
    with pytest.raises(InvalidAdapter, match=r"adapter_model\.safetensors: truncated"):
        read_safetensors_header(path)
    path.write_bytes(data[:4])
    with pytest.raises(InvalidAdapter, match="truncated safetensors file"):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (struct.pack("<Q", 2**40) + b"{}", "implausible safetensors header length"),
        (struct.pack("<Q", 1000) + b"{}", "truncated safetensors file"),
        (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (_raw_file({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "unknown dtype 'F99'"),
        (_raw_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
         "spans 4 bytes, but F32"),
        (_raw_file({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "invalid shape"),
        (_raw_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4),
         "invalid data_offsets"),
        (
            _raw_file(
                {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
                b"\0" * 12,
            ),
            "leaves a gap",
        ),
        (
            _raw_file(
                {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                b"\0" * 8,
            ),
            "overlaps",
        ),
        (_raw_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9),
         "data buffer is 9 bytes but the tensors cover 4"),
        (_raw_file({"__metadata__": {"a": 1}}, b""), "__metadata__ must map strings"),
        # valid JSON that json.loads itself cannot take, or that nests without end
        (struct.pack("<Q", 20_000) + b"[" * 10_000 + b"]" * 10_000, "nested more than 64"),
        (struct.pack("<Q", 5006) + b'{"a":' + b"9" * 5000 + b"}", "integer string conversion"),
    ],
)
def test_malformed_headers_are_refused(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(InvalidAdapter, match=message) as info:
        read_safetensors_header(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- adapter folders


def test_inspect_folder_reads_config_header_and_card(tmp_path: Path) -> None:
    folder = write_lora_adapter(
        tmp_path / "past-tense",
        rank=4,
        targets=("q_proj", "k_proj", "v_proj"),
        base_model="/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/1f",
        front_matter={
            "license": "MIT",
            "tags": ["Grammar", "peft"],
            "datasets": ["alice/past-tense-pairs"],
            "language": "en",
            "loradex": {
                "task_name": "past_tense",
                "task_category": "grammar",
                "lineage": [{"repo_id": "bob/a", "revision": "c" * 40, "weight": 0.25}],
            },
        },
        card="# Past tense\n\nTurns present-tense sentences into the past tense.\n",
    )
    module = inspect_adapter_folder(folder)
    assert module.repo_id == "local/past-tense"
    assert module.source == "local"
    assert module.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert module.base_model_raw.startswith("/root/.cache")
    assert (module.rank, module.alpha, module.dropout) == (4, 8.0, 0.05)
    assert module.target_modules == ("k_proj", "q_proj", "v_proj")
    assert module.num_parameters == 2 * 3 * (4 * 32 + 32 * 4)
    assert module.dtype == "float32"
    assert module.license == "mit"
    assert module.tags == ("grammar", "peft")
    assert (module.task_name, module.task_category) == ("past_tense", "grammar")
    assert module.dataset == "alice/past-tense-pairs"
    assert module.language == "en"
    assert module.description == "Turns present-tense sentences into the past tense."
    assert module.card_text.startswith("# Past tense")
    assert module.lineage == (LineageEdge("bob/a", "c" * 40, 0.25, "parent"),)
    assert [f.path for f in module.files] == [
        "README.md", "adapter_config.json", "adapter_model.safetensors",
    ]
    assert module.total_size == sum(f.size for f in module.files)
    weights = next(f for f in module.files if f.path.endswith(".safetensors"))
    assert weights.lfs and len(weights.sha256 or "") == 64


def test_hub_path_builds_the_same_module_from_metadata(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "m", front_matter={"license": "apache-2.0"})
    on_disk = inspect_adapter_folder(folder, repo_id="alice/m", revision="d" * 40)
    data = (folder / "adapter_model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = read_safetensors_header(data[: 8 + length], file_size=len(data))
    from_hub = module_from_metadata(
        "alice/m",
        json.loads((folder / "adapter_config.json").read_text()),
        header,
        (folder / "README.md").read_text(),
        revision="d" * 40,
        files=on_disk.files,
    )
    # The same module, but only the one read from disk knows where its folder is.
    assert on_disk.local_path == str(folder.resolve()) and from_hub.local_path is None
    assert dataclasses.replace(from_hub, local_path=on_disk.local_path) == on_disk


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "old")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidAdapter, match=r"adapter_model\.bin: pickle weights only"):
        inspect_adapter_folder(folder)


def test_rank_mismatch_is_refused(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "r", rank=8, config_overrides={"r": 16})
    with pytest.raises(InvalidAdapter, match=r"has rank 8 .* says r=16"):
        inspect_adapter_folder(folder)


def test_rank_pattern_is_honoured(tmp_path: Path) -> None:
    tensors = lora_tensors(rank=8, targets=("q_proj",), layers=1)
    tensors.update(lora_tensors(rank=4, targets=("v_proj",), layers=1))
    folder = write_lora_adapter(
        tmp_path / "p", rank=8, targets=("q_proj", "v_proj"), tensors=tensors,
        config_overrides={"rank_pattern": {"v_proj": 4}},
    )
    assert inspect_adapter_folder(folder).rank == 8
    bad = write_lora_adapter(tmp_path / "q", rank=8, targets=("q_proj", "v_proj"),
                             tensors=tensors)
    with pytest.raises(InvalidAdapter, match="v_proj has rank 4"):
        inspect_adapter_folder(bad)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (["q_proj", "v_proj", "k_proj"], r"targets \['k_proj'\] have no tensors"),
        (["q_proj"], r"tensors target \['v_proj'\] which the config does not list"),
        (r".*\.o_proj", "not matched by target_modules"),
        ([], "must be a non-empty list or a regex"),
    ],
)
def test_target_mismatch_is_refused(tmp_path: Path, declared: object, message: str) -> None:
    folder = write_lora_adapter(tmp_path / "t", targets=("q_proj", "v_proj"),
                                config_overrides={"target_modules": declared})
    with pytest.raises(InvalidAdapter, match=message):
        inspect_adapter_folder(folder)


def test_regex_and_dotted_targets_are_accepted(tmp_path: Path) -> None:
    regex = write_lora_adapter(tmp_path / "a", config_overrides={
        "target_modules": r".*\.self_attn\.(q_proj|v_proj)"})
    dotted = write_lora_adapter(tmp_path / "b", config_overrides={
        "target_modules": ["self_attn.q_proj", "self_attn.v_proj"]})
    assert inspect_adapter_folder(regex).target_modules == ("q_proj", "v_proj")
    assert inspect_adapter_folder(dotted).target_modules == ("q_proj", "v_proj")


def test_missing_lora_b_and_foreign_types_are_refused(tmp_path: Path) -> None:
    tensors = lora_tensors(rank=2, targets=("q_proj",), layers=1)
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    folder = write_lora_adapter(tmp_path / "a", rank=2, targets=("q_proj",), tensors=tensors)
    with pytest.raises(InvalidAdapter, match="has no lora_B tensor"):
        inspect_adapter_folder(folder)
    ia3 = write_lora_adapter(tmp_path / "b", config_overrides={"peft_type": "IA3"})
    with pytest.raises(InvalidAdapter, match="peft_type is 'IA3'"):
        inspect_adapter_folder(ia3)
    none = write_lora_adapter(tmp_path / "c", tensors={"x.weight": np.zeros((2, 2), "float32")})
    with pytest.raises(InvalidAdapter, match="no lora_A/lora_B tensors"):
        inspect_adapter_folder(none)


def test_config_and_card_problems_are_refused(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "a", card="---\nlicense: [unclosed\n---\nbody\n")
    with pytest.raises(InvalidAdapter, match="YAML front matter is malformed"):
        inspect_adapter_folder(folder)
    folder = write_lora_adapter(tmp_path / "alias", card="---\nlicense: &l mit\nx: *l\n---\n")
    with pytest.raises(InvalidAdapter, match=r"malformed \(YAML aliases \(\*l\)"):
        inspect_adapter_folder(folder)
    folder = write_lora_adapter(tmp_path / "b", config_overrides={"base_model_name_or_path": None})
    with pytest.raises(InvalidAdapter, match="no base model"):
        inspect_adapter_folder(folder)
    folder = write_lora_adapter(tmp_path / "c")
    for text in ("{not json", "[" * 5000 + "]" * 5000):
        (folder / "adapter_config.json").write_text(text)
        with pytest.raises(InvalidAdapter, match=r"adapter_config\.json: not valid JSON"):
            inspect_adapter_folder(folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(InvalidAdapter, match=r"no adapter_config\.json"):
        inspect_adapter_folder(folder)
    with pytest.raises(InvalidAdapter, match="not a folder"):
        inspect_adapter_folder(tmp_path / "missing")


def test_card_base_model_is_the_fallback(tmp_path: Path) -> None:
    folder = write_lora_adapter(
        tmp_path / "a",
        config_overrides={"base_model_name_or_path": None},
        front_matter={"base_model": ["HuggingFaceTB/SmolLM2-360M"]},
    )
    assert inspect_adapter_folder(folder).base_model == "HuggingFaceTB/SmolLM2-360M"


def test_parse_card() -> None:
    assert parse_card(None) == ({}, "")
    assert parse_card("# Title\n\ntext") == ({}, "# Title\n\ntext")
    front, body = parse_card("---\nlicense: mit\ntags:\n- a\n---\n# T\n")
    assert front == {"license": "mit", "tags": ["a"]}
    assert body == "# T"
    assert parse_card("---\n---\nbody") == ({}, "body")
    with pytest.raises(InvalidAdapter, match="not a mapping"):
        parse_card("---\n- a\n- b\n---\n")
