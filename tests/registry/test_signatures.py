"""Task signatures: the file format and its limits, storage on both databases, retrieval."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loradex.errors import ConfigError
from registry.embedders import load_embedder
from registry.entities import Module, SearchQuery, Signature
from registry.retrieval import SignatureIndex, retrieve
from registry.signatures import (
    CARD,
    DATA,
    MAX_VECTORS,
    SIGNATURE_FILE,
    InvalidSignature,
    card_signatures,
    card_text,
    data_signature,
    read_signature_file,
    sample_inputs,
    signature_from_array,
    write_signature_file,
)
from registry.store import RegistryStore

Factory = Callable[..., Module]


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    array = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def _raw_file(header: dict[str, object], payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


META = {"format": "loradex-signature", "version": "1", "kind": "data", "embedder": "e@1"}


def test_file_round_trips(tmp_path: Path) -> None:
    sig = signature_from_array(DATA, "e@1", _unit(5, 16, 0))
    path = write_signature_file(tmp_path, sig)
    assert path.name == SIGNATURE_FILE
    back = read_signature_file(path)
    assert (back.kind, back.embedder, back.count, back.dim) == (DATA, "e@1", 5, 16)
    assert back.vectors == sig.vectors
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(("data", "message"), [
    (b"", "truncated"),
    (struct.pack("<Q", 10**9) + b"{}", "header length"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (_raw_file({"inputs": {"dtype": "F16", "shape": [1, 2], "data_offsets": [0, 4]}},
               b"\0" * 4), "not a loradex signature"),
    (_raw_file({"__metadata__": {**META, "version": "9"},
                "inputs": {"dtype": "F16", "shape": [1, 2], "data_offsets": [0, 4]}},
               b"\0" * 4), "version"),
    (_raw_file({"__metadata__": META,
                "inputs": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]}},
               b"\0" * 6), "2-D"),
    (_raw_file({"__metadata__": META,
                "inputs": {"dtype": "F16", "shape": [MAX_VECTORS + 1, 1],
                           "data_offsets": [0, 2 * (MAX_VECTORS + 1)]}},
               b"\0" * 2 * (MAX_VECTORS + 1)), "vectors, expected"),
    (_raw_file({"__metadata__": META,
                "inputs": {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}},
               b"\0" * 7), "truncated"),
    (_raw_file({"__metadata__": META,
                "inputs": {"dtype": "I64", "shape": [1, 1], "data_offsets": [0, 8]}},
               b"\0" * 8), "F16 or F32"),
    (_raw_file({"__metadata__": META,
                "inputs": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}},
               struct.pack("<f", float("nan"))), "NaN"),
])
def test_bad_files_are_one_line_errors(data: bytes, message: str) -> None:
    with pytest.raises(InvalidSignature, match=message) as info:
        read_signature_file(data, label="x/loradex_signature.safetensors")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("x/loradex_signature.safetensors")


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / SIGNATURE_FILE
    path.write_bytes(b"\0" * (5 * 1024 * 1024))
    with pytest.raises(InvalidSignature, match="over the"):
        read_signature_file(path)


def test_sample_is_spread_and_bounded() -> None:
    inputs = [f"example {i}" for i in range(100)]
    sample = sample_inputs(inputs, 10)
    assert len(sample) == 10 and sample[0] == "example 0" and sample[-1] == "example 90"
    assert sample_inputs(["a", "b"], 10) == ["a", "b"]


@pytest.mark.usefixtures("db_url")
def test_signatures_are_stored_with_the_module(store: RegistryStore,
                                               module_factory: Factory) -> None:
    data = signature_from_array(DATA, "e@1", _unit(4, 8, 1))
    card = signature_from_array(CARD, "e@1", _unit(1, 8, 2))
    other = signature_from_array(CARD, "f@2", _unit(1, 8, 3))
    store.upsert_module(dataclasses.replace(module_factory("a/x"),
                                            signatures=(data, card, other)))
    stored = {(s.kind, s.embedder): s for s in store.signatures("a/x")}
    assert set(stored) == {(DATA, "e@1"), (CARD, "e@1"), (CARD, "f@2")}
    assert stored[(DATA, "e@1")].vectors == data.vectors
    assert store.signature_embedders() == {"e@1": 1, "f@2": 1}
    rows = store.signature_rows("e@1")
    assert rows.keys == [("local", "a/x")] and rows.kinds == [DATA]
    # Re-indexing the module replaces everything it had, signatures included.
    store.upsert_module(module_factory("a/x"))
    assert store.signatures("a/x") == []
    store.put_signatures("a/x", None, [card])
    assert [s.kind for s in store.signatures("a/x")] == [CARD]
    store.delete_module("a/x")
    assert store.signature_rows("e@1").keys == []


@pytest.mark.usefixtures("db_url")
def test_index_never_mixes_embedders(store: RegistryStore, module_factory: Factory) -> None:
    near, far = _unit(1, 8, 4), -_unit(1, 8, 4)
    store.upsert_module(dataclasses.replace(
        module_factory("a/near"), signatures=(signature_from_array(DATA, "e@1", near),)))
    store.upsert_module(dataclasses.replace(
        module_factory("a/other"), signatures=(signature_from_array(DATA, "f@2", near),)))
    store.upsert_module(dataclasses.replace(
        module_factory("a/far"), signatures=(signature_from_array(DATA, "e@1", far),)))
    index = SignatureIndex.from_store(store, "e@1")
    hits = index.rank(near)
    assert [h.repo_id for h in hits] == ["a/near", "a/far"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.repo_id for h in index.rank(near, among=[("local", "a/far")])] == ["a/far"]
    assert [h.repo_id for h in index.rank(near, limit=1)] == ["a/near"]


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    return load_embedder()


TASKS = {
    "past-tense": ["Rewrite in the past tense: She walks to school.",
                   "Rewrite in the past tense: They eat dinner together.",
                   "Rewrite in the past tense: I write a letter."],
    "covid-facts": ["Claim: masks reduce the spread of the coronavirus. True or false?",
                    "Claim: vaccines against COVID-19 contain microchips. True or false?",
                    "Claim: the virus survives for days on plastic surfaces. True or false?"],
    "arithmetic": ["What is 17 plus 25?", "Compute 9 times 8.", "What is 144 divided by 12?"],
}


@pytest.mark.usefixtures("db_url")
def test_a_module_trained_on_the_task_ranks_first(store: RegistryStore, module_factory: Factory,
                                                  embedder) -> None:  # type: ignore[no-untyped-def]
    for name, inputs in TASKS.items():
        sig = data_signature(embedder, inputs)
        store.upsert_module(dataclasses.replace(
            module_factory(f"lab/{name}", task_name="misc", description="A LoRA module."),
            signatures=(sig,)))
    pool = store.matching_keys(SearchQuery())
    query = ["Rewrite in the past tense: He runs fast.", "Rewrite in the past tense: We sing."]
    hits = retrieve(store, embedder, query, pool)
    assert hits[0].repo_id == "lab/past-tense" and hits[0].signature == DATA
    hits = retrieve(store, embedder, ["Is this claim about COVID vaccines true?"], pool)
    assert hits[0].repo_id == "lab/covid-facts"


@pytest.mark.usefixtures("db_url")
def test_unsigned_modules_fall_back_to_card_text(store: RegistryStore, module_factory: Factory,
                                                 embedder) -> None:  # type: ignore[no-untyped-def]
    store.upsert_module(module_factory("lab/tense", task_name="past_tense",
                                       description="Rewrites sentences in the past tense."))
    store.upsert_module(module_factory("lab/math", task_name="arithmetic",
                                       description="Adds and multiplies numbers.",
                                       tags=("math",)))
    pool = store.matching_keys(SearchQuery())
    hits = retrieve(store, embedder, ["What is 12 times 7?", "Compute 5 plus 9."], pool)
    assert [h.repo_id for h in hits] == ["lab/math", "lab/tense"]
    assert hits[0].signature == "card (computed now)"
    # Stored card signatures are used as they are.
    modules = store.modules_by_keys(pool)
    signed = card_signatures(embedder, modules)
    for module, sig in zip(modules, signed, strict=True):
        store.put_signatures(module.repo_id, module.source, [sig])
    hits = retrieve(store, embedder, ["What is 12 times 7?"], pool)
    assert hits[0].repo_id == "lab/math" and hits[0].signature == CARD
    assert store.matching_keys(SearchQuery(task="arithmetic")) == [("local", "lab/math")]
    assert retrieve(store, embedder, ["Compute 5 plus 9."], [("local", "lab/tense")],
                    )[0].repo_id == "lab/tense"
    with pytest.raises(ConfigError, match="no example inputs"):
        retrieve(store, embedder, ["  "], pool)


def test_card_text_says_what_the_module_does(module_factory: Factory) -> None:
    text = card_text(module_factory("lab/past-tense", tags=("grammar", "base_model:x")))
    assert "past tense" in text and "grammar" in text and "base_model" not in text


def test_embedder_gives_unit_vectors_and_a_stable_name(embedder) -> None:  # type: ignore[no-untyped-def]
    vectors = embedder.embed(["a short text", "another, longer text " * 200, ""])
    assert vectors.shape == (3, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, atol=1e-5)
    assert embedder.name.startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert embedder.embed([]).shape == (0, embedder.dim)
    assert isinstance(signature_from_array(DATA, embedder.name, vectors[:2]), Signature)


def test_mixed_pools_rank_each_kind_on_its_own_scale() -> None:
    """Data signatures sit closer to a query than any card does; with enough of each kind in
    the pool, the best card match ranks by how it stands among cards."""
    query = np.zeros(4, dtype=np.float32)
    query[0] = 1.0

    def at(cosine: float) -> np.ndarray:
        return np.array([cosine, np.sqrt(1 - cosine**2), 0, 0], dtype=np.float32)

    data = [0.80, 0.81, 0.82, 0.83, 0.84]
    cards = [0.10, 0.11, 0.12, 0.13, 0.60]
    keys = [("s", f"d{i}") for i in range(5)] + [("s", f"c{i}") for i in range(5)]
    index = SignatureIndex("e@1", keys, [DATA] * 5 + [CARD] * 5,
                           np.stack([at(c) for c in data + cards]))
    hits = index.rank(query)
    assert hits[0].repo_id == "c4" and hits[0].score == pytest.approx(0.60, abs=1e-5)
    # Too few of one kind to standardise: plain cosine.
    small = SignatureIndex("e@1", keys[:6], [DATA] * 5 + [CARD],
                           np.stack([at(c) for c in [*data, 0.6]]))
    assert [h.repo_id for h in small.rank(query)][::5] == ["d4", "c0"]


def test_a_signature_file_is_the_same_bytes_in_every_process() -> None:
    """Same signature, same file, whatever the process's hash seed (a Ray worker and a local
    run of the same library build write identical folders)."""
    import os
    import subprocess
    import sys

    script = ("import hashlib, numpy as np; from registry.signatures import signature_file_bytes, "
              "signature_from_array as s; a = np.arange(12, dtype='float32').reshape(3, 4); "
              "print(hashlib.sha256(signature_file_bytes(s('data', 'e', a))).hexdigest())")
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1
