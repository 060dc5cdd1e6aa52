"""Plain objects the rest of loradex sees: frozen dataclasses, never ORM rows.

The store turns SQL rows into these with ``to_entity()``; the Hub sync, the composer and the
command line only ever handle these. ``module_to_dict`` is the one JSON shape of a module
(``loradex search --json``, ``loradex show --json``); keep it stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

SortKey = Literal["relevance", "downloads", "likes", "updated", "rank"]
SORT_KEYS: tuple[str, ...] = ("relevance", "downloads", "likes", "updated", "rank")
LOCAL_SOURCE = "local"


@dataclass(frozen=True)
class ModuleFile:
    """One file of a module's repository."""

    path: str = field(metadata={"help": "path inside the repository, '/'-separated"})
    size: int = field(metadata={"help": "size in bytes"})
    sha256: str | None = field(default=None, metadata={"help": "hex sha256 of the content"})
    lfs: bool = field(default=False, metadata={"help": "stored through Git LFS on the Hub"})


@dataclass(frozen=True)
class LineageEdge:
    """One parent of a composed module: which module, at which revision, with what weight."""

    parent_repo_id: str = field(metadata={"help": "repo id of the parent module"})
    parent_revision: str | None = field(default=None, metadata={"help": "commit sha of the parent"})
    weight: float | None = field(default=None, metadata={"help": "mixing weight, if any"})
    role: str = field(default="parent", metadata={"help": "e.g. 'parent', 'candidate', 'init'"})


@dataclass(frozen=True)
class Signature:
    """What a module does, as vectors (``registry.signatures``): float16 rows, unit length."""

    kind: str = field(metadata={"help": "'data' (training inputs) or 'card' (card text)"})
    embedder: str = field(metadata={"help": "name of the embedder that made the vectors"})
    dim: int = field(metadata={"help": "width of each vector"})
    count: int = field(metadata={"help": "number of vectors"})
    vectors: bytes = field(repr=False, metadata={"help": "count x dim float16, row-major"})

    def array(self) -> np.ndarray:
        """The vectors as a (count, dim) float32 array."""
        import numpy as np

        return np.frombuffer(self.vectors, dtype="<f2").reshape(self.count, self.dim).astype(
            np.float32)

    def centroid(self) -> np.ndarray:
        """The normalised mean of the vectors: what a query is scored against."""
        import numpy as np

        mean = self.array().mean(0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Module:
    """A LoRA module (one adapter repository at one revision) as the registry knows it."""

    repo_id: str = field(metadata={"help": "Hub repo id, 'namespace/name'"})
    base_model: str = field(metadata={"help": "normalised base model id, e.g. 'org/name'"})
    rank: int = field(metadata={"help": "LoRA rank r"})
    target_modules: tuple[str, ...] = field(
        metadata={"help": "sorted leaf names of the targeted modules, e.g. ('k_proj', 'q_proj')"}
    )
    revision: str | None = field(default=None, metadata={"help": "commit sha indexed"})
    source: str = field(
        default=LOCAL_SOURCE, metadata={"help": "Hub endpoint it came from, or 'local'"}
    )
    base_model_raw: str | None = field(
        default=None, metadata={"help": "base model exactly as the config/card wrote it"}
    )
    kind: str = field(default="lora", metadata={"help": "'lora' or 'hydra' (shared A, N B heads)"})
    num_heads: int | None = field(default=None, metadata={"help": "B heads of a Hydra module"})
    peft_type: str = field(default="LORA", metadata={"help": "PEFT type, upper case"})
    task_type: str | None = field(default=None, metadata={"help": "PEFT task type, e.g. CAUSAL_LM"})
    alpha: float | None = field(default=None, metadata={"help": "lora_alpha"})
    dropout: float | None = field(default=None, metadata={"help": "lora_dropout"})
    bias: str | None = field(default=None, metadata={"help": "'none', 'all' or 'lora_only'"})
    num_parameters: int | None = field(default=None, metadata={"help": "trainable parameters"})
    dtype: str | None = field(default=None, metadata={"help": "tensor dtype, e.g. 'float32'"})
    total_size: int | None = field(default=None, metadata={"help": "bytes over all files"})
    author: str | None = field(default=None, metadata={"help": "author (default: namespace)"})
    license: str | None = field(default=None, metadata={"help": "licence id, lower case"})
    tags: tuple[str, ...] = field(default=(), metadata={"help": "sorted lower-case tags"})
    task_name: str | None = field(default=None, metadata={"help": "task, e.g. 'past_tense'"})
    task_category: str | None = field(default=None, metadata={"help": "e.g. 'grammar'"})
    dataset: str | None = field(default=None, metadata={"help": "training dataset id"})
    language: str | None = field(default=None, metadata={"help": "language code(s)"})
    description: str | None = field(default=None, metadata={"help": "one-paragraph summary"})
    use_dora: bool = field(default=False, metadata={"help": "DoRA (weight-decomposed) adapter"})
    use_rslora: bool = field(default=False, metadata={"help": "scaling alpha/sqrt(r) (rsLoRA)"})
    lora_bias: bool = field(default=False, metadata={"help": "lora_B has a bias (lora_bias)"})
    peft_version: str | None = field(default=None, metadata={"help": "PEFT version that saved it"})
    rank_pattern: tuple[tuple[str, int], ...] = field(
        default=(), metadata={"help": "per-module rank overrides, sorted (pattern, rank) pairs"}
    )
    alpha_pattern: tuple[tuple[str, float], ...] = field(
        default=(), metadata={"help": "per-module alpha overrides, sorted (pattern, alpha) pairs"}
    )
    modules_to_save: tuple[str, ...] = field(
        default=(), metadata={"help": "modules saved whole beside the adapter (e.g. lm_head)"}
    )
    layers_to_transform: tuple[int, ...] = field(
        default=(), metadata={"help": "only these layer indices are adapted (empty: all)"}
    )
    base_model_is_path: bool = field(
        default=False, metadata={"help": "base_model is a local path, not a Hub id"}
    )
    local_path: str | None = field(
        default=None, metadata={"help": "absolute folder of a module added from disk"}
    )
    downloads: int = field(default=0, metadata={"help": "Hub download count"})
    likes: int = field(default=0, metadata={"help": "Hub like count"})
    created_at: datetime | None = field(default=None, metadata={"help": "creation time, UTC"})
    updated_at: datetime | None = field(default=None, metadata={"help": "last change, UTC"})
    card_text: str | None = field(default=None, metadata={"help": "README.md body (no YAML)"})
    files: tuple[ModuleFile, ...] = field(default=(), metadata={"help": "repository files"})
    lineage: tuple[LineageEdge, ...] = field(default=(), metadata={"help": "parents if composed"})
    signatures: tuple[Signature, ...] = field(
        default=(), compare=False, repr=False,
        metadata={"help": "task signatures written with the module; loaded only on request"},
    )

    @property
    def namespace(self) -> str:
        """The part of the repo id before the slash ('' when there is none)."""
        return self.repo_id.split("/", 1)[0] if "/" in self.repo_id else ""


@dataclass(frozen=True)
class SearchQuery:
    """What ``RegistryStore.search`` filters and sorts on; every filter is optional."""

    text: str | None = field(default=None, metadata={"help": "free text (full-text search)"})
    base_model: str | None = field(default=None, metadata={"help": "matched after normalising"})
    rank: int | None = field(default=None, metadata={"help": "exact rank"})
    min_rank: int | None = field(default=None, metadata={"help": "rank >= this"})
    max_rank: int | None = field(default=None, metadata={"help": "rank <= this"})
    targets: tuple[str, ...] = field(default=(), metadata={"help": "must target all of these"})
    task: str | None = field(default=None, metadata={"help": "task name or category"})
    tags: tuple[str, ...] = field(default=(), metadata={"help": "must carry all of these tags"})
    author: str | None = field(default=None, metadata={"help": "author, case-insensitive"})
    license: str | None = field(default=None, metadata={"help": "licence id, case-insensitive"})
    peft_type: str | None = field(default=None, metadata={"help": "PEFT type, case-insensitive"})
    kind: str | None = field(default=None, metadata={"help": "'lora' or 'hydra'"})
    source: str | None = field(default=None, metadata={"help": "only modules from this source"})
    composable: bool = field(
        default=False,
        metadata={"help": "only plain LoRA the composer can use (no DoRA, patterns, lora_bias, "
                          "modules_to_save, layers_to_transform)"},
    )
    include_composed: bool = field(
        default=True, metadata={"help": "False: leave out modules composed from others"}
    )
    compatible_with: str | None = field(
        default=None, metadata={"help": "repo id: same base model and target set as it"}
    )
    sort: SortKey | None = field(
        default=None, metadata={"help": "default: relevance with text, else downloads"}
    )
    limit: int = field(default=20, metadata={"help": "page size"})
    offset: int = field(default=0, metadata={"help": "rows to skip"})

    @property
    def effective_sort(self) -> SortKey:
        """The sort actually applied: relevance only makes sense with text."""
        if self.sort is None or (self.sort == "relevance" and not self.text):
            return "relevance" if self.text else "downloads"
        return self.sort


@dataclass(frozen=True)
class SearchPage:
    """One page of search results and how many modules match in all."""

    modules: tuple[Module, ...] = field(metadata={"help": "this page, in sort order"})
    total: int = field(metadata={"help": "matches in all (a lower bound if not exact)"})
    total_is_exact: bool = field(
        default=True, metadata={"help": "False when counting stopped at the count limit"}
    )


@dataclass(frozen=True)
class Compatibility:
    """A module that can be combined with a reference module (same base model, same targets)."""

    module: Module = field(metadata={"help": "the compatible module"})
    reference_repo_id: str = field(metadata={"help": "the module it was compared with"})
    rank_matches: bool = field(metadata={"help": "equal ranks (LoraHub-style merges need this)"})


@dataclass(frozen=True)
class SyncState:
    """Where the Hub sync stands for one repository of one endpoint."""

    endpoint: str = field(metadata={"help": "Hub endpoint URL"})
    repo_id: str = field(metadata={"help": "repo id on that endpoint"})
    last_sha: str | None = field(default=None, metadata={"help": "last commit indexed"})
    status: str = field(
        default="ok", metadata={"help": "'ok', 'skipped', 'gated', 'gone' or 'error'"}
    )
    error: str | None = field(default=None, metadata={"help": "why it was skipped or failed"})
    synced_at: datetime | None = field(default=None, metadata={"help": "when, UTC"})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def module_to_dict(module: Module, *, include_card: bool = True) -> dict[str, Any]:
    """The stable JSON shape of a module (documented in docs/registry.md)."""
    data: dict[str, Any] = {
        "repo_id": module.repo_id,
        "revision": module.revision,
        "source": module.source,
        "kind": module.kind,
        "num_heads": module.num_heads,
        "base_model": module.base_model,
        "base_model_raw": module.base_model_raw,
        "base_model_is_path": module.base_model_is_path,
        "peft_type": module.peft_type,
        "task_type": module.task_type,
        "rank": module.rank,
        "alpha": module.alpha,
        "dropout": module.dropout,
        "target_modules": list(module.target_modules),
        "bias": module.bias,
        "num_parameters": module.num_parameters,
        "dtype": module.dtype,
        "total_size": module.total_size,
        "author": module.author,
        "license": module.license,
        "tags": list(module.tags),
        "task": {
            "name": module.task_name,
            "category": module.task_category,
            "dataset": module.dataset,
            "language": module.language,
            "description": module.description,
        },
        "peft": {
            "version": module.peft_version,
            "use_dora": module.use_dora,
            "use_rslora": module.use_rslora,
            "lora_bias": module.lora_bias,
            "rank_pattern": dict(module.rank_pattern),
            "alpha_pattern": dict(module.alpha_pattern),
            "modules_to_save": list(module.modules_to_save),
            "layers_to_transform": list(module.layers_to_transform),
        },
        "local_path": module.local_path,
        "downloads": module.downloads,
        "likes": module.likes,
        "created_at": _iso(module.created_at),
        "updated_at": _iso(module.updated_at),
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256, "lfs": f.lfs} for f in module.files
        ],
        "lineage": [
            {
                "parent_repo_id": e.parent_repo_id,
                "parent_revision": e.parent_revision,
                "weight": e.weight,
                "role": e.role,
            }
            for e in module.lineage
        ],
    }
    if include_card:
        data["card_text"] = module.card_text
    return data
