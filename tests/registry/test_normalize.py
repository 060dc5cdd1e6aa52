"""Base-model, tag and target normalisation: what users filter on must compare equal."""

from __future__ import annotations

import pytest

from registry.normalize import (
    base_model_key,
    normalize_base_model,
    normalize_license,
    normalize_tags,
    target_key,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        ("  meta-llama/Llama-2-7b-hf/ ", "meta-llama/Llama-2-7b-hf"),
        ("https://huggingface.co/meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        ("https://huggingface.co/meta-llama/Llama-2-7b-hf/tree/main", "meta-llama/Llama-2-7b-hf"),
        ("hf.co/meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        (
            "/root/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/"
            "8cca527612d856d7d32bd94f8103728d614eb852",
            "meta-llama/Llama-2-7b-hf",
        ),
        (
            "/root/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/abc/",
            "meta-llama/Llama-2-7b-hf",
        ),
        ("/home/alice/models/meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        ("/home/alice/models/meta-llama/Llama-2-7b-hf/", "meta-llama/Llama-2-7b-hf"),
        ("C:\\Users\\alice\\meta-llama\\Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        ("./Llama-2-7b-hf", "Llama-2-7b-hf"),
        ("gpt2", "gpt2"),
    ],
)
def test_normalize_base_model(raw: str, expected: str) -> None:
    assert normalize_base_model(raw) == expected


def test_base_model_key_is_case_insensitive_and_idempotent() -> None:
    a = base_model_key("https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/")
    b = base_model_key("huggingfacetb/smollm2-135m-instruct")
    assert a == b == "huggingfacetb/smollm2-135m-instruct"
    once = normalize_base_model("/x/models--org--Name/snapshots/1")
    assert normalize_base_model(once) == once == "org/Name"


def test_tags_targets_and_license() -> None:
    assert normalize_tags([" Grammar", "grammar", "", "EN"]) == ("en", "grammar")
    assert target_key(["v_proj", "q_proj", "q_proj"]) == "q_proj,v_proj"
    assert normalize_license(" Apache-2.0 ") == "apache-2.0"
    assert normalize_license("  ") is None
