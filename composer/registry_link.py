"""Index adapter folders written by the composer in the registry (through the registry's API)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def registry_available() -> bool:
    """Whether the registry package provides the API the composer indexes through."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("registry.adapter_files", "registry.store", "registry.schema")
    )


def index_adapter_folder(
    db_url: str, folder: str | Path, *, lineage: list[dict[str, Any]] | None = None
) -> str | None:
    """Validate ``folder`` and upsert it in the registry at ``db_url``; return its repo id.

    Returns None (with a note on stderr) when this installation has no registry package.
    """
    if not registry_available():
        print("note: registry not available in this installation; module not indexed",
              file=sys.stderr)
        return None
    from registry.adapter_files import inspect_adapter_folder
    from registry.db import make_engine
    from registry.embedders import load_embedder_or_warn
    from registry.schema import ensure_schema
    from registry.signatures import sign_folder_module
    from registry.store import RegistryStore

    ensure_schema(db_url)
    module = inspect_adapter_folder(Path(folder))
    embedder = load_embedder_or_warn(lambda line: print(line, file=sys.stderr),
                                     "indexed without a card signature")
    module, warning = sign_folder_module(module, Path(folder), embedder)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    engine = make_engine(db_url)
    try:
        stored = RegistryStore(engine).upsert_module(module)
    finally:
        engine.dispose()
    return str(getattr(stored, "repo_id", None) or Path(folder).name)
