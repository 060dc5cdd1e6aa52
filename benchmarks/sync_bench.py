"""Hub server and sync throughput: full sync, no-change re-sync, parallel 1 MB downloads.

Seeds a server database with N small real PEFT adapter repos *directly through the server's
own storage layer* (``HubService.create_repo`` + ``HubService.commit``: the same code the HTTP
commit endpoint runs, minus HTTP), starts ``loradex serve`` on it as a subprocess, then drives
it over HTTP with the real ``huggingface_hub`` client:

1. full sync of every repo into an empty registry (``sync_hub``, 8 parallel fetches), and the
   same on a subset with 1 fetch at a time, side by side;
2. a second sync with nothing changed;
3. ``hf_hub_download(force_download=True)`` of 1 MB files from 8 threads.

    python benchmarks/sync_bench.py --repos 5000 [--workdir /tmp/sync-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ["HF_HUB_DISABLE_XET"] = "1"

import numpy as np
from safetensors.numpy import save

from registry.db import make_engine
from registry.schema import ensure_schema
from registry.server.app import load_or_create_secret
from registry.server.blobstore import BlobStore
from registry.server.launch import start_server
from registry.server.service import HubService
from registry.server.tokens import create_token
from registry.server.types import CommitOp, ServerConfig


def adapter_files(i: int, rank: int = 4, hidden: int = 64) -> dict[str, bytes]:
    """A real LoRA adapter (q_proj, v_proj of one layer), a config and a card; ~4 KB."""
    rng = np.random.default_rng(i)
    tensors = {}
    for module in ("q_proj", "v_proj"):
        prefix = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((hidden, rank)).astype(np.float32)
    base = f"bench/base-{i % 5}"
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base,
        "task_type": "CAUSAL_LM",
    }
    card = (
        f"---\nbase_model: {base}\nlibrary_name: peft\nlicense: apache-2.0\n"
        f"tags: [lora, bench]\n---\n\nBenchmark adapter number {i}.\n"
    )
    return {
        "adapter_model.safetensors": save(tensors),
        "adapter_config.json": json.dumps(config).encode(),
        "README.md": card.encode(),
    }


def seed(service: HubService, n: int, identity_token: str) -> float:
    """Create ``n`` adapter repos through the service; return seconds taken."""
    identity = service.authenticate(f"Bearer {identity_token}")
    start = time.perf_counter()
    for i in range(n):
        name = f"adapter-{i:05d}"
        service.create_repo(identity, "bench", name, False, "http://bench")
        ops = [CommitOp("file", path, content=data) for path, data in adapter_files(i).items()]
        service.commit(identity, f"bench/{name}", "main", {"summary": "seed"}, ops, "http://bench")
        if (i + 1) % 500 == 0:
            print(f"  seeded {i + 1}/{n} repos ({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def seed_downloads(service: HubService, token: str, files: int) -> None:
    """One repo holding ``files`` distinct 1 MB files."""
    identity = service.authenticate(f"Bearer {token}")
    service.create_repo(identity, "bench", "downloads", False, "http://bench")
    rng = np.random.default_rng(0)
    ops = [
        CommitOp("file", f"blob-{k:02d}.bin", content=rng.bytes(1024 * 1024)) for k in range(files)
    ]
    service.commit(
        identity, "bench/downloads", "main", {"summary": "1 MB files"}, ops, "http://bench"
    )


def timed_sync(url: str, db_url: str, jobs: int, limit: int | None = None) -> tuple[float, str]:
    from hub_client import HubClient, SyncOptions, sync_hub
    from registry.store import RegistryStore

    store = RegistryStore.from_url(db_url)
    start = time.perf_counter()
    report = sync_hub(HubClient(url), store, SyncOptions(jobs=jobs, limit=limit, progress=False))
    elapsed = time.perf_counter() - start
    store.engine.dispose()
    return elapsed, report.summary()


def process_cpu_seconds(root_pid: int) -> float:
    """user+system CPU seconds of a process and its children so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def own_cpu_seconds() -> float:
    """user+system CPU seconds of this process (all threads)."""
    t = os.times()
    return t.user + t.system


def download_rate(
    url: str, files: int, clients: int, seconds: float, cache: Path
) -> tuple[int, float]:
    """Downloads completed by ``clients`` threads in ~``seconds``; every file checked by size."""
    from huggingface_hub import hf_hub_download

    done = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        j = k
        while time.perf_counter() < stop:
            path = hf_hub_download(
                "bench/downloads",
                f"blob-{j % files:02d}.bin",
                endpoint=url,
                cache_dir=cache / f"c{k}",
                force_download=True,
                token=False,
            )
            assert Path(path).stat().st_size == 1024 * 1024
            done[k] += 1
            j += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repos", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--jobs", type=int, default=8, help="parallel fetches of the sync")
    parser.add_argument(
        "--serial-subset",
        type=int,
        default=300,
        help="repos synced with --jobs 1 for the side-by-side comparison",
    )
    parser.add_argument("--download-seconds", type=float, default=15.0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the seeded server here and reuse it on the next run "
        "(default: a temporary folder, deleted at the end)",
    )
    args = parser.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="loradex-sync-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    server_db = f"sqlite:///{root / 'server.db'}"
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()}; load average {os.getloadavg()[0]:.1f}; server db {server_db} "
        f"({args.workers} workers)"
    )
    seeded_marker = root / f"seeded-{args.repos}"
    if not seeded_marker.exists():
        ensure_schema(server_db)
        engine = make_engine(server_db)
        config = ServerConfig(data_dir=root / "data", db_url=server_db)
        service = HubService(
            engine, BlobStore(config.blobs_dir), config, load_or_create_secret(config.data_dir)
        )
        token = create_token(engine, "bench", "bench")
        seconds = seed(service, args.repos, token)
        print(
            f"seeded {args.repos} adapter repos through the storage layer in {seconds:.1f} s "
            f"({args.repos / seconds:.0f} repos/s)"
        )
        seed_downloads(service, token, files=16)
        engine.dispose()
        seeded_marker.touch()
    else:
        print(f"reusing the {args.repos} repos seeded in {root}")
    for name in ("serial.db", "par.db", "client.db"):
        (root / name).unlink(missing_ok=True)

    server = start_server(server_db, root / "data", workers=args.workers)
    url = server.url
    try:
        subset_s, subset_summary = timed_sync(
            url, f"sqlite:///{root / 'serial.db'}", 1, args.serial_subset
        )
        print(
            f"sync, jobs=1, first {args.serial_subset} repos: {subset_s:.1f} s "
            f"({args.serial_subset / subset_s:.0f} repos/s)  [{subset_summary}]"
        )
        subset_p, subset_summary = timed_sync(
            url, f"sqlite:///{root / 'par.db'}", args.jobs, args.serial_subset
        )
        print(
            f"sync, jobs={args.jobs}, first {args.serial_subset} repos: {subset_p:.1f} s "
            f"({args.serial_subset / subset_p:.0f} repos/s)  [{subset_summary}]"
        )
        client_cpu, server_cpu = own_cpu_seconds(), process_cpu_seconds(server.process.pid)
        full, summary = timed_sync(url, f"sqlite:///{root / 'client.db'}", args.jobs)
        client_cpu = own_cpu_seconds() - client_cpu
        server_cpu = process_cpu_seconds(server.process.pid) - server_cpu
        print(
            f"full sync, jobs={args.jobs}: {args.repos} repos in {full:.1f} s "
            f"({args.repos / full:.0f} repos/s; target >= 200)  [{summary}]"
        )
        per_repo = (client_cpu + server_cpu) / args.repos * 1000
        print(
            f"  CPU: client {client_cpu:.1f} s + server {server_cpu:.1f} s = {per_repo:.2f} ms "
            f"per repo, i.e. {2000 / per_repo:.0f} repos/s if both cores were ours"
        )
        again, summary = timed_sync(url, f"sqlite:///{root / 'client.db'}", args.jobs)
        print(f"no-change re-sync: {again:.2f} s (target < 10 s)  [{summary}]")
        for clients in (1, 8):
            n, elapsed = download_rate(url, 16, clients, args.download_seconds, root / "dl")
            print(
                f"1 MB downloads, {clients} client thread(s): {n} in {elapsed:.1f} s = "
                f"{n / elapsed:.0f} files/s ({n / elapsed:.0f} MB/s)"
            )
    finally:
        server.stop(timeout=30)
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
