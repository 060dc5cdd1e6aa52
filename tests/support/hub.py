"""A real ``loradex serve`` for the Hub tests: tokens made with ``loradex token create``, the
CLI run in a subprocess as a user would, and tiny real PEFT adapters (numpy only).

The ``hub`` and ``hf_cache`` fixtures built on these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from registry.server.launch import LaunchedServer, start_server

MAX_UPLOAD = 2 * 1024 * 1024  # the test servers refuse files above 2 MiB


def loradex(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``loradex`` CLI in a subprocess, like a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "loradex", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"loradex {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


def make_adapter(
    folder: Path,
    *,
    rank: int = 4,
    hidden: int = 16,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    base_model: str = "org/tiny-llama",
    layers: int = 1,
    seed: int = 0,
    card: str | None = None,
    config_rank: int | None = None,
) -> Path:
    """Write a real PEFT LoRA adapter folder (safetensors via numpy) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for module in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(
                np.float32
            )
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((hidden, rank)).astype(
                np.float32
            )
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": config_rank or rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "base_model_name_or_path": base_model,
        "task_type": "CAUSAL_LM",
        "lora_dropout": 0.0,
        "bias": "none",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if card is None:
        card = (
            f"---\nbase_model: {base_model}\nlibrary_name: peft\nlicense: apache-2.0\n"
            f"tags: [lora]\n---\n\nA tiny test adapter (seed {seed}).\n"
        )
    if card:
        (folder / "README.md").write_text(card)
    return folder


@dataclass
class HubServer:
    """A running ``loradex serve`` and what tests need to talk to it."""

    launched: LaunchedServer
    db_url: str
    data_dir: Path
    alice: str  # write token of alice, member of org "team"
    bob: str  # write token of bob
    reader: str  # read-only token of carol

    @property
    def url(self) -> str:
        """The server's base URL (``http://127.0.0.1:PORT``)."""
        return self.launched.url

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr)."""
        assert self.launched.log_path is not None
        return self.launched.log_path

    def api(self, token: str | None = None) -> Any:
        """An ``HfApi`` on this server (token=False: anonymous)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=token or False)

    def blob_files(self) -> list[Path]:
        """Every stored blob file (temporary files excluded)."""
        root = self.data_dir / "blobs"
        return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]

    def temp_files(self) -> list[Path]:
        """Upload temp files currently on disk."""
        return list((self.data_dir / "blobs" / "tmp").glob("*"))

    def internal_errors(self) -> list[str]:
        """Lines of the server log that report an internal error (a test fails on any)."""
        return [
            ln
            for ln in self.log_path.read_text(errors="replace").splitlines()
            if "Traceback" in ln or "internal error" in ln
        ]


def start_hub(root: Path, db_url: str, workers: int = 2) -> HubServer:
    """Create tokens with the CLI, start ``loradex serve`` and wait until it answers."""
    alice = loradex(
        "--db", db_url, "token", "create", "alice", "--namespace", "team"
    ).stdout.strip()
    bob = loradex("--db", db_url, "token", "create", "bob").stdout.strip()
    reader = loradex("--db", db_url, "token", "create", "carol", "--read-only").stdout.strip()
    data = root / "hub-data"
    log_path = root / "server.log"
    server = start_server(db_url, data, workers=workers, max_upload_size=MAX_UPLOAD,
                          log_level="warning", log_path=log_path)
    return HubServer(server, db_url, data, alice, bob, reader)
