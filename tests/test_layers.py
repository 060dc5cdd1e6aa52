"""The layering contracts in pyproject.toml cover every module of the core (docs/internals.md)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict[str, list[str]]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["importlinter"]["contracts"]


def test_every_core_module_is_under_the_core_contract() -> None:
    core = next(c for c in _contracts() if c["name"].startswith("the core"))
    modules = {f"loradex.{path.stem}" for path in (ROOT / "loradex").glob("*.py")
               if path.stem not in {"__init__", "__main__"}}
    assert modules == set(core["source_modules"])


def test_each_layer_is_kept_from_the_ones_above_it() -> None:
    forbidden = {tuple(c["source_modules"]): set(c["forbidden_modules"]) for c in _contracts()}
    assert {"hub_client", "composer", "loradex.cli", "torch"} <= forbidden[("registry",)]
    assert {"composer", "loradex.cli", "torch"} <= forbidden[("hub_client",)]
    assert {"hub_client", "loradex.cli"} <= forbidden[("composer",)]
