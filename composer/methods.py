"""Composition methods: registered plug-ins behind one small interface.

A method turns a weight vector ``w`` (one weight per candidate; the optimizer only ever sees
this flat vector) into LoRA weights, twice over: *live*, writing into the buffers behind a
:class:`~composer.lora_runtime.GroupedLoraLinear` for every step of the search, and *exported*,
as the tensors of a PEFT adapter folder.

- ``lorahub``: the paper's ``A = sum w_i A_i``, ``B = sum w_i B_i`` (equal ranks and scales).
- ``mixed-rank``: the exact ``sum w_i s_i B_i A_i`` as one LoRA of rank ``sum r_i`` (any ranks),
  optionally compressed by SVD to a chosen rank.

Either method can also search one weight per candidate *per block of consecutive layers*
(:func:`build_bank` with ``layer_blocks > 1``): the weight vector then has ``blocks * n``
entries, block-major, and each block's layers are composed by their own slice of it.

Add a method by subclassing :class:`CompositionMethod` and decorating it with
:func:`register_method`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from composer.candidates import Candidate, LayerTensors, check_compatible
from composer.lora_math import concat_lora, svd_compress
from composer.lora_runtime import GroupedLoraLinear
from loradex.errors import ConfigError, IncompatibleModules

LayerViews = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


@dataclass
class ExportedLora:
    """The tensors and LoRA settings of a composed module, ready for a PEFT folder."""

    rank: int
    alpha: float
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def peft_key(layer_path: str, which: str) -> str:
    """The key PEFT saves a layer's ``lora_A``/``lora_B`` weight under."""
    return f"base_model.model.{layer_path}.lora_{which}.weight"


class WeightBank(ABC):
    """The candidates' tensors stacked once on the device, plus the live composed buffer."""

    layer_paths: list[str]
    n_candidates: int
    scale: float

    @abstractmethod
    def set_weights(self, weights: torch.Tensor) -> None:
        """Compose ``weights [g, n]`` into the live buffer's first ``g`` groups, in place."""

    @abstractmethod
    def views(self, groups: int) -> LayerViews:
        """Per layer, the ``(a, b, gate)`` views for ``groups`` groups."""

    @abstractmethod
    def export(self, weights: np.ndarray) -> ExportedLora:
        """The composed module for one weight vector, as PEFT tensors (float32, on CPU)."""

    @property
    def dim(self) -> int:
        """Length of one weight vector (one weight per candidate unless split by layer block)."""
        return self.n_candidates

    def bind(self, wrapped: Mapping[str, GroupedLoraLinear], groups: int) -> None:
        """Point every wrapped layer at this bank's views for ``groups`` groups."""
        views = self.views(groups)
        for path, layer in wrapped.items():
            a, b, gate = views[path]
            layer.bind(a, b, scale=self.scale, gate=gate)


class CompositionMethod(ABC):
    """One way of composing candidate LoRAs from a weight vector."""

    name: ClassVar[str]
    needs_equal_ranks: ClassVar[bool]

    def check(self, candidates: Sequence[Candidate], base_model: str | None = None) -> None:
        """Raise :class:`IncompatibleModules` unless this method can compose ``candidates``."""
        check_compatible(
            candidates, base_model=base_model, same_rank=self.needs_equal_ranks, method=self.name
        )

    @abstractmethod
    def build_bank(
        self,
        candidates: Sequence[Candidate],
        layers: Sequence[Mapping[str, LayerTensors]],
        *,
        max_groups: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> WeightBank:
        """Stack the candidates' tensors for search and export."""

    def describe(self) -> dict[str, Any]:
        """Settings of this method for the model card."""
        return {"name": self.name}


METHODS: dict[str, Callable[..., CompositionMethod]] = {}


def register_method(cls: type[CompositionMethod]) -> type[CompositionMethod]:
    """Class decorator: make a composition method available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **options: Any) -> CompositionMethod:
    """An instance of the registered method ``name`` with its options."""
    if name not in METHODS:
        raise ConfigError(f"unknown composition method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](**options)


def _layer_paths(layers: Sequence[Mapping[str, LayerTensors]], ids: Sequence[str]) -> list[str]:
    paths = list(layers[0])
    for layer_map, rid in zip(layers[1:], ids[1:], strict=True):
        if set(layer_map) != set(paths):
            missing = sorted(set(paths) ^ set(layer_map))[:3]
            raise IncompatibleModules(
                f"{rid} adapts different layers than {ids[0]} (e.g. {', '.join(missing)})"
            )
    return paths


class LorahubBank(WeightBank):
    """All candidates' A and B of all layers as one ``[n, P]`` matrix; composing is one matmul."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        layers: Sequence[Mapping[str, LayerTensors]],
        *,
        max_groups: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.layer_paths = _layer_paths(layers, [c.repo_id for c in candidates])
        self.n_candidates = len(candidates)
        self.scale = candidates[0].scale
        self.rank = candidates[0].rank
        self.alpha = candidates[0].alpha
        self.use_rslora = candidates[0].use_rslora
        self._slots: dict[str, tuple[int, tuple[int, int], int, tuple[int, int]]] = {}
        offset = 0
        for path in self.layer_paths:
            a, b = layers[0][path].a, layers[0][path].b
            self._slots[path] = (offset, tuple(a.shape), offset + a.numel(), tuple(b.shape))  # type: ignore[assignment]
            offset += a.numel() + b.numel()
        self.size = offset
        stacked = torch.empty(self.n_candidates, offset, dtype=torch.float32)
        for i, layer_map in enumerate(layers):
            for path, (off_a, shape_a, off_b, shape_b) in self._slots.items():
                a, b = layer_map[path].a, layer_map[path].b
                if tuple(a.shape) != shape_a or tuple(b.shape) != shape_b:
                    raise IncompatibleModules(
                        f"{candidates[i].repo_id}: layer {path} has shapes "
                        f"{tuple(a.shape)}/{tuple(b.shape)}, expected {shape_a}/{shape_b}"
                    )
                stacked[i, off_a : off_a + a.numel()] = a.reshape(-1)
                stacked[i, off_b : off_b + b.numel()] = b.reshape(-1)
        # Export always composes from the float32 originals, whatever the compute dtype.
        self.stacked_fp32 = stacked
        self.stacked = stacked.to(device=device, dtype=dtype).contiguous()
        self.buffer = torch.zeros(max_groups, offset, device=device, dtype=dtype)

    def set_weights(self, weights: torch.Tensor) -> None:
        g = weights.shape[0]
        torch.matmul(weights.to(self.stacked.dtype), self.stacked, out=self.buffer[:g])

    def views(self, groups: int) -> LayerViews:
        views: LayerViews = {}
        for path, (off_a, shape_a, off_b, shape_b) in self._slots.items():
            n_a = shape_a[0] * shape_a[1]
            n_b = shape_b[0] * shape_b[1]
            a = self.buffer[:groups, off_a : off_a + n_a].view(groups, *shape_a)
            b = self.buffer[:groups, off_b : off_b + n_b].view(groups, *shape_b)
            views[path] = (a, b, None)
        return views

    def export(self, weights: np.ndarray) -> ExportedLora:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        flat = (w[None, :] @ self.stacked_fp32.double())[0].float()
        tensors: dict[str, torch.Tensor] = {}
        for path, (off_a, shape_a, off_b, shape_b) in self._slots.items():
            n_a = shape_a[0] * shape_a[1]
            n_b = shape_b[0] * shape_b[1]
            tensors[peft_key(path, "A")] = flat[off_a : off_a + n_a].view(shape_a).clone()
            tensors[peft_key(path, "B")] = flat[off_b : off_b + n_b].view(shape_b).clone()
        return ExportedLora(
            rank=self.rank,
            alpha=self.alpha,
            tensors=tensors,
            info={"use_rslora": self.use_rslora},
        )


@register_method
class LorahubMethod(CompositionMethod):
    """LoraHub (Huang et al., 2023): ``A = sum w_i A_i``, ``B = sum w_i B_i``."""

    name = "lorahub"
    needs_equal_ranks = True

    def build_bank(
        self,
        candidates: Sequence[Candidate],
        layers: Sequence[Mapping[str, LayerTensors]],
        *,
        max_groups: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> WeightBank:
        return LorahubBank(candidates, layers, max_groups=max_groups, device=device, dtype=dtype)


class MixedRankBank(WeightBank):
    """Each layer's candidates concatenated on the rank axis; the weights act as a rank gate.

    The live update is ``B_cat diag(gate) A_cat`` with ``gate`` = each candidate's weight
    repeated over its rank, so composing writes one small ``[g, sum r]`` tensor.
    """

    def __init__(
        self,
        candidates: Sequence[Candidate],
        layers: Sequence[Mapping[str, LayerTensors]],
        *,
        max_groups: int,
        device: torch.device,
        dtype: torch.dtype,
        svd_rank: int | None,
    ) -> None:
        self.layer_paths = _layer_paths(layers, [c.repo_id for c in candidates])
        self.n_candidates = len(candidates)
        self.scale = 1.0
        self.svd_rank = svd_rank
        self.ranks = [c.rank for c in candidates]
        self.scales = [c.scale for c in candidates]
        self.total_rank = sum(self.ranks)
        self._a_cpu: dict[str, list[torch.Tensor]] = {}
        self._b_cpu: dict[str, list[torch.Tensor]] = {}
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        ones = [1.0] * self.n_candidates
        for path in self.layer_paths:
            a_list = [lm[path].a for lm in layers]
            b_list = [lm[path].b for lm in layers]
            self._a_cpu[path], self._b_cpu[path] = a_list, b_list
            a_cat, b_cat = concat_lora(a_list, b_list, self.scales, ones)
            self._a[path] = a_cat[None].to(device=device, dtype=dtype).contiguous()
            self._b[path] = b_cat[None].to(device=device, dtype=dtype).contiguous()
        self.index = torch.repeat_interleave(
            torch.arange(self.n_candidates), torch.tensor(self.ranks)
        ).to(device)
        self.gate = torch.zeros(max_groups, self.total_rank, device=device, dtype=dtype)

    def set_weights(self, weights: torch.Tensor) -> None:
        g = weights.shape[0]
        torch.index_select(weights.to(self.gate.dtype), 1, self.index, out=self.gate[:g])

    def views(self, groups: int) -> LayerViews:
        gate = self.gate[:groups]
        return {p: (self._a[p], self._b[p], gate) for p in self.layer_paths}

    def export(self, weights: np.ndarray) -> ExportedLora:
        w = [float(x) for x in np.asarray(weights)]
        tensors: dict[str, torch.Tensor] = {}
        energies: list[float] = []
        rank = self.total_rank
        for path in self.layer_paths:
            a, b = concat_lora(self._a_cpu[path], self._b_cpu[path], self.scales, w)
            if self.svd_rank is not None:
                a, b, energy = svd_compress(a, b, self.svd_rank)
                energies.append(energy)
                rank = self.svd_rank
            tensors[peft_key(path, "A")] = a.float().contiguous()
            tensors[peft_key(path, "B")] = b.float().contiguous()
        info: dict[str, Any] = {"concat_rank": self.total_rank}
        if energies:
            info["svd_rank"] = self.svd_rank
            info["svd_energy_kept_mean"] = round(float(np.mean(energies)), 6)
            info["svd_energy_kept_min"] = round(float(np.min(energies)), 6)
        # alpha == rank gives PEFT scale 1: the candidates' scales are already inside B.
        return ExportedLora(rank=rank, alpha=float(rank), tensors=tensors, info=info)


@register_method
class MixedRankMethod(CompositionMethod):
    """The exact weighted sum of updates ``sum w_i s_i B_i A_i`` (any ranks and scales)."""

    name = "mixed-rank"
    needs_equal_ranks = False

    def __init__(self, svd_rank: int | None = None) -> None:
        if svd_rank is not None and svd_rank < 1:
            raise ConfigError(f"--svd-rank must be >= 1, got {svd_rank}")
        self.svd_rank = svd_rank

    def build_bank(
        self,
        candidates: Sequence[Candidate],
        layers: Sequence[Mapping[str, LayerTensors]],
        *,
        max_groups: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> WeightBank:
        return MixedRankBank(
            candidates,
            layers,
            max_groups=max_groups,
            device=device,
            dtype=dtype,
            svd_rank=self.svd_rank,
        )

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "svd_rank": self.svd_rank}


# --------------------------------------------------------------------------- layer blocks

_NUMBER = re.compile(r"\d+")


def _block_key(path: str) -> tuple[str, int]:
    """``model.layers.12.self_attn.q_proj`` -> ``("model.layers.", 12)``: the stack and depth."""
    match = _NUMBER.search(path)
    if match is None:
        return (path, -1)
    return (path[: match.start()], int(match.group()))


def layer_blocks(paths: Sequence[str], blocks: int) -> list[list[str]]:
    """Split adapted layer paths into ``blocks`` runs of consecutive transformer blocks.

    Paths are grouped by their stack and block number (``model.layers.12.*`` belongs to block
    12 of stack ``model.layers.``), the blocks are ordered by stack name, then depth (an
    encoder-decoder's ``decoder.`` stack sorts before ``encoder.``), and cut into ``blocks``
    near-equal runs. Raises :class:`ConfigError` when there are fewer blocks than ``blocks``.
    """
    by_block: dict[tuple[str, int], list[str]] = {}
    for path in paths:
        by_block.setdefault(_block_key(path), []).append(path)
    keys = sorted(by_block)
    if not 1 <= blocks <= len(keys):
        raise ConfigError(
            f"--layer-groups must be between 1 and the number of adapted blocks ({len(keys)}), "
            f"got {blocks}"
        )
    runs = np.array_split(np.arange(len(keys)), blocks)
    return [[p for i in run for p in by_block[keys[int(i)]]] for run in runs]


class LayerBlockBank(WeightBank):
    """One bank per block of layers; the weight vector is ``[blocks * n]``, block-major."""

    def __init__(self, banks: Sequence[WeightBank], blocks: Sequence[Sequence[str]]) -> None:
        self.banks = list(banks)
        self.blocks = [list(b) for b in blocks]
        self.layer_paths = [p for bank in self.banks for p in bank.layer_paths]
        self.n_candidates = self.banks[0].n_candidates
        self.scale = self.banks[0].scale

    @property
    def dim(self) -> int:
        return self.n_candidates * len(self.banks)

    def _split(self, weights: Any) -> Any:
        return weights.reshape(weights.shape[0], len(self.banks), self.n_candidates)

    def set_weights(self, weights: torch.Tensor) -> None:
        per_block = self._split(weights)
        for j, bank in enumerate(self.banks):
            bank.set_weights(per_block[:, j, :].contiguous())

    def views(self, groups: int) -> LayerViews:
        views: LayerViews = {}
        for bank in self.banks:
            views.update(bank.views(groups))
        return views

    def export(self, weights: np.ndarray) -> ExportedLora:
        per_block = self._split(np.asarray(weights)[None])[0]
        parts = [bank.export(per_block[j]) for j, bank in enumerate(self.banks)]
        tensors: dict[str, torch.Tensor] = {}
        for part in parts:
            tensors.update(part.tensors)
        info = dict(parts[0].info)
        for key in info:
            values = [p.info[key] for p in parts]
            if key.endswith("_min"):
                info[key] = min(values)
            elif key.endswith("_mean"):
                info[key] = round(float(np.mean(values)), 6)
        info["layer_group_spans"] = [[block[0], block[-1]] for block in self.blocks]
        return ExportedLora(rank=parts[0].rank, alpha=parts[0].alpha, tensors=tensors, info=info)


def build_bank(
    method: CompositionMethod,
    candidates: Sequence[Candidate],
    layers: Sequence[Mapping[str, LayerTensors]],
    *,
    max_groups: int,
    device: torch.device,
    dtype: torch.dtype,
    layer_groups: int = 1,
) -> WeightBank:
    """``method``'s bank for the candidates, with one weight per candidate per layer block."""
    if layer_groups == 1:
        return method.build_bank(
            candidates, layers, max_groups=max_groups, device=device, dtype=dtype
        )
    paths = _layer_paths(layers, [c.repo_id for c in candidates])
    blocks = layer_blocks(paths, layer_groups)
    banks = [
        method.build_bank(
            candidates,
            [{p: layer_map[p] for p in block} for layer_map in layers],
            max_groups=max_groups,
            device=device,
            dtype=dtype,
        )
        for block in blocks
    ]
    return LayerBlockBank(banks, blocks)
