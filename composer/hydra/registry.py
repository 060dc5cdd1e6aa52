"""Index Hydra module folders in the registry, from the config and weights header only.

torch-free: imports only :mod:`composer.hydra.spec` (stdlib) and the registry's helpers, so
``loradex add`` and the Hub sync can describe a Hydra repo without loading tensors. The
registry's own ``inspect_adapter_folder`` reads PEFT folders; a caller dispatches with
``is_hydra_folder(folder)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from composer.hydra.spec import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    HydraHeader,
    describe_hydra,
    inspect_hydra_folder,
    is_hydra_folder,
)
from loradex.errors import InvalidAdapter
from registry.adapter_files import list_folder_files, parse_card
from registry.entities import LOCAL_SOURCE, LineageEdge, Module, ModuleFile
from registry.normalize import (
    normalize_base_model,
    normalize_license,
    normalize_tags,
    normalize_targets,
)

__all__ = [
    "HYDRA_FILES",
    "hydra_module_entity",
    "hydra_module_from_metadata",
    "index_hydra_folder",
    "is_hydra_folder",
]

_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def hydra_module_entity(
    folder: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    source: str = LOCAL_SOURCE,
) -> Module:
    """Describe a Hydra folder as a registry :class:`Module` (kind ``"hydra"``, files hashed).

    The default repo id is ``local/<folder name>``, as for LoRA folders. Raises
    ``InvalidAdapter`` naming the file at fault; tensors are never loaded.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InvalidAdapter(f"{path}: not a folder")
    header = inspect_hydra_folder(path)
    card = path / CARD_NAME
    card_text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else None
    return _module(
        repo_id or f"{LOCAL_SOURCE}/{path.resolve().name}",
        header,
        card_text,
        revision=revision,
        source=source,
        files=list_folder_files(path),
    )


def hydra_module_from_metadata(
    repo_id: str,
    config_raw: Any,
    header_raw: Mapping[str, Any],
    card_text: str | None = None,
    *,
    revision: str | None = None,
    source: str = LOCAL_SOURCE,
    files: Iterable[ModuleFile] = (),
    downloads: int = 0,
    likes: int = 0,
) -> Module:
    """Describe a Hydra repo from metadata fetched from a Hub (config JSON + weights header)."""
    header = describe_hydra(config_raw, header_raw, label=repo_id)
    return _module(
        repo_id,
        header,
        card_text,
        revision=revision,
        source=source,
        files=tuple(files),
        downloads=downloads,
        likes=likes,
    )


def _module(
    repo_id: str,
    header: HydraHeader,
    card_text: str | None,
    *,
    revision: str | None,
    source: str,
    files: Iterable[ModuleFile],
    downloads: int = 0,
    likes: int = 0,
) -> Module:
    config = header.config
    front, body = parse_card(card_text)
    raw_extra = front.get("loradex")
    extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    task = dict(config.task)
    file_list = tuple(sorted(files, key=lambda f: f.path))
    namespace = repo_id.split("/", 1)[0] if "/" in repo_id else None
    lineage = tuple(
        LineageEdge(
            parent_repo_id=str(item["repo_id"]),
            parent_revision=item.get("revision"),
            weight=float(item["weight"]) if item.get("weight") is not None else None,
            role=str(item.get("role") or "parent"),
        )
        for item in extra.get("lineage") or []
        if isinstance(item, dict) and item.get("repo_id")
    )
    datasets = task.get("datasets")
    return Module(
        repo_id=repo_id,
        revision=revision,
        source=source,
        kind="hydra",
        num_heads=config.num_heads,
        base_model=normalize_base_model(config.base_model),
        base_model_raw=config.base_model,
        peft_type="HYDRA",
        task_type="CAUSAL_LM",
        rank=config.rank,
        alpha=config.alpha,
        dropout=0.0,
        target_modules=normalize_targets(config.target_modules),
        bias="none",
        num_parameters=header.num_parameters,
        dtype=_DTYPE_NAMES.get(header.dtype, header.dtype.lower()),
        total_size=sum(f.size for f in file_list) if file_list else None,
        author=_text(front.get("author")) or namespace,
        license=normalize_license(_text(front.get("license"))),
        tags=normalize_tags([*_list(front.get("tags")), "hydra-lora"]),
        task_name=_text(task.get("name")) or _text(extra.get("task_name")),
        task_category=_text(task.get("category")) or _text(extra.get("task_category")),
        dataset=", ".join(str(d) for d in datasets) if isinstance(datasets, list) else None,
        language=_text(front.get("language")),
        description=_text(task.get("description")) or _text(extra.get("description")),
        downloads=downloads,
        likes=likes,
        card_text=body or None,
        files=file_list,
        lineage=lineage,
    )


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


# Names a Hub sync needs to fetch for a Hydra repo.
HYDRA_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)


def index_hydra_folder(db_url: str, folder: str | os.PathLike[str]) -> str:
    """Validate a Hydra folder and upsert it in the registry at ``db_url``; return its repo id."""
    from registry.db import make_engine
    from registry.schema import ensure_schema
    from registry.store import RegistryStore

    ensure_schema(db_url)
    module = hydra_module_entity(folder)
    engine = make_engine(db_url)
    try:
        stored = RegistryStore(engine).upsert_module(module)
    finally:
        engine.dispose()
    return stored.repo_id
