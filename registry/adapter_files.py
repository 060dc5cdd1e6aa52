"""An adapter folder on disk: its files, its JSON configs, and the Module it describes.

Everything here validates at the edge: a file that is not what it claims raises
:class:`~loradex.errors.InvalidAdapter` naming the file and the problem. Tensors are never
loaded: the weights are judged by their safetensors header
(:mod:`registry.safetensors_header`, :mod:`registry.lora_tensors`), the whole adapter by
:func:`registry.adapter_metadata.module_from_metadata`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from loradex.documents import MalformedDocument, parse_json
from loradex.errors import InvalidAdapter
from loradex.files import file_sha256
from registry.adapter_metadata import module_from_metadata
from registry.cards import CARD
from registry.entities import LOCAL_SOURCE, Module, ModuleFile
from registry.lfs import is_lfs_path
from registry.lora_tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from registry.safetensors_header import read_safetensors_header

__all__ = [
    "PICKLE_WEIGHTS",
    "inspect_adapter_folder",
    "list_folder_files",
    "parse_json_object",
    "read_json_object",
]

PICKLE_WEIGHTS = "adapter_model.bin"
HYDRA_CONFIG = "hydra_config.json"  # registry.hydra.CONFIG_NAME (not imported: it imports us)


def read_json_object(path: Path, label: str | None = None) -> dict[str, Any]:
    """A JSON config file as a dict; :class:`InvalidAdapter` naming ``label`` (or the path)."""
    return parse_json_object(path.read_bytes(), label or str(path))


def parse_json_object(text: str | bytes, label: str) -> dict[str, Any]:
    """A JSON config (a file's or a Hub's) as a dict; :class:`InvalidAdapter` naming ``label``."""
    try:
        data = parse_json(text)
    except MalformedDocument as exc:
        raise InvalidAdapter(f"{label}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidAdapter(f"{label}: not a JSON object")
    return data


def list_folder_files(folder: Path) -> tuple[ModuleFile, ...]:
    """Every regular file under ``folder`` (hidden folders skipped) with size and sha256."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        size = path.stat().st_size
        files.append(
            ModuleFile(
                path=rel.as_posix(),
                size=size,
                sha256=file_sha256(path),
                lfs=is_lfs_path(rel.as_posix(), size),
            )
        )
    return tuple(files)


def inspect_adapter_folder(
    path: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    source: str = LOCAL_SOURCE,
) -> Module:
    """Read a PEFT LoRA adapter folder (config, safetensors header, README.md) into a Module.

    A Hydra module folder (``hydra_config.json`` + ``hydra_model.safetensors``, see
    ``docs/hydra-format.md``) is read by :func:`registry.hydra.hydra_module_entity` instead
    (kind ``"hydra"``, with its head count). The default repo id is ``local/<folder name>``.
    Raises :class:`InvalidAdapter` naming the file at fault; tensors are never loaded.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InvalidAdapter(f"{folder}: not a folder")
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file() and (folder / HYDRA_CONFIG).is_file():
        # registry.hydra builds on this module's readers, hence the import here.
        from registry.hydra import hydra_module_entity

        module = hydra_module_entity(folder, repo_id=repo_id, revision=revision, source=source)
        return _remember_folder(module, folder)
    weights_path = folder / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        if (folder / PICKLE_WEIGHTS).is_file():
            raise InvalidAdapter(
                f"{folder / PICKLE_WEIGHTS}: pickle weights only; loradex reads "
                f"{ADAPTER_WEIGHTS} (pickle can run code). Re-save the adapter with "
                "safe_serialization=True"
            )
        raise InvalidAdapter(f"{folder}: no {ADAPTER_WEIGHTS}")
    if not config_path.is_file():
        raise InvalidAdapter(f"{folder}: no {ADAPTER_CONFIG}")
    config = read_json_object(config_path)
    header = read_safetensors_header(weights_path)
    card_path = folder / CARD
    card_text = (
        card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else None
    )
    rid = repo_id or f"{LOCAL_SOURCE}/{folder.resolve().name}"
    module = module_from_metadata(
        rid,
        config,
        header,
        card_text,
        revision=revision,
        source=source,
        files=list_folder_files(folder),
        label=str(folder),
    )
    return _remember_folder(module, folder)


def _remember_folder(module: Module, folder: Path) -> Module:
    """A module read from a folder of its own (source "local") keeps the folder's absolute
    path, so that ``local/NAME`` can be used by id wherever the folder is."""
    if module.source != LOCAL_SOURCE:
        return module
    return replace(module, local_path=str(folder.resolve()))
