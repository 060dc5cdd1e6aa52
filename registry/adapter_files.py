"""Reading LoRA adapters without loading them: config, safetensors header, model card.

Everything here validates at the edge: a file that is not what it claims raises
:class:`~loradex.errors.InvalidAdapter` naming the file and the problem. The same checks run
on a folder on disk (``inspect_adapter_folder``) and on metadata already fetched from a Hub
(``module_from_metadata``), so ``loradex add`` and the Hub sync accept exactly the same adapters.

Model-card front matter understood, besides the Hub's usual keys (``base_model``, ``license``,
``tags``, ``datasets``, ``language``)::

    loradex:
      task_name: past_tense
      task_category: grammar
      description: Rewrites sentences in the past tense.
      lineage:
        - {repo_id: alice/a, revision: <sha>, weight: 0.7, role: parent}

(``task_name``, ``task_category``, ``description``, ``dataset`` are also read at top level.)
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from loradex.documents import MalformedDocument, as_list, parse_json
from loradex.errors import InvalidAdapter
from loradex.files import file_sha256
from registry.cards import CARD, first_paragraph, parse_card
from registry.entities import LOCAL_SOURCE, LineageEdge, Module, ModuleFile
from registry.lfs import is_lfs_path
from registry.normalize import (
    normalize_base_model,
    normalize_license,
    normalize_tags,
    normalize_targets,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DTYPE_SIZES",
    "AdapterTensors",
    "analyse_lora_tensors",
    "inspect_adapter_folder",
    "module_from_metadata",
    "normalize_base_model",
    "read_safetensors_header",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
HYDRA_CONFIG = "hydra_config.json"  # registry.hydra.CONFIG_NAME (not imported: it imports us)

# Bytes per element of every safetensors dtype loradex accepts.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
_DTYPE_NAMES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
}
# A LoRA adapter's header is a few KB; 100 MB means a corrupt or hostile file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])(?:\.(?P<adapter>[^.]+))?"
    r"(?:\.weight)?$"
)
_PEFT_PREFIX = "base_model.model."


# --------------------------------------------------------------------------- safetensors


def read_safetensors_header(
    source: str | os.PathLike[str] | bytes,
    *,
    file_size: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Parse and validate a safetensors header from a path, or from the first bytes of a file.

    Reads only ``8 + header length`` bytes (never the tensors). ``file_size`` is the size of
    the whole file when ``source`` holds only its beginning (a Hub range request); without it,
    ``bytes`` are taken to be the whole file. Returns the header JSON object (tensor name ->
    ``{"dtype", "shape", "data_offsets"}``, plus ``"__metadata__"`` when present).
    Raises :class:`InvalidAdapter` naming the file for anything inconsistent.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<safetensors bytes>"
        data = bytes(source)
        size = len(data) if file_size is None else file_size
        prefix_len, header_bytes = _split_header(data, size, label)
    else:
        path = Path(source)
        label = name or str(path)
        try:
            size = path.stat().st_size if file_size is None else file_size
            with path.open("rb") as fh:
                prefix_len, header_bytes = _read_header_bytes(fh, size, label)
        except FileNotFoundError as exc:
            raise InvalidAdapter(f"{label}: file not found") from exc
        except IsADirectoryError as exc:
            raise InvalidAdapter(f"{label}: is a folder, not a safetensors file") from exc
    return _validate_header(header_bytes, prefix_len, size, label)


def _header_length(first8: bytes, size: int, label: str) -> int:
    if len(first8) < 8 or size < 8:
        raise InvalidAdapter(f"{label}: truncated safetensors file ({size} bytes, no header)")
    (length,) = struct.unpack("<Q", first8[:8])
    if length < 2 or length > MAX_HEADER_BYTES:
        raise InvalidAdapter(f"{label}: implausible safetensors header length {length}")
    if 8 + length > size:
        raise InvalidAdapter(
            f"{label}: truncated safetensors file (header of {length} bytes, file of {size})"
        )
    return length


def _read_header_bytes(fh: BinaryIO, size: int, label: str) -> tuple[int, bytes]:
    length = _header_length(fh.read(8), size, label)
    header = fh.read(length)
    if len(header) != length:
        raise InvalidAdapter(f"{label}: truncated safetensors header")
    return 8 + length, header


def _split_header(data: bytes, size: int, label: str) -> tuple[int, bytes]:
    length = _header_length(data[:8], size, label)
    if len(data) < 8 + length:
        raise InvalidAdapter(
            f"{label}: only {len(data)} bytes given, the header needs {8 + length}"
        )
    return 8 + length, data[8 : 8 + length]


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


def _validate_header(raw: bytes, data_start: int, size: int, label: str) -> dict[str, Any]:
    try:
        header = parse_json(raw)
    except MalformedDocument as exc:
        raise InvalidAdapter(f"{label}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{label}: safetensors header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise InvalidAdapter(f"{label}: __metadata__ must map strings to strings")
    data_size = size - data_start
    spans: list[tuple[int, int, str]] = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise InvalidAdapter(f"{label}: entry {tensor!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise InvalidAdapter(f"{label}: tensor {tensor!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidAdapter(f"{label}: tensor {tensor!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise InvalidAdapter(
                f"{label}: tensor {tensor!r} has invalid data_offsets {offsets!r}"
            )
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise InvalidAdapter(
                f"{label}: tensor {tensor!r} spans {offsets[1] - offsets[0]} bytes, "
                f"but {dtype}{shape} needs {expected}"
            )
        if offsets[1] > data_size:
            raise InvalidAdapter(
                f"{label}: truncated safetensors file (tensor {tensor!r} ends at byte "
                f"{data_start + offsets[1]}, file has {size})"
            )
        spans.append((offsets[0], offsets[1], tensor))
    spans.sort()
    position = 0
    for begin, end, tensor in spans:
        if begin != position:
            problem = "overlaps the previous one" if begin < position else "leaves a gap"
            raise InvalidAdapter(f"{label}: tensor {tensor!r} {problem} in the data buffer")
        position = end
    if position != data_size:
        raise InvalidAdapter(
            f"{label}: data buffer is {data_size} bytes but the tensors cover {position}"
        )
    return header


# --------------------------------------------------------------------------- card values


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return ",".join(items) or None
    text = str(value).strip()
    return text or None


# --------------------------------------------------------------------------- tensors vs config


@dataclass(frozen=True)
class AdapterTensors:
    """What the tensor names and shapes of a LoRA adapter say about it."""

    rank: int
    target_modules: tuple[str, ...]
    num_parameters: int
    dtype: str | None
    module_paths: tuple[str, ...]


def _module_rank(config: Mapping[str, Any], module_path: str, default: int) -> int:
    # PEFT's rank_pattern keys are regexes matched against the end of the module path.
    for key, value in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return int(value)
    return default


def _strip_peft_prefix(path: str) -> str:
    return path[len(_PEFT_PREFIX) :] if path.startswith(_PEFT_PREFIX) else path


def analyse_lora_tensors(
    config: Mapping[str, Any], header: Mapping[str, Any], *, label: str = ADAPTER_WEIGHTS
) -> AdapterTensors:
    """Check that the LoRA tensors in ``header`` agree with ``config``; return what they say.

    Checks: every ``lora_A`` has its ``lora_B``; A is ``[r, ...]`` and B is ``[..., r]`` with
    ``r`` the config's rank (or its ``rank_pattern`` entry); the targeted module names are the
    config's ``target_modules`` (a list: same set; a string: a regex every module matches).
    """
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: 'r' must be a positive integer, got {rank!r}")
    pairs: dict[str, dict[str, list[int]]] = {}
    dtypes: dict[str, int] = {}
    num_parameters = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        num_parameters += math.prod(info["shape"])
        match = _LORA_KEY.match(tensor)
        if not match:
            continue
        dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + 1
        pairs.setdefault(match.group("module"), {})[match.group("side")] = info["shape"]
    if not pairs:
        raise InvalidAdapter(f"{label}: no lora_A/lora_B tensors found (is this a LoRA adapter?)")
    for module_path, sides in sorted(pairs.items()):
        short = _strip_peft_prefix(module_path)
        if set(sides) != {"A", "B"}:
            missing = "lora_B" if "A" in sides else "lora_A"
            raise InvalidAdapter(f"{label}: {short} has no {missing} tensor")
        expected = _module_rank(config, short, rank)
        a_shape, b_shape = sides["A"], sides["B"]
        if len(a_shape) < 2 or len(b_shape) < 2:
            raise InvalidAdapter(f"{label}: {short} lora tensors must have 2 or more dimensions")
        # Linear/Conv: A is [r, in, ...], B is [out, r, ...]. Embedding: A [r, n], B [d, r].
        if a_shape[0] != expected or b_shape[1] != expected:
            raise InvalidAdapter(
                f"{label}: {short} has rank {a_shape[0]} (lora_A {a_shape}, lora_B {b_shape}) "
                f"but {ADAPTER_CONFIG} says r={expected}"
            )
    leaves = normalize_targets(_strip_peft_prefix(p).rsplit(".", 1)[-1] for p in pairs)
    declared = config.get("target_modules")
    if isinstance(declared, str):
        pattern = re.compile(declared)
        for module_path in pairs:
            short = _strip_peft_prefix(module_path)
            if not (pattern.fullmatch(short) or pattern.fullmatch(short.rsplit(".", 1)[-1])):
                raise InvalidAdapter(
                    f"{label}: module {short} is not matched by target_modules {declared!r} "
                    f"in {ADAPTER_CONFIG}"
                )
    elif isinstance(declared, list | tuple) and declared:
        # PEFT accepts a target as a leaf name or as a dotted suffix of the module path.
        declared_leaves = normalize_targets(str(t).rsplit(".", 1)[-1] for t in declared)
        extra = sorted(set(leaves) - set(declared_leaves))
        missing_targets = sorted(set(declared_leaves) - set(leaves))
        if extra or missing_targets:
            parts = []
            if missing_targets:
                parts.append(f"targets {missing_targets} have no tensors")
            if extra:
                parts.append(f"tensors target {extra} which the config does not list")
            raise InvalidAdapter(
                f"{label}: target_modules in {ADAPTER_CONFIG} do not match the tensors: "
                + "; ".join(parts)
            )
    else:
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}: 'target_modules' must be a non-empty list or a regex string"
        )
    dtype = "+".join(_DTYPE_NAMES.get(d, d.lower()) for d in sorted(dtypes)) or None
    return AdapterTensors(
        rank=rank,
        target_modules=leaves,
        num_parameters=num_parameters,
        dtype=dtype,
        module_paths=tuple(sorted(_strip_peft_prefix(p) for p in pairs)),
    )


# --------------------------------------------------------------------------- building a Module


def _number(value: Any, field_name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: {field_name!r} must be a number, got {value!r}")
    return float(value)


def _lineage(value: Any) -> tuple[LineageEdge, ...]:
    if not value:
        return ()
    if not isinstance(value, list):
        raise InvalidAdapter(f"{CARD}: loradex.lineage must be a list")
    edges = []
    for item in value:
        if isinstance(item, str):
            edges.append(LineageEdge(parent_repo_id=item))
            continue
        if not isinstance(item, dict) or not item.get("repo_id"):
            raise InvalidAdapter(f"{CARD}: each loradex.lineage entry needs a repo_id")
        weight = item.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
            raise InvalidAdapter(f"{CARD}: lineage weight of {item['repo_id']} is not a number")
        edges.append(
            LineageEdge(
                parent_repo_id=str(item["repo_id"]),
                parent_revision=_as_str(item.get("revision")),
                weight=float(weight) if weight is not None else None,
                role=str(item.get("role") or "parent"),
            )
        )
    return tuple(edges)


def module_from_metadata(
    repo_id: str,
    config: Mapping[str, Any],
    header: Mapping[str, Any],
    card_text: str | None = None,
    *,
    revision: str | None = None,
    source: str = LOCAL_SOURCE,
    files: Iterable[ModuleFile] = (),
    author: str | None = None,
    tags: Iterable[str] = (),
    downloads: int = 0,
    likes: int = 0,
    created_at: Any = None,
    updated_at: Any = None,
    label: str | None = None,
) -> Module:
    """Build a validated :class:`Module` from an adapter config, a safetensors header and a card.

    This is the one place an adapter is judged: ``inspect_adapter_folder`` (files on disk) and
    the Hub sync (metadata fetched over HTTP) both call it. ``label`` prefixes error messages.
    """
    prefix = f"{label}: " if label else ""
    try:
        if not isinstance(config, Mapping):
            raise InvalidAdapter(f"{ADAPTER_CONFIG} is not a JSON object")
        peft_type = str(config.get("peft_type") or "").upper()
        if peft_type != "LORA":
            raise InvalidAdapter(
                f"{ADAPTER_CONFIG}: peft_type is {config.get('peft_type')!r}; "
                "loradex indexes LoRA adapters (peft_type 'LORA')"
            )
        tensors = analyse_lora_tensors(config, header)
        front, body = parse_card(card_text)
    except InvalidAdapter as exc:
        raise InvalidAdapter(f"{prefix}{exc}") from exc
    section = front.get("loradex")
    extra: dict[str, Any] = section if isinstance(section, dict) else {}

    def meta(key: str) -> Any:
        return extra.get(key, front.get(key))

    base_raw = _as_str(config.get("base_model_name_or_path")) or _as_str(
        as_list(front.get("base_model"))[:1]
    )
    if not base_raw:
        raise InvalidAdapter(
            f"{prefix}no base model: {ADAPTER_CONFIG} has no base_model_name_or_path "
            f"and {CARD} has no base_model"
        )
    kind = str(meta("kind") or "lora").lower()
    num_heads = meta("num_heads")
    if kind not in ("lora", "hydra"):
        raise InvalidAdapter(f"{prefix}{CARD}: loradex.kind must be 'lora' or 'hydra'")
    if num_heads is not None and (not isinstance(num_heads, int) or num_heads <= 0):
        raise InvalidAdapter(f"{prefix}{CARD}: loradex.num_heads must be a positive integer")
    file_list = tuple(sorted(files, key=lambda f: f.path))
    try:
        lineage = _lineage(extra.get("lineage"))
        alpha = _number(config.get("lora_alpha"), "lora_alpha")
        dropout = _number(config.get("lora_dropout"), "lora_dropout")
    except InvalidAdapter as exc:
        raise InvalidAdapter(f"{prefix}{exc}") from exc
    namespace = repo_id.split("/", 1)[0] if "/" in repo_id else None
    datasets = meta("dataset") or front.get("datasets")
    return Module(
        repo_id=repo_id,
        revision=revision,
        source=source,
        kind=kind,
        num_heads=num_heads,
        base_model=normalize_base_model(base_raw),
        base_model_raw=base_raw,
        peft_type=peft_type,
        task_type=_as_str(config.get("task_type")),
        rank=tensors.rank,
        alpha=alpha,
        dropout=dropout,
        target_modules=tensors.target_modules,
        bias=_as_str(config.get("bias")),
        num_parameters=tensors.num_parameters,
        dtype=tensors.dtype,
        total_size=sum(f.size for f in file_list) if file_list else None,
        author=author or _as_str(front.get("author")) or namespace,
        license=normalize_license(_as_str(front.get("license"))),
        tags=normalize_tags([*as_list(front.get("tags")), *tags]),
        task_name=_as_str(meta("task_name")),
        task_category=_as_str(meta("task_category")),
        dataset=_as_str(datasets),
        language=_as_str(front.get("language")),
        description=_as_str(meta("description")) or first_paragraph(body),
        downloads=int(downloads or 0),
        likes=int(likes or 0),
        created_at=created_at,
        updated_at=updated_at,
        card_text=body or None,
        files=file_list,
        lineage=lineage,
    )


# --------------------------------------------------------------------------- folders on disk


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

        return hydra_module_entity(folder, repo_id=repo_id, revision=revision, source=source)
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
    return module_from_metadata(
        rid,
        config,
        header,
        card_text,
        revision=revision,
        source=source,
        files=list_folder_files(folder),
        label=str(folder),
    )
