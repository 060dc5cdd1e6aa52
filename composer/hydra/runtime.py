"""Apply a Hydra module to an unmodified transformers model by wrapping its target nn.Linear.

``attach_hydra`` swaps each target layer for a :class:`HydraLinear` that keeps the original
layer inside; ``HydraHandle.detach`` swaps the originals back. The same wrapper serves training
(parameters require grad, gates are recorded for the load-balancing term) and inference, on any
device and dtype the model is on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from composer.hydra.format import HydraLayerWeights, HydraModule
from loradex.errors import IncompatibleModules
from registry.hydra import HydraConfig


class HydraLinear(nn.Module):
    """``y = W x + s * Σ_j g_j(x) B_j A x`` with ``g(x) = softmax((W_g x + b) / T)``, per token.

    ``A x`` is computed once; the N heads are applied as one matmul of the gate-weighted
    ``[.., N*r]`` activations with the heads laid side by side (``[out, N*r]``).
    """

    def __init__(
        self,
        base: nn.Linear,
        weights: HydraLayerWeights,
        *,
        scale: float,
        temperature: float,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        device = base.weight.device
        dtype = dtype or weights.lora_A.dtype

        def param(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.detach().to(device=device, dtype=dtype).clone())

        self.base = base
        self.lora_A = param(weights.lora_A)
        self.lora_B = param(weights.lora_B)
        self.router_weight = param(weights.router_weight)
        self.router_bias = None if weights.router_bias is None else param(weights.router_bias)
        self.scale = scale
        self.temperature = temperature
        self.fixed_gates: torch.Tensor | None = None
        self.record_gates = False
        self.recorded: list[torch.Tensor] = []

    @property
    def num_heads(self) -> int:
        """N, the number of heads."""
        return int(self.lora_B.shape[0])

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The router's softmax over heads for each token of ``x`` (``[.., N]``)."""
        if self.fixed_gates is not None:
            return self.fixed_gates.to(x.dtype).expand(*x.shape[:-1], self.num_heads)
        logits = F.linear(x, self.router_weight, self.router_bias)
        return torch.softmax(logits / self.temperature, dim=-1)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution ``s * Σ_j g_j B_j A x`` in the adapter's dtype."""
        x = x.to(self.lora_A.dtype)
        hidden = F.linear(x, self.lora_A)  # [.., r]
        gates = self.gates(x)  # [.., N]
        if self.record_gates:
            self.recorded.append(gates)
        n, out, r = self.lora_B.shape
        mixed = (gates.unsqueeze(-1) * hidden.unsqueeze(-2)).flatten(-2)  # [.., N*r]
        heads = self.lora_B.permute(1, 0, 2).reshape(out, n * r)  # [out, N*r]
        return F.linear(mixed, heads) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the gated Hydra update, returned in the base output's dtype."""
        result = self.base(x)
        return result + self.delta(x).to(result.dtype)

    def weights(self) -> HydraLayerWeights:
        """A detached CPU copy of this layer's Hydra tensors."""

        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu").clone()

        return HydraLayerWeights(
            lora_A=copy(self.lora_A),
            lora_B=copy(self.lora_B),
            router_weight=copy(self.router_weight),
            router_bias=None if self.router_bias is None else copy(self.router_bias),
        )


@dataclass(frozen=True)
class HeadUsage:
    """How tokens were spread over heads, averaged over the wrapped layers.

    ``top1_share[j]``: fraction of tokens whose largest gate is head j.
    ``mean_gate[j]``: mean gate value of head j. ``per_layer``: top-1 shares per layer.
    """

    top1_share: tuple[float, ...]
    mean_gate: tuple[float, ...]
    per_layer: dict[str, tuple[float, ...]]

    @property
    def normalized_entropy(self) -> float:
        """Entropy of ``top1_share`` divided by log N: 1 = perfectly even, 0 = one head."""
        n = len(self.top1_share)
        if n == 1:
            return 1.0
        entropy = -sum(p * math.log(p) for p in self.top1_share if p > 0)
        return entropy / math.log(n)

    def to_json_dict(self) -> dict[str, object]:
        """A JSON-ready summary (rounded) for model cards and reports."""
        return {
            "top1_share": [round(p, 4) for p in self.top1_share],
            "mean_gate": [round(p, 4) for p in self.mean_gate],
            "normalized_entropy": round(self.normalized_entropy, 4),
        }


class HydraHandle:
    """A Hydra module attached to a model: its wrapped layers, and how to take it off again."""

    def __init__(
        self,
        model: nn.Module,
        config: HydraConfig,
        layers: dict[str, HydraLinear],
        originals: dict[str, nn.Linear],
    ) -> None:
        self.model = model
        self.config = config
        self.layers = layers
        self._originals = originals

    def detach(self) -> None:
        """Put the original nn.Linear layers back; the model is as it was before attaching."""
        for name, original in self._originals.items():
            _set_submodule(self.model, name, original)
        self._originals = {}

    def to_module(self, config: HydraConfig | None = None) -> HydraModule:
        """The current weights as a :class:`HydraModule` (CPU copies), ready for ``save_hydra``."""
        return HydraModule(
            config=config or self.config,
            layers={name: layer.weights() for name, layer in self.layers.items()},
        )

    def parameters(self) -> list[nn.Parameter]:
        """All Hydra parameters (A, heads, routers) of every wrapped layer."""
        params: list[nn.Parameter] = []
        for layer in self.layers.values():
            params.extend(p for p in layer.parameters(recurse=False))
        return params

    def router_parameters(self) -> list[nn.Parameter]:
        """Only the routers' parameters (what the router fit after composition trains)."""
        params: list[nn.Parameter] = []
        for layer in self.layers.values():
            params.append(layer.router_weight)
            if layer.router_bias is not None:
                params.append(layer.router_bias)
        return params

    def set_fixed_gates(self, gates: Sequence[float] | torch.Tensor | None) -> None:
        """Use one constant gate vector for every token (``None`` restores the router)."""
        for layer in self.layers.values():
            if gates is None:
                layer.fixed_gates = None
                continue
            value = torch.as_tensor(gates, dtype=layer.lora_A.dtype, device=layer.lora_A.device)
            if value.shape != (layer.num_heads,):
                raise IncompatibleModules(
                    f"fixed gates have shape {list(value.shape)}, expected [{layer.num_heads}]"
                )
            layer.fixed_gates = value

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record each wrapped layer's gates during the forwards inside the block."""
        for layer in self.layers.values():
            layer.recorded = []
            layer.record_gates = True
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.record_gates = False

    def clear_recorded(self) -> None:
        """Drop recorded gates (free their memory)."""
        for layer in self.layers.values():
            layer.recorded = []

    def balance_loss(
        self, attention_mask: torch.Tensor | None = None, kind: str = "switch"
    ) -> torch.Tensor:
        """Load-balancing loss over the gates recorded in the last forward, mean over layers.

        ``switch``: ``N * Σ_j f_j P_j`` (Switch Transformer), f_j the top-1 share of head j
        (no gradient) and P_j its mean gate; 1 when usage is even, N when one head takes all.
        ``kl``: ``KL(P || uniform) = Σ_j P_j log(N P_j)``; 0 when the mean gate is even.
        Padding tokens (``attention_mask == 0``) are left out.
        """
        losses = []
        for layer in self.layers.values():
            if not layer.recorded:
                continue
            gates = _valid_tokens(layer.recorded[-1], attention_mask)
            n = gates.shape[-1]
            mean_gate = gates.mean(dim=0)
            if kind == "switch":
                top1 = F.one_hot(gates.argmax(dim=-1), n).to(gates.dtype).mean(dim=0)
                losses.append(n * (top1.detach() * mean_gate).sum())
            elif kind == "kl":
                losses.append((mean_gate * torch.log(mean_gate * n + 1e-9)).sum())
            else:
                raise ValueError(f"unknown balance loss {kind!r} (known: switch, kl)")
        if not losses:
            raise RuntimeError("no gates recorded: call the model inside handle.recording()")
        return torch.stack(losses).mean()

    def head_usage(self, attention_masks: Sequence[torch.Tensor | None] | None = None) -> HeadUsage:
        """Head usage over every forward recorded so far (one mask per recorded forward)."""
        per_layer: dict[str, tuple[float, ...]] = {}
        top1_sum: torch.Tensor | None = None
        mean_sum: torch.Tensor | None = None
        for name, layer in self.layers.items():
            if not layer.recorded:
                continue
            masks = list(attention_masks) if attention_masks is not None else []
            chunks = [
                _valid_tokens(g.detach(), masks[i] if i < len(masks) else None)
                for i, g in enumerate(layer.recorded)
            ]
            gates = torch.cat(chunks).float()
            top1 = F.one_hot(gates.argmax(dim=-1), layer.num_heads).float().mean(dim=0)
            mean = gates.mean(dim=0)
            per_layer[name] = tuple(top1.tolist())
            top1_sum = top1 if top1_sum is None else top1_sum + top1
            mean_sum = mean if mean_sum is None else mean_sum + mean
        if top1_sum is None or mean_sum is None:
            raise RuntimeError("no gates recorded: call the model inside handle.recording()")
        count = len(per_layer)
        return HeadUsage(
            top1_share=tuple((top1_sum / count).tolist()),
            mean_gate=tuple((mean_sum / count).tolist()),
            per_layer=per_layer,
        )


def attach_hydra(
    model: nn.Module,
    module: HydraModule,
    *,
    trainable: bool = False,
    dtype: torch.dtype | None = None,
) -> HydraHandle:
    """Wrap the layers ``module`` names in ``model``; return the handle that can detach them.

    The Hydra parameters live on each wrapped layer's device, in ``dtype`` (default: the
    module's own dtype) and require grad only when ``trainable``. The base model is untouched.
    """
    config = module.config
    found = dict(model.named_modules())
    for name, weights in module.layers.items():
        target = found.get(name)
        if isinstance(target, HydraLinear):
            raise IncompatibleModules(f"layer {name!r} already has a Hydra module attached")
        if not isinstance(target, nn.Linear):
            what = "missing" if target is None else f"a {type(target).__name__}, not nn.Linear"
            raise IncompatibleModules(f"Hydra layer {name!r} is {what} in this base model")
        expected = (weights.lora_A.shape[1], weights.lora_B.shape[1])
        if (target.in_features, target.out_features) != expected:
            raise IncompatibleModules(
                f"Hydra layer {name!r} is [{expected[0]} -> {expected[1]}] but the model's "
                f"layer is [{target.in_features} -> {target.out_features}]"
            )
    layers: dict[str, HydraLinear] = {}
    originals: dict[str, nn.Linear] = {}
    for name, weights in module.layers.items():
        original = found[name]
        assert isinstance(original, nn.Linear)
        wrapped = HydraLinear(
            original,
            weights,
            scale=config.scale,
            temperature=config.router_temperature,
            dtype=dtype,
        )
        # Only the Hydra tensors: the wrapped base layer keeps its own requires_grad.
        for param in wrapped.parameters(recurse=False):
            param.requires_grad_(trainable)
        _set_submodule(model, name, wrapped)
        layers[name] = wrapped
        originals[name] = original
    return HydraHandle(model, config, layers, originals)


def init_hydra_module(
    model: nn.Module, config: HydraConfig, *, seed: int = 0, router_std: float = 0.02
) -> HydraModule:
    """A fresh Hydra module for ``model``: A as PEFT inits LoRA A, heads zero, small random router.

    Every ``nn.Linear`` whose last name component is in ``config.target_modules`` is wrapped.
    Zero heads make the untrained module an exact no-op, as a fresh LoRA is.
    """
    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, HydraLayerWeights] = {}
    for name, sub in model.named_modules():
        if not isinstance(sub, nn.Linear) or name.rsplit(".", 1)[-1] not in config.target_modules:
            continue
        a = torch.empty(config.rank, sub.in_features)
        # kaiming_uniform_(a=sqrt(5)) as nn.Linear and PEFT use, drawn from our own generator.
        bound = 1.0 / math.sqrt(sub.in_features)
        a.uniform_(-bound, bound, generator=generator)
        router = torch.randn(config.num_heads, sub.in_features, generator=generator) * router_std
        layers[name] = HydraLayerWeights(
            lora_A=a,
            lora_B=torch.zeros(config.num_heads, sub.out_features, config.rank),
            router_weight=router,
            router_bias=torch.zeros(config.num_heads) if config.router_bias else None,
        )
    if not layers:
        raise IncompatibleModules(
            f"no nn.Linear named {list(config.target_modules)} in this model"
        )
    return HydraModule(config=config, layers=layers)


def constant_gate_lora(
    module: HydraModule, gates: Sequence[float] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(A, B = Σ_j g_j B_j)`` for a constant gate.

    ``gates=None`` uses each layer's router output at ``x = 0``, ``softmax(b / T)``.
    """
    merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in module.layers.items():
        if gates is None:
            bias = layer.router_bias
            logits = torch.zeros(layer.num_heads) if bias is None else bias.float()
            g = torch.softmax(logits / module.config.router_temperature, dim=-1)
        else:
            g = torch.as_tensor(gates, dtype=torch.float32)
            if g.shape != (layer.num_heads,):
                raise IncompatibleModules(
                    f"gates have {g.numel()} values but the module has {layer.num_heads} heads"
                )
        b = torch.einsum("n,nor->or", g.to(torch.float64), layer.lora_B.to(torch.float64))
        merged[name] = (layer.lora_A, b.to(layer.lora_B.dtype))
    return merged


def export_constant_gate_to_peft(
    module: HydraModule,
    gates: Sequence[float] | None,
    out_dir: str | Path,
    *,
    task_type: str = "CAUSAL_LM",
    overwrite: bool = False,
) -> Path:
    """Write a plain PEFT LoRA (A, merged B) that ``peft.PeftModel.from_pretrained`` loads.

    Exact for a constant gate; for a trained router it is the module at that fixed gate. The
    folder (config, weights, a card saying where it came from) is replaced as a whole.
    """
    from composer.adapter_io import lora_config_dict, write_adapter_folder
    from composer.cards import render_card

    config = module.config
    merged = constant_gate_lora(module, gates)
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b) in merged.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    config_dict = lora_config_dict(
        base_model=config.base_model,
        rank=config.rank,
        alpha=config.alpha,
        target_modules=list(config.target_modules),
        task_type=task_type,
    )
    gate_note = (
        "each layer's router at x = 0, softmax(b / T)"
        if gates is None
        else "[" + ", ".join(f"{g:.4f}" for g in gates) + "]"
    )
    front = {
        "base_model": config.base_model,
        "library_name": "peft",
        "tags": ["loradex", "lora", "peft", "hydra-lora-export"],
        "loradex": {
            "kind": "lora",
            "exported_from": "hydra",
            "num_heads_merged": config.num_heads,
            "gates": None if gates is None else [float(g) for g in gates],
        },
    }
    body = (
        f"A plain LoRA exported from a Hydra module with {config.num_heads} heads at a constant "
        f"gate ({gate_note}): A is the shared A and B = sum_j g_j B_j."
    )
    dtype = next(iter(merged.values()))[0].dtype
    save_dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
    title = Path(out_dir).name
    return write_adapter_folder(
        out_dir,
        config=config_dict,
        tensors=tensors,
        card=render_card(front, title, body),
        save_dtype=save_dtype,
        overwrite=overwrite,
    )


def _valid_tokens(gates: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Flatten ``[.., N]`` gates to ``[tokens, N]``, keeping tokens where the mask is 1.

    A mask whose shape is not the gates' token grid (a packed batch's 4-D mask, or a seq2seq
    decoder layer under the encoder's mask) has no padding to remove there: all tokens count.
    """
    n = gates.shape[-1]
    if attention_mask is None or attention_mask.shape != gates.shape[:-1]:
        return gates.reshape(-1, n)
    return gates[attention_mask.to(torch.bool)]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
