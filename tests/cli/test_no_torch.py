"""``loradex search`` (help and a real search) must never import torch, nor anything else a
search does not need: it has to start fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.adapters import write_lora_adapter

# Runs the real entry point, then reports which heavy modules got imported.
_PROBE = """
import json, sys
from loradex.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "transformers", "peft", "nevergrad", "alembic", "uvicorn")
               if m in sys.modules)
print("PROBE " + json.dumps({"code": code, "heavy": heavy, "loaded": sorted(sys.modules)}),
      file=sys.stderr)
"""

# What a search must not load: the migration machinery (the schema is at head), the Hub client
# and server stacks, tensors, YAML cards, progress bars, and the layers above the registry.
# Each is imported inside the function that needs it (docs/internals.md).
NOT_FOR_SEARCH = (
    "alembic", "huggingface_hub", "httpx", "numpy", "yaml", "tqdm", "safetensors", "starlette",
    "uvicorn", "torch", "transformers", "peft", "nevergrad", "ray", "hub_client", "composer",
    "registry.server", "registry.adapter_files", "registry.hydra", "registry.embedders",
)


def _probe(args: list[str], home: Path) -> tuple[dict, str]:
    env = dict(os.environ, LORADEX_HOME=str(home))
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE "):]), proc.stdout


def test_search_help_does_not_import_torch(tmp_path: Path) -> None:
    result, out = _probe(["search", "--help"], tmp_path)
    assert result["code"] in (0, None)
    assert "Usage: loradex search" in out
    assert "torch" not in result["heavy"], result


def test_real_search_does_not_import_torch(tmp_path: Path, db_url: str) -> None:
    home = tmp_path / "home"
    db = ["--db", db_url]
    # First use creates and migrates the database (that path may import alembic).
    result, out = _probe([*db, "add", str(write_lora_adapter(tmp_path / "past-tense"))], home)
    assert result["code"] in (0, None), out
    result, out = _probe([*db, "search", "past", "tense"], home)
    assert result["code"] in (0, None), out
    assert "local/past-tense" in out
    # Schema already at head: neither torch nor alembic on the hot path.
    assert result["heavy"] == [], result
    result, out = _probe([*db, "search", "--json"], home)
    assert json.loads(out)["total"] == 1
    assert result["heavy"] == [], result


def test_search_loads_only_what_a_search_needs(tmp_path: Path, db_url: str) -> None:
    home = tmp_path / "home"
    db = ["--db", db_url]
    result, out = _probe([*db, "add", str(write_lora_adapter(tmp_path / "past-tense"))], home)
    assert result["code"] in (0, None), out
    result, out = _probe([*db, "search", "past", "tense"], home)
    assert result["code"] in (0, None), out
    assert "local/past-tense" in out
    loaded = set(result["loaded"])
    found = sorted(name for name in NOT_FOR_SEARCH
                   if name in loaded or any(m.startswith(name + ".") for m in loaded))
    assert found == [], f"loradex search imported {found}"
    if db_url.startswith("sqlite"):
        assert "psycopg" not in loaded
