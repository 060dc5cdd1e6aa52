"""Candidate modules for composition: where they are, what they are, whether they fit together.

Everything here works from ``adapter_config.json`` and the safetensors header (through the
registry's validator), so incompatible candidates are refused before any model is loaded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loradex.errors import IncompatibleModules, InvalidAdapter, ModuleNotFound
from registry.entities import LOCAL_SOURCE

if TYPE_CHECKING:
    import torch

    from registry.entities import Module, SearchQuery

@dataclass(frozen=True)
class Candidate:
    """One candidate module: its identity (for provenance) and its adapter folder on disk."""

    repo_id: str
    revision: str | None
    folder: Path
    base_model: str
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    task_type: str | None

    @property
    def scale(self) -> float:
        """PEFT's ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        from composer.lora_math import lora_scale

        return lora_scale(self.alpha, self.rank, self.use_rslora)


@dataclass(frozen=True)
class LayerTensors:
    """One targeted layer of one module: ``A [r, in]`` and ``B [out, r]``."""

    a: torch.Tensor
    b: torch.Tensor


def read_candidate(
    folder: str | Path, *, repo_id: str | None = None, revision: str | None = None
) -> Candidate:
    """Read and validate an adapter folder (config + safetensors header; no tensors loaded)."""
    from registry.adapter_files import inspect_adapter_folder
    from registry.peft_options import read_peft_options

    path = Path(folder).expanduser()
    if not path.exists():
        raise ModuleNotFound(f"candidate {folder}: no such folder")
    module = inspect_adapter_folder(path, repo_id=repo_id, revision=revision)
    config = json.loads((path / "adapter_config.json").read_text())
    blocker = read_peft_options(config).composition_blocker()
    if blocker:
        raise InvalidAdapter(f"{path}: {blocker}")
    return Candidate(
        repo_id=module.repo_id,
        revision=module.revision,
        folder=path,
        base_model=module.base_model,
        rank=module.rank,
        alpha=float(module.alpha if module.alpha is not None else module.rank),
        use_rslora=bool(config.get("use_rslora", False)),
        target_modules=tuple(module.target_modules),
        task_type=module.task_type,
    )


# Turns (repo_id, revision or None) into (folder, revision): e.g. a pull through hub_client.
Fetcher = Callable[[str, str | None], tuple[Path, str]]


def resolve_candidate(
    ref: str,
    cache_dir: Path | None = None,
    module_dirs: Sequence[Path] = (),
    fetch: Fetcher | None = None,
    local_module: Callable[[str], Module | None] | None = None,
) -> Candidate:
    """A candidate from a folder path, or a Hub repo id (``id`` or ``id@revision``).

    ``local/NAME`` (a module indexed from a folder) is the folder the registry recorded when
    it was added (``local_module`` looks it up), else ``DIR/NAME`` in ``module_dirs``. A Hub
    id goes through ``fetch`` when given (e.g. ``loradex pull``), else it must already be in
    the huggingface_hub cache at ``cache_dir``.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return read_candidate(path)
    repo_id, _, revision = ref.partition("@")
    if ref.startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise ModuleNotFound(f"candidate {ref}: no such folder")
    if repo_id.startswith("local/"):
        indexed = local_module(repo_id) if local_module is not None else None
        if indexed is not None and indexed.local_path:
            return candidate_from_module(indexed, cache_dir, module_dirs, fetch)
        name = repo_id.split("/", 1)[1]
        for folder in module_dirs:
            if (Path(folder) / name).is_dir():
                return read_candidate(Path(folder) / name)
        where = ", ".join(str(d) for d in module_dirs) or "no --modules-dir given"
        raise ModuleNotFound(
            f"candidate {ref}: a module indexed from a local folder; no folder {name!r} under "
            f"{where} (pass its folder path, or --modules-dir)"
        )
    if fetch is not None:
        folder, rev = fetch(repo_id, revision or None)
        return read_candidate(folder, repo_id=repo_id, revision=rev)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=str(cache_dir) if cache_dir else None,
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise ModuleNotFound(
            f"candidate {ref}: not a folder and not in the local cache (run `loradex pull {ref}`)"
        ) from None
    snap = Path(snapshot)
    return read_candidate(snap, repo_id=repo_id, revision=revision or snap.name)


def candidate_from_module(
    module: Module,
    cache_dir: Path | None = None,
    module_dirs: Sequence[Path] = (),
    fetch: Fetcher | None = None,
) -> Candidate:
    """The candidate for a registry module: a module added from a folder is read from the
    folder it was added from, checked to hold the same files (sha256) as when it was indexed;
    any other module is resolved by id and revision (cache or ``fetch``)."""
    from loradex.files import file_sha256

    if module.source != LOCAL_SOURCE or not module.local_path:
        ref = f"{module.repo_id}@{module.revision}" if module.revision else module.repo_id
        return resolve_candidate(ref, cache_dir, module_dirs, fetch)
    folder = Path(module.local_path)
    if not folder.is_dir():
        raise ModuleNotFound(
            f"candidate {module.repo_id}: its folder {folder} is gone (moved or deleted); "
            "`loradex add` it again from where it is now"
        )
    for recorded in module.files:
        if recorded.path in ADAPTER_FILES and recorded.sha256:
            path = folder / recorded.path
            if not path.is_file() or file_sha256(path) != recorded.sha256:
                raise IncompatibleModules(
                    f"candidate {module.repo_id}: {path} changed since it was indexed; "
                    f"`loradex add {folder}` again to index what is there now"
                )
    return read_candidate(folder, repo_id=module.repo_id, revision=module.revision)


# The files that define a module's weights: a change to either makes its index stale.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_compatible(
    candidates: Sequence[Candidate],
    *,
    base_model: str | None = None,
    same_rank: bool = True,
    method: str = "lorahub",
) -> None:
    """Raise :class:`IncompatibleModules` unless the candidates can be composed together.

    All must share the base model (and match ``base_model`` when given) and the target
    modules; with ``same_rank`` also the rank and scale, as the LoraHub composition needs.
    """
    from registry.normalize import base_model_key, recorded_base_model

    if not candidates:
        raise IncompatibleModules("no candidate modules to compose")
    ids = [c.repo_id for c in candidates]
    dupes = sorted({i for i in ids if ids.count(i) > 1 and not i.startswith("local/")})
    if dupes:
        raise IncompatibleModules(f"candidate(s) given twice: {', '.join(dupes)}")
    first = candidates[0]
    if base_model is not None:
        want = base_model_key(base_model)
        for c in candidates:
            if base_model_key(c.base_model) != want:
                raise IncompatibleModules(
                    f"{c.repo_id} was trained on {c.base_model}, not on the base model "
                    f"{recorded_base_model(base_model)[0]}"
                )
    for c in candidates[1:]:
        if base_model_key(c.base_model) != base_model_key(first.base_model):
            raise IncompatibleModules(
                f"mixed base models: {first.repo_id} is for {first.base_model}, "
                f"{c.repo_id} is for {c.base_model}"
            )
        if set(c.target_modules) != set(first.target_modules):
            raise IncompatibleModules(
                f"different target modules: {first.repo_id} adapts "
                f"{','.join(first.target_modules)}, {c.repo_id} adapts {','.join(c.target_modules)}"
            )
    if same_rank:
        for c in candidates[1:]:
            if c.rank != first.rank:
                raise IncompatibleModules(
                    f"unequal ranks: {first.repo_id} has rank {first.rank}, {c.repo_id} has rank "
                    f"{c.rank}; the {method} method needs equal ranks (use --method mixed-rank, "
                    "the exact weighted sum of updates, for modules of different ranks)"
                )
            if abs(c.scale - first.scale) > 1e-9 * max(1.0, abs(first.scale)):
                raise IncompatibleModules(
                    f"unequal LoRA scales: {first.repo_id} has alpha/r = {first.scale:g}, "
                    f"{c.repo_id} has {c.scale:g}; the {method} method needs equal scales "
                    "(use --method mixed-rank)"
                )


def load_layers(candidate: Candidate) -> dict[str, LayerTensors]:
    """The candidate's LoRA tensors by layer path (e.g. ``model.layers.0.self_attn.q_proj``)."""
    from safetensors import safe_open

    from registry.lora_tensors import LORA_KEY, strip_peft_prefix

    weights = candidate.folder / "adapter_model.safetensors"
    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            match = LORA_KEY.match(key)
            # Composed are the linear layers' `.weight` pairs; embedding LoRA is left as it is.
            if not match or match["embedding"] or not key.endswith(".weight"):
                continue
            target = a_parts if match["side"] == "A" else b_parts
            target[strip_peft_prefix(match["module"])] = fh.get_tensor(key).float()
    if not a_parts or set(a_parts) != set(b_parts):
        raise InvalidAdapter(f"{weights}: lora_A/lora_B tensors do not pair up")
    return {p: LayerTensors(a=a_parts[p], b=b_parts[p]) for p in sorted(a_parts)}


def select_from_registry(
    db_url: str,
    query: SearchQuery,
    *,
    k: int | None,
    seed: int,
    cache_dir: Path | None = None,
    module_dirs: Sequence[Path] = (),
    fetch: Fetcher | None = None,
) -> list[Candidate]:
    """Candidates from a registry query: a seeded random ``k`` of the matches (the paper's
    setting), or all of them when ``k`` is None. Modules must be in the local cache."""
    from dataclasses import replace

    from registry.store import RegistryStore

    store = RegistryStore.from_url(db_url)
    try:
        total = store.count(query)
        modules: list[Module] = store.search(replace(query, limit=max(total, 1), offset=0))
    finally:
        store.engine.dispose()
    if not modules:
        raise ModuleNotFound("no module in the registry matches the query")
    modules.sort(key=lambda m: (m.repo_id, m.source))
    if k is not None and k < len(modules):
        modules = random.Random(seed).sample(modules, k)
    return [candidate_from_module(m, cache_dir, module_dirs, fetch) for m in modules]
