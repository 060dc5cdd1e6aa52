"""Index hosted adapters into the registry tables of the server's own database at commit time.

A repo holding ``adapter_config.json`` + ``adapter_model.safetensors`` (a PEFT LoRA), or
``hydra_config.json`` + ``hydra_model.safetensors`` (a Hydra module), becomes a registry module
(source = the server's public URL, or ``local``) as soon as the commit lands, so
``loradex --db SAME search`` sees uploads at once. The adapter is judged by the registry's own
``module_from_metadata`` (``hydra_module_from_metadata`` for Hydra); a broken adapter stays
stored (this is a Hub) but is not indexed, and the reason is logged. A deleted repo, or one
whose head is no longer a valid adapter, leaves the registry.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC

from sqlalchemy import Engine

from loradex.errors import InvalidAdapter, ModuleNotFound
from registry.adapter_files import read_json_object
from registry.adapter_metadata import module_from_metadata
from registry.cards import CARD
from registry.entities import Module, ModuleFile
from registry.hydra import CONFIG_NAME as HYDRA_CONFIG
from registry.hydra import WEIGHTS_NAME as HYDRA_WEIGHTS
from registry.hydra import hydra_module_from_metadata
from registry.lora_tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from registry.safetensors_header import read_safetensors_header
from registry.server.types import HostedCommit, Indexer, ServerConfig
from registry.store import RegistryStore

log = logging.getLogger("loradex.server")


def hosted_module(commit: HostedCommit, source: str) -> Module | None:
    """The registry Module of a hosted commit, or None when the repo holds no adapter."""
    files = {f.path: f for f in commit.files}
    if ADAPTER_CONFIG in files and ADAPTER_WEIGHTS in files:
        config_name, weights_name = ADAPTER_CONFIG, ADAPTER_WEIGHTS
    elif HYDRA_CONFIG in files and HYDRA_WEIGHTS in files and ADAPTER_CONFIG not in files:
        config_name, weights_name = HYDRA_CONFIG, HYDRA_WEIGHTS
    else:
        return None
    label = f"{commit.repo_id}@{commit.sha[:12]}"
    config_path = commit.blobs.path_for(files[config_name].sha256)
    config = read_json_object(config_path, f"{label}/{config_name}")
    header = read_safetensors_header(
        commit.blobs.path_for(files[weights_name].sha256), name=f"{label}/{weights_name}"
    )
    card = files.get(CARD)
    card_text = (
        commit.blobs.path_for(card.sha256).read_text(encoding="utf-8", errors="replace")
        if card is not None
        else None
    )
    module_files = [
        ModuleFile(f.path, f.size, f.sha256, f.is_lfs)
        for f in commit.files
        if f.path != ".gitattributes"
    ]
    created = commit.created_at.replace(tzinfo=UTC)
    if config_name == HYDRA_CONFIG:
        return hydra_module_from_metadata(
            commit.repo_id, config, header, card_text, revision=commit.sha, source=source,
            files=module_files, created_at=created, updated_at=created,
        )
    return module_from_metadata(
        commit.repo_id, config, header, card_text, revision=commit.sha, source=source,
        files=module_files, created_at=created, updated_at=created, label=label,
    )


def make_registry_indexer(engine: Engine, config: ServerConfig) -> Indexer:
    """An indexer writing hosted adapters into the registry of ``engine``."""
    store = RegistryStore(engine)
    source = config.source

    def index(commit: HostedCommit) -> None:
        try:
            module = hosted_module(commit, source)
        except InvalidAdapter as exc:
            log.warning("stored but not indexed: %s", exc)
            module = None
        if module is None:  # deleted, no longer an adapter, or broken: drop a stale entry
            with contextlib.suppress(ModuleNotFound):
                store.delete_module(commit.repo_id, source=source)
            return
        store.upsert_module(_with_data_signature(module, commit))

    return index


def _with_data_signature(module: Module, commit: HostedCommit) -> Module:
    """The module with the data signature its commit carries (a bad file is logged and left
    out: the repo is still indexed). Card signatures need the embedder, which the server
    does not load: ``loradex db sign`` makes them."""
    from dataclasses import replace

    from registry.signatures import DATA, SIGNATURE_FILE, InvalidSignature, read_signature_file

    entry = next((f for f in commit.files if f.path == SIGNATURE_FILE), None)
    if entry is None:
        return module
    label = f"{commit.repo_id}@{commit.sha[:12]}/{SIGNATURE_FILE}"
    try:
        signature = read_signature_file(commit.blobs.path_for(entry.sha256), label=label)
    except InvalidSignature as exc:
        log.warning("indexed without its signature: %s", exc)
        return module
    if signature.kind != DATA:
        log.warning("indexed without its signature: %s is a %r signature", label, signature.kind)
        return module
    return replace(module, signatures=(signature,))
