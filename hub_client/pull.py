"""``loradex pull``: download an adapter through huggingface_hub's cache and verify it.

Files land in the huggingface_hub cache layout (temporary file, then rename: atomic; partial
downloads resume). A Hydra repo (``hydra_config.json`` + ``hydra_model.safetensors``) is
pulled the same way. Each file's sha256 is checked against what the registry recorded for that
revision and against the Hub's LFS sha256, and the weights and config are validated (header
and shapes, never the tensors) before anything is placed. Pickle-only repos are refused before
anything is downloaded. When the Hub cannot be reached, the cached snapshot is used.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loradex.errors import HubUnavailable, InvalidAdapter, ModuleNotFound
from loradex.files import atomic_write, file_sha256
from registry.adapter_files import PICKLE_WEIGHTS, read_json_object
from registry.adapter_metadata import module_from_metadata
from registry.cards import CARD
from registry.hydra import CONFIG_NAME as HYDRA_CONFIG
from registry.hydra import WEIGHTS_NAME as HYDRA_WEIGHTS
from registry.hydra import describe_hydra
from registry.lora_tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from registry.safetensors_header import read_safetensors_header
from registry.signatures import SIGNATURE_FILE

if TYPE_CHECKING:
    from hub_client.client import HubClient
    from registry.entities import Module
    from registry.store import RegistryStore

REQUIRED = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
HYDRA_REQUIRED = (HYDRA_WEIGHTS, HYDRA_CONFIG)  # a Hydra module (docs/hydra-format.md)


@dataclass(frozen=True)
class PullResult:
    """Where a pulled adapter is, at which revision, and whether the Hub was reached."""

    repo_id: str = field(metadata={"help": "repo id"})
    revision: str = field(metadata={"help": "commit sha of the files"})
    folder: Path = field(metadata={"help": "folder holding the files (snapshot or --to)"})
    files: tuple[Path, ...] = field(metadata={"help": "the files"})
    from_cache: bool = field(default=False, metadata={"help": "served offline from the cache"})


def _registry_module(store: RegistryStore, repo_id: str, endpoint: str) -> Module | None:
    for source in (endpoint, None):
        try:
            return store.get_module(repo_id, source=source)
        except ModuleNotFound:
            continue
    return None


def pull_module(
    client: HubClient,
    store: RegistryStore,
    repo_id: str,
    revision: str | None = None,
    *,
    target: Path | None = None,
    offline: bool = False,
) -> PullResult:
    """Download (or find in the cache) the adapter files of ``repo_id`` and verify them."""
    expected: dict[str, str] = {}
    known = _registry_module(store, repo_id, client.endpoint)
    names: list[str] = list(
        HYDRA_REQUIRED if known is not None and known.kind == "hydra" else REQUIRED
    )
    from_cache = offline
    sha = revision
    if not offline:
        try:
            info = client.model_info(repo_id, revision=revision)
        except HubUnavailable:
            from_cache = True
        else:
            siblings = {s.rfilename: s for s in info.siblings or []}
            if ADAPTER_CONFIG not in siblings and HYDRA_CONFIG in siblings:
                names = list(HYDRA_REQUIRED)
                if HYDRA_WEIGHTS not in siblings:
                    raise InvalidAdapter(f"{repo_id}: no {HYDRA_WEIGHTS} in the repo")
            elif ADAPTER_WEIGHTS not in siblings:
                if PICKLE_WEIGHTS in siblings:
                    raise InvalidAdapter(
                        f"{repo_id}: pickle weights only ({PICKLE_WEIGHTS}); loradex will not "
                        f"load pickle (it can run code). Ask for a {ADAPTER_WEIGHTS} version"
                    )
                raise InvalidAdapter(f"{repo_id}: no {ADAPTER_WEIGHTS} in the repo")
            if names[1] not in siblings:
                raise InvalidAdapter(f"{repo_id}: no {names[1]} in the repo")
            # Optional files that travel with a module: its card and its task signature.
            names += [name for name in (CARD, SIGNATURE_FILE) if name in siblings]
            sha = info.sha
            for name in names:
                lfs = siblings[name].lfs
                if lfs is not None:
                    expected[name] = lfs.sha256
    paths: list[Path] = []
    for name in names:
        try:
            paths.append(client.download(repo_id, name, revision=sha, offline=from_cache))
        except HubUnavailable:
            if from_cache or name in (CARD, SIGNATURE_FILE):
                raise
            # The Hub went away between calls: start over from the cache.
            return pull_module(client, store, repo_id, revision, target=target, offline=True)
    if not from_cache and sha is not None:
        client.remember_ref(paths[0], revision or "main", sha)
    if from_cache:
        for optional in (CARD, SIGNATURE_FILE):
            try:
                paths.append(client.download(repo_id, optional, revision=sha, offline=True))
                names.append(optional)
            except (HubUnavailable, ModuleNotFound):
                pass
        sha = paths[0].parent.name  # the snapshot folder is named by the commit sha
    assert sha is not None
    module = known
    if module is not None and module.revision == sha:
        for f in module.files:
            if f.sha256:
                expected.setdefault(f.path, f.sha256)
                if expected[f.path] != f.sha256:
                    raise InvalidAdapter(
                        f"{repo_id}/{f.path}: the Hub announces sha256 {expected[f.path]}, "
                        f"the registry recorded {f.sha256}"
                    )
    for path, name in zip(paths, names, strict=False):
        want = expected.get(name)
        if want is not None:
            got = file_sha256(path)
            if got != want:
                raise InvalidAdapter(
                    f"{repo_id}/{name}@{sha[:12]}: sha256 {got} does not match "
                    f"the expected {want}; "
                    "delete it from the cache and pull again"
                )
    folder = paths[0].parent
    _check_adapter_files(repo_id, sha, dict(zip(names, paths, strict=True)))
    if target is not None:
        paths = [_place(path, target, name) for path, name in zip(paths, names, strict=False)]
        folder = target
    return PullResult(repo_id, sha, folder, tuple(paths), from_cache)


def _check_adapter_files(repo_id: str, sha: str, files: dict[str, Path]) -> None:
    """Refuse weights or a config that are malformed, before anything is placed.

    The sha256 checks prove the bytes are what the Hub announced, not that they are an adapter:
    a Hub (or whoever pushed to it) can announce a broken file. The card is not judged here; a
    malformed card does not stop anyone from using the weights.
    """
    label = f"{repo_id}@{sha[:12]}"
    if HYDRA_CONFIG in files:
        config = read_json_object(files[HYDRA_CONFIG], f"{label}/{HYDRA_CONFIG}")
        header = read_safetensors_header(files[HYDRA_WEIGHTS], name=f"{label}/{HYDRA_WEIGHTS}")
        describe_hydra(config, header, label=label)
    else:
        config = read_json_object(files[ADAPTER_CONFIG], f"{label}/{ADAPTER_CONFIG}")
        header = read_safetensors_header(files[ADAPTER_WEIGHTS], name=f"{label}/{ADAPTER_WEIGHTS}")
        module_from_metadata(repo_id, config, header, label=label)


def _place(source: Path, target: Path, name: str) -> Path:
    """Copy a cached file into ``target`` atomically (temp file + rename)."""
    target.mkdir(parents=True, exist_ok=True)
    final = target / name
    atomic_write(final, lambda tmp: shutil.copyfile(source.resolve(), tmp))
    return final
