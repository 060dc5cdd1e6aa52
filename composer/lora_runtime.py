"""A LoRA runtime for search: live adapter weights that are views into one flat buffer.

:class:`GroupedLoraLinear` wraps a target ``nn.Linear`` of an unmodified transformers model.
It holds ``G`` groups of LoRA weights (``A [G, r, in]``, ``B [G, out, r]``, optionally a gate
``[G, r]`` on the rank axis) and, for an input whose batch holds ``G`` equal-sized groups of
rows, applies group ``g``'s LoRA to group ``g`` with one batched matmul. ``G = 1`` is a plain
LoRA. The tensors are *views*: the composition method writes new weights into the buffer
behind them in place, so a search step never rebuilds a state dict or touches the modules.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


class GroupedLoraLinear(nn.Module):
    """``y = base(x) + scale * B_g (gate_g * (A_g x))`` for the rows of group ``g``."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.lora_a: torch.Tensor | None = None
        self.lora_b: torch.Tensor | None = None
        self.gate: torch.Tensor | None = None
        self.scale = 1.0

    @property
    def groups(self) -> int:
        """Number of weight groups currently bound (1 = a plain LoRA)."""
        sizes = [t.shape[0] for t in (self.lora_a, self.lora_b, self.gate) if t is not None]
        return max(sizes) if sizes else 1

    def bind(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        scale: float = 1.0,
        gate: torch.Tensor | None = None,
    ) -> None:
        """Point this layer at ``a [G|1, r, in]``, ``b [G|1, out, r]``, ``gate [G, r]`` views."""
        self.lora_a, self.lora_b, self.gate, self.scale = a, b, gate, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        a, b = self.lora_a, self.lora_b
        if a is None or b is None:
            return out
        groups = self.groups
        lead = x.shape[:-1]
        if groups == 1:
            h = x @ a[0].T
            if self.gate is not None:
                h = h * self.gate[0]
            return out + (h @ b[0].T) * self.scale
        xg = x.reshape(groups, -1, x.shape[-1])
        h = torch.matmul(xg, a.transpose(1, 2))  # [G, M, r]; a may broadcast from [1, r, in]
        if self.gate is not None:
            h = h * self.gate[:, None, :]
        delta = torch.matmul(h, b.transpose(1, 2)) * self.scale  # [G, M, out]
        return out + delta.reshape(*lead, delta.shape[-1])


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), leaf


def find_layer(model: nn.Module, layer_path: str) -> nn.Module:
    """The module at ``layer_path``, trying the path as written in PEFT files and without the
    ``model.`` prefix a task head adds, so adapters for a backbone or a full model both fit."""
    for candidate in (layer_path, layer_path.removeprefix("model.")):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise KeyError(layer_path)


@contextmanager
def attached(model: nn.Module, layer_paths: list[str]) -> Iterator[dict[str, GroupedLoraLinear]]:
    """Wrap the linear layers at ``layer_paths`` in :class:`GroupedLoraLinear`; undo on exit."""
    wrapped: dict[str, GroupedLoraLinear] = {}
    originals: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for path in layer_paths:
            try:
                layer = find_layer(model, path)
            except KeyError:
                raise KeyError(f"the base model has no layer {path}") from None
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"layer {path} is {type(layer).__name__}, not nn.Linear")
            full = next(n for n, m in model.named_modules() if m is layer)
            parent, leaf = _parent(model, full)
            wrapper = GroupedLoraLinear(layer)
            setattr(parent, leaf, wrapper)
            originals.append((parent, leaf, layer))
            wrapped[path] = wrapper
        yield wrapped
    finally:
        for parent, leaf, layer in reversed(originals):
            setattr(parent, leaf, layer)


def bind_all(
    wrapped: Mapping[str, GroupedLoraLinear],
    views: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    scale: float,
) -> None:
    """Bind every wrapped layer to its ``(a, b, gate)`` views."""
    for path, layer in wrapped.items():
        a, b, gate = views[path]
        layer.bind(a, b, scale=scale, gate=gate)
