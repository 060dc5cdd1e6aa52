"""Registry fixtures: a migrated store on each database of ``db_url``, and module factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from registry.db import make_engine
from registry.entities import Module, ModuleFile
from registry.schema import upgrade
from registry.store import RegistryStore


@pytest.fixture
def store(db_url: str) -> Iterator[RegistryStore]:
    """A RegistryStore on a freshly migrated database (SQLite file or PostgreSQL schema)."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield RegistryStore(engine)
    finally:
        engine.dispose()


def build_module(repo_id: str, **fields: Any) -> Module:
    """A plausible module; any field can be overridden."""
    values: dict[str, Any] = {
        "repo_id": repo_id,
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "rank": 8,
        "target_modules": ("q_proj", "v_proj"),
        "revision": "a" * 40,
        "alpha": 16.0,
        "dropout": 0.05,
        "task_type": "CAUSAL_LM",
        "author": repo_id.split("/")[0],
        "license": "apache-2.0",
        "tags": ("grammar",),
        "task_name": "past_tense",
        "task_category": "grammar",
        "description": "Rewrites sentences in the past tense.",
        "downloads": 10,
        "likes": 1,
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
        "files": (ModuleFile("adapter_model.safetensors", 1234, "b" * 64, True),),
    }
    values.update(fields)
    values.setdefault("base_model_raw", values["base_model"])
    return Module(**values)


@pytest.fixture
def module_factory() -> Callable[..., Module]:
    """``build_module`` as a fixture."""
    return build_module
