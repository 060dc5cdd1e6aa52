"""Hydra modules in memory and on disk: ``hydra_config.json`` + ``hydra_model.safetensors``.

A Hydra module is, per wrapped linear layer, one shared down-projection A [r, in], N
up-projection heads B_j [out, r] and a router W_g [N, in] (+ bias [N]). The layout on disk is
described in ``docs/hydra-format.md``; validation of names and shapes is shared with the
torch-free reader in :mod:`registry.hydra`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from loradex.errors import InvalidAdapter
from loradex.files import atomic_write, replace_folder
from registry.hydra import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    HydraConfig,
    TensorInfo,
    read_config,
    read_tensor_table,
    validate_tensor_table,
)

_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
}


@dataclass
class HydraLayerWeights:
    """One layer's Hydra tensors: A [r, in], B stacked [N, out, r], router [N, in], bias [N]."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    router_weight: torch.Tensor
    router_bias: torch.Tensor | None

    @property
    def num_heads(self) -> int:
        """N, the number of up-projection heads."""
        return int(self.lora_B.shape[0])


@dataclass
class HydraModule:
    """A whole Hydra module: its config and the weights of every wrapped layer (by module path)."""

    config: HydraConfig
    layers: dict[str, HydraLayerWeights]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under their on-disk names (``<layer>.lora_B.<j>.weight`` etc.)."""
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in sorted(self.layers.items()):
            tensors[f"{name}.lora_A.weight"] = layer.lora_A
            for j in range(layer.num_heads):
                tensors[f"{name}.lora_B.{j}.weight"] = layer.lora_B[j]
            tensors[f"{name}.router.weight"] = layer.router_weight
            if layer.router_bias is not None:
                tensors[f"{name}.router.bias"] = layer.router_bias
        return tensors

    def num_parameters(self) -> int:
        """Total number of stored values (A, all heads, routers)."""
        return sum(t.numel() for t in self.state_dict().values())


def hydra_from_state_dict(
    config: HydraConfig, tensors: Mapping[str, torch.Tensor], source: str = "<memory>"
) -> HydraModule:
    """Build a :class:`HydraModule` from on-disk-named tensors, validated against ``config``."""
    table = {
        name: TensorInfo(
            dtype=_SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), shape=tuple(t.shape)
        )
        for name, t in tensors.items()
    }
    shapes = validate_tensor_table(config, table, source)
    layers: dict[str, HydraLayerWeights] = {}
    for shape in shapes:
        name = shape.name
        layers[name] = HydraLayerWeights(
            lora_A=tensors[f"{name}.lora_A.weight"],
            lora_B=torch.stack(
                [tensors[f"{name}.lora_B.{j}.weight"] for j in range(config.num_heads)]
            ),
            router_weight=tensors[f"{name}.router.weight"],
            router_bias=tensors.get(f"{name}.router.bias"),
        )
    return HydraModule(config=config, layers=layers)


def load_hydra(folder: str | Path, device: str | torch.device = "cpu") -> HydraModule:
    """Load and strictly validate a Hydra folder; errors are ``InvalidAdapter`` naming the file."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise InvalidAdapter(f"{folder}: no {WEIGHTS_NAME}")
    # The header check runs first so a bad file is refused before any tensor is read.
    validate_tensor_table(config, read_tensor_table(weights), str(weights))
    try:
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise InvalidAdapter(f"{weights}: cannot load tensors ({exc})") from exc
    return hydra_from_state_dict(config, tensors, source=str(weights))


def save_hydra(module: HydraModule, folder: str | Path, card: str | None = None) -> Path:
    """Write ``module`` to ``folder`` (weights, config, optional README card); return the folder.

    Each file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so an interrupted save never leaves a half-written file under a real name.
    The config goes last: a folder with a config always has complete weights beside it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()
    }
    # Validate before writing: a module that would not load back is never saved.
    hydra_from_state_dict(module.config, tensors, source=str(folder / WEIGHTS_NAME))
    metadata = {"format": "pt", "loradex_format": "hydra"}
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata=metadata))
    if card is not None:
        atomic_write(folder / CARD_NAME, lambda p: p.write_text(card, encoding="utf-8"))
    config_text = json.dumps(module.config.to_json_dict(), indent=2, sort_keys=False) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(config_text, encoding="utf-8"))
    return folder


def write_hydra_folder(
    module: HydraModule,
    out: str | Path,
    *,
    card: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    save_dtype: torch.dtype | None = None,
) -> Path:
    """Write a whole Hydra folder at ``out``, replacing it in one ``os.replace``.

    Everything goes to a temporary sibling folder first, so an interrupted run never leaves a
    half-written module under the real name. ``save_dtype`` casts every tensor (default: as is).
    The caller decides whether replacing an existing ``out`` is allowed.
    """
    out = Path(out)
    if save_dtype is not None:
        module = HydraModule(
            config=module.config,
            layers={
                name: HydraLayerWeights(
                    lora_A=layer.lora_A.to(save_dtype),
                    lora_B=layer.lora_B.to(save_dtype),
                    router_weight=layer.router_weight.to(save_dtype),
                    router_bias=None
                    if layer.router_bias is None
                    else layer.router_bias.to(save_dtype),
                )
                for name, layer in module.layers.items()
            },
        )

    def fill(tmp: Path) -> None:
        save_hydra(module, tmp, card=card)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

    return replace_folder(out, fill)
