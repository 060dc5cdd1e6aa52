"""Shared by tests/server and tests/hub_client: a real ``loradex serve`` subprocess per database
backend, tokens made with ``loradex token create``, and tiny real PEFT adapters (numpy only).

Both conftests import this module (``from hubtest_support import *``), so the fixtures below
exist in each folder; a module-scoped server is started at most once per test file and backend.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pg_support import PG_ADMIN_URL, drop_pg_schema, make_pg_schema_url
from safetensors.numpy import save_file

MAX_UPLOAD = 2 * 1024 * 1024  # the test servers refuse files above 2 MiB


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    url: str
    db_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    alice: str  # write token of alice, member of org "team"
    bob: str  # write token of bob
    reader: str  # read-only token of carol
    log_path: Path

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


def start_server(root: Path, db_url: str, workers: int = 2) -> HubServer:
    """Create tokens with the CLI, start ``loradex serve`` and wait until it answers."""
    alice = loradex(
        "--db", db_url, "token", "create", "alice", "--namespace", "team"
    ).stdout.strip()
    bob = loradex("--db", db_url, "token", "create", "bob").stdout.strip()
    reader = loradex("--db", db_url, "token", "create", "carol", "--read-only").stdout.strip()
    port = free_port()
    data = root / "hub-data"
    log_path = root / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loradex",
            "--db",
            db_url,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data",
            str(data),
            "--workers",
            str(workers),
            "--max-upload-size",
            str(MAX_UPLOAD),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/api/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    return HubServer(url, db_url, data, process, alice, bob, reader, log_path)


def stop_server(server: HubServer) -> None:
    """Stop the server process (SIGTERM, then SIGKILL)."""
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubServer]:
    """A ``loradex serve`` subprocess (2 workers) on SQLite or on a fresh PostgreSQL schema."""
    root = tmp_path_factory.mktemp(f"hub-{request.param}")
    schema = None
    if request.param == "sqlite":
        db_url = f"sqlite:///{root / 'hub.db'}"
    else:
        try:
            db_url, schema = make_pg_schema_url("ldx_hub")
        except Exception as exc:  # the suite requires the PostgreSQL server; say so loudly
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    server = start_server(root, db_url)
    try:
        yield server
    finally:
        stop_server(server)
        if schema:
            drop_pg_schema(schema)
        errors = [
            ln
            for ln in server.log_path.read_text(errors="replace").splitlines()
            if "Traceback" in ln or "internal error" in ln
        ]
        assert not errors, f"the server logged internal errors:\n{server.log_path.read_text()}"


@pytest.fixture
def hf_cache(tmp_path: Path) -> Path:
    """A private huggingface_hub cache folder for one test."""
    return tmp_path / "hf-cache"


__all__ = [
    "MAX_UPLOAD",
    "HubServer",
    "free_port",
    "hf_cache",
    "hub",
    "loradex",
    "make_adapter",
    "start_server",
    "stop_server",
]
