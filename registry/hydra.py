"""The Hydra on-disk format, read without torch: config, header validation, registry entries.

A Hydra module folder holds ``hydra_config.json`` + ``hydra_model.safetensors`` (+ README.md);
the format is described in ``docs/hydra-format.md``. Everything here reads only the config and
the safetensors header (through :func:`registry.safetensors_header.read_safetensors_header`), so
``loradex add``, the Hub server's indexer and ``loradex sync`` describe a Hydra module without
torch and without loading tensors. ``composer.hydra.format`` builds on this module to load and
save the tensors themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradex.documents import as_list
from loradex.errors import InvalidAdapter
from registry.adapter_files import list_folder_files, read_json_object
from registry.cards import parse_card
from registry.entities import LOCAL_SOURCE, LineageEdge, Module, ModuleFile
from registry.normalize import (
    normalize_license,
    normalize_tags,
    normalize_targets,
    recorded_base_model,
)
from registry.safetensors_header import DTYPE_NAMES, read_safetensors_header

FORMAT_NAME = "loradex-hydra"
FORMAT_VERSION = 1
CONFIG_NAME = "hydra_config.json"
WEIGHTS_NAME = "hydra_model.safetensors"
CARD_NAME = "README.md"
ROUTER_KINDS = ("linear",)

# <layer>.lora_A.weight | <layer>.lora_B.<j>.weight | <layer>.router.weight | <layer>.router.bias
_TENSOR_NAME = re.compile(
    r"^(?P<layer>.+?)\.(?:(?P<a>lora_A)\.weight|lora_B\.(?P<head>\d+)\.weight"
    r"|router\.(?P<router>weight|bias))$"
)


@dataclass(frozen=True)
class HydraConfig:
    """What ``hydra_config.json`` holds: the shape of a Hydra module and where it came from."""

    base_model: str = field(metadata={"help": "Base model id or path the module was trained on"})
    target_modules: tuple[str, ...] = field(
        metadata={"help": "Names of the wrapped nn.Linear layers (last path component)"}
    )
    rank: int = field(metadata={"help": "Rank r of the shared down-projection A"})
    alpha: float = field(metadata={"help": "LoRA alpha; the update is scaled by alpha / rank"})
    num_heads: int = field(metadata={"help": "Number N of up-projection heads B_1..B_N"})
    router_kind: str = field(
        default="linear", metadata={"help": "Router: 'linear' = softmax((W_g x + b) / T)"}
    )
    router_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature T of the router"}
    )
    router_bias: bool = field(
        default=True, metadata={"help": "Whether each router has a bias vector b [N]"}
    )
    task: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Task metadata: name, category, dataset files, description"},
    )
    head_selection: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={"help": "How N was chosen: fixed, auto (k-means elbow + curve) or compose"},
    )
    format_version: int = field(
        default=FORMAT_VERSION, metadata={"help": "Version of this on-disk format"}
    )

    @property
    def scale(self) -> float:
        """The LoRA scaling s = alpha / r."""
        return self.alpha / self.rank

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object written to ``hydra_config.json``."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "base_model": self.base_model,
            "target_modules": list(self.target_modules),
            "rank": self.rank,
            "alpha": self.alpha,
            "num_heads": self.num_heads,
            "router": {
                "kind": self.router_kind,
                "temperature": self.router_temperature,
                "bias": self.router_bias,
            },
            "task": dict(self.task),
            "head_selection": dict(self.head_selection),
        }

    @classmethod
    def from_json_dict(cls, raw: Any, source: str = CONFIG_NAME) -> HydraConfig:
        """Parse and validate a config object; raise ``InvalidAdapter`` naming ``source``."""

        def bad(what: str) -> InvalidAdapter:
            return InvalidAdapter(f"{source}: {what}")

        if not isinstance(raw, dict):
            raise bad("expected a JSON object")
        if raw.get("format") != FORMAT_NAME:
            raise bad(f"'format' must be {FORMAT_NAME!r}, got {raw.get('format')!r}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise bad(
                f"unsupported format_version {version!r} (this loradex reads {FORMAT_VERSION})"
            )
        for key in ("base_model", "target_modules", "rank", "alpha", "num_heads", "router"):
            if key not in raw:
                raise bad(f"missing key {key!r}")
        base_model = raw["base_model"]
        if not isinstance(base_model, str) or not base_model:
            raise bad("'base_model' must be a non-empty string")
        targets = raw["target_modules"]
        if (
            not isinstance(targets, list)
            or not targets
            or not all(isinstance(t, str) and t for t in targets)
        ):
            raise bad("'target_modules' must be a non-empty list of names")
        rank, num_heads, alpha = raw["rank"], raw["num_heads"], raw["alpha"]
        if not _is_int(rank) or rank < 1:
            raise bad(f"'rank' must be a positive integer, got {rank!r}")
        if not _is_int(num_heads) or num_heads < 1:
            raise bad(f"'num_heads' must be a positive integer, got {num_heads!r}")
        if not _is_number(alpha) or alpha <= 0:
            raise bad(f"'alpha' must be a positive number, got {alpha!r}")
        router = raw["router"]
        if not isinstance(router, dict):
            raise bad("'router' must be an object with 'kind', 'temperature', 'bias'")
        kind = router.get("kind")
        if kind not in ROUTER_KINDS:
            raise bad(f"unknown router kind {kind!r} (known: {', '.join(ROUTER_KINDS)})")
        temperature = router.get("temperature", 1.0)
        if not _is_number(temperature) or temperature <= 0:
            raise bad(f"router 'temperature' must be a positive number, got {temperature!r}")
        has_bias = router.get("bias", True)
        if not isinstance(has_bias, bool):
            raise bad("router 'bias' must be true or false")
        task = raw.get("task", {})
        selection = raw.get("head_selection", {})
        if not isinstance(task, dict) or not isinstance(selection, dict):
            raise bad("'task' and 'head_selection' must be objects")
        return cls(
            base_model=base_model,
            target_modules=tuple(targets),
            rank=int(rank),
            alpha=float(alpha),
            num_heads=int(num_heads),
            router_kind=kind,
            router_temperature=float(temperature),
            router_bias=has_bias,
            task=task,
            head_selection=selection,
            format_version=FORMAT_VERSION,
        )


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class HydraLayerShape:
    """The validated shapes of one wrapped layer: in/out features."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class HydraHeader:
    """A Hydra folder described from its config and the weights' header only."""

    config: HydraConfig
    layers: tuple[HydraLayerShape, ...]
    dtype: str
    num_parameters: int


def read_tensor_table(path: Path) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file as (dtype, shape), validated and read from its header."""
    return tensor_table(read_safetensors_header(path), str(path))


def tensor_table(header_raw: Mapping[str, Any], label: str) -> dict[str, TensorInfo]:
    """Turn a safetensors header object into ``{name: TensorInfo}`` (``__metadata__`` dropped)."""
    tensors: dict[str, TensorInfo] = {}
    for name, meta in header_raw.items():
        if name == "__metadata__":
            continue
        try:
            tensors[name] = TensorInfo(
                dtype=str(meta["dtype"]), shape=tuple(int(d) for d in meta["shape"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidAdapter(f"{label}: malformed header entry for tensor {name!r}") from exc
    return tensors


def read_config(folder: Path) -> HydraConfig:
    """Read and validate ``hydra_config.json`` in ``folder``."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise InvalidAdapter(f"{folder}: no {CONFIG_NAME} (not a Hydra module folder)")
    return HydraConfig.from_json_dict(read_json_object(path), source=str(path))


def validate_tensor_table(
    config: HydraConfig, tensors: Mapping[str, TensorInfo], source: str
) -> tuple[HydraLayerShape, ...]:
    """Check that the tensors are exactly what ``config`` promises; return the layers' shapes.

    Refuses: unknown tensor names, layers outside ``target_modules``, a missing A, router or
    head, head indices other than ``0..N-1``, shapes that disagree with ``rank`` / ``num_heads``
    or with each other, and mixed dtypes.
    """
    by_layer: dict[str, dict[str, TensorInfo]] = {}
    heads: dict[str, dict[int, TensorInfo]] = {}
    for name, info in tensors.items():
        match = _TENSOR_NAME.match(name)
        if match is None:
            raise InvalidAdapter(f"{source}: unexpected tensor {name!r}")
        layer = match["layer"]
        if layer.rsplit(".", 1)[-1] not in config.target_modules:
            raise InvalidAdapter(
                f"{source}: tensor {name!r} is on a layer not in target_modules "
                f"{list(config.target_modules)}"
            )
        if match["head"] is not None:
            heads.setdefault(layer, {})[int(match["head"])] = info
        else:
            key = "lora_A" if match["a"] else f"router.{match['router']}"
            by_layer.setdefault(layer, {})[key] = info
    if not by_layer and not heads:
        raise InvalidAdapter(f"{source}: holds no tensors")
    dtypes = {info.dtype for info in tensors.values()}
    if len(dtypes) > 1:
        raise InvalidAdapter(f"{source}: mixed tensor dtypes {sorted(dtypes)}")
    r, n = config.rank, config.num_heads
    shapes: list[HydraLayerShape] = []
    for layer in sorted(set(by_layer) | set(heads)):
        parts = by_layer.get(layer, {})
        a = parts.get("lora_A")
        if a is None:
            raise InvalidAdapter(f"{source}: layer {layer!r} has no lora_A.weight")
        if len(a.shape) != 2 or a.shape[0] != r:
            raise InvalidAdapter(
                f"{source}: {layer}.lora_A.weight has shape {list(a.shape)}, expected [{r}, in]"
            )
        in_features = a.shape[1]
        layer_heads = heads.get(layer, {})
        if sorted(layer_heads) != list(range(n)):
            raise InvalidAdapter(
                f"{source}: layer {layer!r} has heads {sorted(layer_heads)} but num_heads={n} "
                f"needs lora_B.0 .. lora_B.{n - 1}"
            )
        router = parts.get("router.weight")
        if router is None:
            raise InvalidAdapter(f"{source}: layer {layer!r} has no router.weight")
        if router.shape != (n, in_features):
            raise InvalidAdapter(
                f"{source}: {layer}.router.weight has shape {list(router.shape)}, "
                f"expected [{n}, {in_features}] (num_heads={n})"
            )
        bias = parts.get("router.bias")
        if config.router_bias and bias is None:
            raise InvalidAdapter(f"{source}: layer {layer!r} has no router.bias (config says bias)")
        if not config.router_bias and bias is not None:
            raise InvalidAdapter(f"{source}: layer {layer!r} has a router.bias the config denies")
        if bias is not None and bias.shape != (n,):
            raise InvalidAdapter(
                f"{source}: {layer}.router.bias has shape {list(bias.shape)}, expected [{n}]"
            )
        out_features = layer_heads[0].shape[0] if layer_heads[0].shape else -1
        for j, info in sorted(layer_heads.items()):
            if len(info.shape) != 2 or info.shape != (out_features, r):
                raise InvalidAdapter(
                    f"{source}: {layer}.lora_B.{j}.weight has shape {list(info.shape)}, "
                    f"expected [{out_features}, {r}]"
                )
        shapes.append(HydraLayerShape(layer, in_features, out_features))
    return tuple(shapes)


def inspect_hydra_folder(folder: Path) -> HydraHeader:
    """Validate a Hydra folder from its config and weights header only (no torch, no tensors)."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt")
        )
        hint = f" (found pickle files {pickles}; loradex reads safetensors only)" if pickles else ""
        raise InvalidAdapter(f"{folder}: no {WEIGHTS_NAME}{hint}")
    return _describe(config, read_tensor_table(weights), str(weights))


def describe_hydra(
    config_raw: Any, header_raw: Mapping[str, Any], label: str = WEIGHTS_NAME
) -> HydraHeader:
    """Validate metadata fetched elsewhere (a Hub): the config JSON and a raw safetensors header.

    ``header_raw`` is the header's JSON object (tensor name -> ``{"dtype", "shape", ...}``), as
    ``registry.safetensors_header.read_safetensors_header`` returns it.
    """
    config = HydraConfig.from_json_dict(config_raw, source=f"{label}: {CONFIG_NAME}")
    tensors = tensor_table(header_raw, f"{label}: {WEIGHTS_NAME}")
    return _describe(config, tensors, f"{label}: {WEIGHTS_NAME}")


def _describe(config: HydraConfig, tensors: Mapping[str, TensorInfo], source: str) -> HydraHeader:
    layers = validate_tensor_table(config, tensors, source)
    num_parameters = sum(_numel(info.shape) for info in tensors.values())
    dtype = next(iter(tensors.values())).dtype
    return HydraHeader(config=config, layers=layers, dtype=dtype, num_parameters=num_parameters)


def is_hydra_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like a Hydra module (has ``hydra_config.json``)."""
    return (Path(folder) / CONFIG_NAME).is_file()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- registry



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
    author: str | None = None,
    downloads: int = 0,
    likes: int = 0,
    created_at: Any = None,
    updated_at: Any = None,
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
        author=author,
        downloads=downloads,
        likes=likes,
        created_at=created_at,
        updated_at=updated_at,
    )


def _module(
    repo_id: str,
    header: HydraHeader,
    card_text: str | None,
    *,
    revision: str | None,
    source: str,
    files: Iterable[ModuleFile],
    author: str | None = None,
    downloads: int = 0,
    likes: int = 0,
    created_at: Any = None,
    updated_at: Any = None,
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
    base_model, base_is_path = recorded_base_model(config.base_model)
    return Module(
        repo_id=repo_id,
        revision=revision,
        source=source,
        kind="hydra",
        num_heads=config.num_heads,
        base_model=base_model,
        base_model_is_path=base_is_path,
        base_model_raw=config.base_model,
        peft_type="HYDRA",
        task_type="CAUSAL_LM",
        rank=config.rank,
        alpha=config.alpha,
        dropout=0.0,
        target_modules=normalize_targets(config.target_modules),
        bias="none",
        num_parameters=header.num_parameters,
        dtype=DTYPE_NAMES.get(header.dtype, header.dtype.lower()),
        total_size=sum(f.size for f in file_list) if file_list else None,
        author=author or _text(front.get("author")) or namespace,
        license=normalize_license(_text(front.get("license"))),
        tags=normalize_tags([*as_list(front.get("tags")), "hydra-lora"]),
        task_name=_text(task.get("name")) or _text(extra.get("task_name")),
        task_category=_text(task.get("category")) or _text(extra.get("task_category")),
        dataset=", ".join(str(d) for d in datasets) if isinstance(datasets, list) else None,
        language=_text(front.get("language")),
        description=_text(task.get("description")) or _text(extra.get("description")),
        downloads=downloads,
        likes=likes,
        created_at=created_at,
        updated_at=updated_at,
        card_text=body or None,
        files=file_list,
        lineage=lineage,
    )


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


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
