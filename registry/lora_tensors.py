"""A PEFT LoRA adapter's tensors against its config: key names, ranks, targets.

PEFT saves each adapted module ``M`` as ``M.lora_A.weight`` ``[r, in, ...]`` and
``M.lora_B.weight`` ``[out, r, ...]`` (``lora_embedding_A``/``_B`` for an embedding), every path
under ``base_model.model.``. :data:`LORA_KEY` is the one pattern for those names: the registry
validates adapters with it and the composer loads their tensors with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loradex.errors import InvalidAdapter
from registry.normalize import normalize_targets
from registry.safetensors_header import DTYPE_NAMES

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LORA_KEY",
    "PEFT_PREFIX",
    "AdapterTensors",
    "analyse_lora_tensors",
    "strip_peft_prefix",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])"
    r"(?:\.(?P<adapter>(?!(?:weight|bias)$)[^.]+))?(?:\.(?P<param>weight|bias))?$"
)
"""A LoRA tensor name: groups ``module`` (its path), ``embedding``, ``side`` (A/B), ``adapter``,
``param`` (``weight``, ``bias`` for PEFT's ``lora_bias``, or None for an embedding's)."""
PEFT_PREFIX = "base_model.model."


def strip_peft_prefix(path: str) -> str:
    """A module path without PEFT's ``base_model.model.`` prefix (as the base model names it)."""
    return path[len(PEFT_PREFIX) :] if path.startswith(PEFT_PREFIX) else path


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


def analyse_lora_tensors(
    config: Mapping[str, Any], header: Mapping[str, Any], *, label: str = ADAPTER_WEIGHTS
) -> AdapterTensors:
    """Check that the LoRA tensors in ``header`` agree with ``config``; return what they say.

    Checks: every ``lora_A`` has its ``lora_B``; A is ``[r, ...]`` and B is ``[..., r]`` with
    ``r`` the config's rank (or its ``rank_pattern`` entry); the targeted module names are the
    config's ``target_modules`` (a list: same set; a string: a regex every module matches).
    """
    if config.get("enable_lora"):
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}: enable_lora (PEFT 0.2's LoRA of merged query/key/value "
            "layers) is not supported; re-save the adapter with a recent PEFT"
        )
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
        match = LORA_KEY.match(tensor)
        if not match:
            continue
        dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + 1
        if match.group("param") == "bias":  # lora_B's bias (lora_bias): no rank to check
            continue
        pairs.setdefault(match.group("module"), {})[match.group("side")] = info["shape"]
    if not pairs:
        raise InvalidAdapter(f"{label}: no lora_A/lora_B tensors found (is this a LoRA adapter?)")
    for module_path, sides in sorted(pairs.items()):
        short = strip_peft_prefix(module_path)
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
    leaves = normalize_targets(strip_peft_prefix(p).rsplit(".", 1)[-1] for p in pairs)
    declared = config.get("target_modules")
    if isinstance(declared, str):
        pattern = re.compile(declared)
        for module_path in pairs:
            short = strip_peft_prefix(module_path)
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
    dtype = "+".join(DTYPE_NAMES.get(d, d.lower()) for d in sorted(dtypes)) or None
    return AdapterTensors(
        rank=rank,
        target_modules=leaves,
        num_parameters=num_parameters,
        dtype=dtype,
        module_paths=tuple(sorted(strip_peft_prefix(p) for p in pairs)),
    )
