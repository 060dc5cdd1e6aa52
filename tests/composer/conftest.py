"""Fixtures for composer tests: tiny real models, real LoRA modules, task files, and the
embedded SmolLM2 loaded once per session for the slow tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.tiny_models import (
    FEW_SHOT,
    save_lora,
    save_tiny_causal,
    save_tiny_seq2seq,
    write_jsonl,
)


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama-style model (read-only: do not modify)."""
    return save_tiny_causal(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_seq2seq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny T5-style model (read-only: do not modify)."""
    return save_tiny_seq2seq(tmp_path_factory.mktemp("tiny") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_loras(tiny_causal_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four rank-4 q/v LoRA modules for the tiny causal model."""
    root = tmp_path_factory.mktemp("loras")
    return [save_lora(tiny_causal_dir, root / f"mod{i}", seed=i) for i in range(4)]


@pytest.fixture(scope="session")
def tiny_t5_loras(tiny_seq2seq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three rank-4 q/v LoRA modules for the tiny T5 model."""
    root = tmp_path_factory.mktemp("t5loras")
    return [
        save_lora(tiny_seq2seq_dir, root / f"t5mod{i}", seed=10 + i, targets=("q", "v"),
                  seq2seq=True)
        for i in range(3)
    ]


@pytest.fixture
def few_shot_file(tmp_path: Path) -> Path:
    """Five few-shot examples as JSONL."""
    return write_jsonl(tmp_path / "few.jsonl", FEW_SHOT)


@pytest.fixture(scope="session")
def load_tiny() -> Callable[..., object]:
    """Load a tiny model folder through composer.models (fresh instance each call)."""
    from composer.models import ModelSpec, load_base_model

    def load(folder: Path, dtype: str = "float32"):
        return load_base_model(ModelSpec(name_or_path=str(folder), device="cpu", dtype=dtype))

    return load


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct, loaded once per session (slow tests only)."""
    from composer.models import load_base_model

    return load_base_model()
