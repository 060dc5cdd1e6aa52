"""Write PEFT adapter folders atomically: config + safetensors + model card, all or nothing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from loradex.errors import ConfigError
from loradex.files import replace_folder

SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse to write into a non-empty folder unless ``overwrite`` (checked before any work)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"output folder {out} exists and is not empty (use --overwrite)")
    return out


def lora_config_dict(
    *,
    base_model: str,
    rank: int,
    alpha: float,
    target_modules: list[str],
    task_type: str,
    dropout: float = 0.0,
) -> dict[str, Any]:
    """An ``adapter_config.json`` that stock PEFT loads, built through PEFT's own ``LoraConfig``."""
    from peft import LoraConfig

    # PEFT annotates lora_alpha as int, but float alphas are valid and saved as such.
    alpha_arg: Any = alpha
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha_arg,
        target_modules=sorted(target_modules),
        lora_dropout=dropout,
        bias="none",
        task_type=task_type,
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    raw = config.to_dict()
    # PEFT keeps some fields as sets; JSON (and PEFT's own save_pretrained) wants lists.
    return {k: sorted(v) if isinstance(v, set) else v for k, v in raw.items()}


def write_adapter_folder(
    out: str | Path,
    *,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    card: str,
    extra_files: Mapping[str, bytes] | None = None,
    save_dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write config, tensors (cast to ``save_dtype``), README.md and extras; replace ``out`` whole.

    Everything is written to a temporary sibling folder first and renamed into place, so an
    interrupted run never leaves a half-written adapter under the real name.
    """
    if save_dtype not in SAVE_DTYPES:
        raise ConfigError(f"invalid save dtype {save_dtype!r}: choose {', '.join(SAVE_DTYPES)}")
    out = check_output_dir(out, overwrite)
    dtype = SAVE_DTYPES[save_dtype]

    def fill(tmp: Path) -> None:
        cfg = dict(config)
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        cast = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
        save_file(cast, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

    return replace_folder(out, fill)
