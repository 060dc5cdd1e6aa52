"""Scale-out, side by side in one run: the same units in this process and on a Ray cluster of
two one-CPU nodes started on this machine (head 127.0.0.2, node 127.0.0.3, all on loopback).

Parts (same machine, same inputs, one run):

- overhead: N empty units (a worker that returns at once), in-process against Ray: what Ray
  adds to each unit (submit, ship, return, record) when the unit itself costs nothing;
- library build: M modules of the upstream tasks on the embedded SmolLM2-135M (small
  settings), in-process (one process, torch on every core) against Ray (two workers, one core
  each, each loading the base model once); the modules must come out byte for byte equal;
- study slice: a few BBH tasks x seeds of ``benchmarks/bbh_study.py`` (small k, budget and
  test split), in-process against ``--ray``; the rows must be equal but for their timings.

Every Ray run reports its model loads, worker time, transfer and scheduling overhead a unit,
and driver writes (``composer.scaleout.summary``). Results: benchmarks/results/scaleout_<date>.json.

Run:  .venv/bin/python benchmarks/scaleout_bench.py [--modules 4] [--study-tasks navigate]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repository root, for benchmarks and tests
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--empty-units", type=int, default=40)
    p.add_argument("--modules", type=int, default=4, help="library modules to build")
    p.add_argument("--steps", type=int, default=2, help="training steps per module")
    p.add_argument("--batch-size", type=int, default=2, help="examples per training step")
    p.add_argument("--max-length", type=int, default=64, help="training tokens per example")
    p.add_argument("--test-size", type=int, default=4, help="held-out examples per module")
    p.add_argument("--study-tasks", default="navigate")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--budget", type=int, default=2)
    p.add_argument("--test-limit", type=int, default=4)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in-process; a one-CPU Ray worker runs on 1 (Ray sets "
                        "OMP_NUM_THREADS from its CPUs), so 1 compares like with like")
    p.add_argument("--skip-study", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                   / f"scaleout_{dt.date.today().isoformat()}.json")
    return p.parse_args()


def empty_units(cluster_address: str, n: int, scratch: Path) -> dict[str, Any]:
    """N units that cost nothing: the runner's own cost a unit, in-process and on Ray."""
    from composer.scaleout.ray_runner import RayRunner
    from composer.scaleout.units import LocalRunner, run_units
    from tests.support.toy_units import DoublingJob

    out: dict[str, Any] = {}
    for name, runner in (("in_process", LocalRunner()),
                         ("ray", RayRunner(cluster_address, python_path=[str(ROOT)]))):
        job = DoublingJob(scratch / f"empty_{name}", list(range(n)))
        summary = run_units(job, runner, progress=False)
        out[name] = summary.as_dict()
        out[name]["wall_per_unit"] = round(summary.wall_seconds / n, 4)
    return out


def library_build(cluster_address: str, args: argparse.Namespace,
                  scratch: Path) -> dict[str, Any]:
    """The same small library build in-process and on Ray; equal modules checked."""
    from composer.library import LibrarySpec, task_files
    from composer.models import ModelSpec
    from composer.scaleout.library_jobs import LibraryBuildJob
    from composer.scaleout.ray_runner import RayRunner
    from composer.scaleout.units import LocalRunner, run_units
    from composer.train import TrainConfig

    tasks = tuple(p.stem for p in task_files(DATA / "upstream"))[: args.modules]
    train = TrainConfig(rank=8, steps=args.steps, lr=1e-3, batch_size=args.batch_size,
                        max_length=args.max_length, save_dtype="float16")
    out: dict[str, Any] = {"tasks": list(tasks), "train": str(train),
                           "test_size": args.test_size}
    for name, runner in (("in_process", LocalRunner()),
                         ("ray", RayRunner(cluster_address))):
        spec = LibrarySpec(
            data_dir=DATA / "upstream", out_dir=scratch / f"library_{name}", tasks=tasks,
            test_size=args.test_size, max_train=100, train=train)
        summary = run_units(LibraryBuildJob(spec, ModelSpec(dtype="float32")), runner)
        out[name] = summary.as_dict()
    a, b = scratch / "library_in_process", scratch / "library_ray"
    out["same_bytes"] = {f: all((a / t / f).read_bytes() == (b / t / f).read_bytes()
                                for t in tasks)
                         for f in ("adapter_model.safetensors", "adapter_config.json",
                                   "README.md", "training_log.json")}
    out["adapter_max_abs_difference"] = max(adapter_difference(a / t, b / t) for t in tasks)
    return out


def adapter_difference(a: Path, b: Path) -> float:
    """The largest difference of one weight between two modules' adapters."""
    from safetensors.numpy import load_file

    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(
        str(b / "adapter_model.safetensors"))
    return float(max(abs(x[k].astype("float64") - y[k].astype("float64")).max() for k in x))


def study_slice(cluster_address: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """A slice of the BBH study in-process and with --ray; equal rows checked."""
    from benchmarks.study import main

    base = ["--tasks-dir", str(DATA / "bbh"), "--library", str(ROOT / "library"),
            "--tasks", args.study_tasks, "--seeds", str(args.seeds), "--k", str(args.k),
            "--budget", str(args.budget), "--test-limit", str(args.test_limit),
            "--methods", "lorahub", "--objectives", "choice", "--quiet"]
    out: dict[str, Any] = {"argv": base}
    for name, extra in (("in_process", []), ("ray", ["--ray", cluster_address])):
        path = scratch / f"study_{name}.json"
        started = time.perf_counter()
        study = main([*base, "--out", str(path), *extra])
        out[name] = {"wall_seconds": round(time.perf_counter() - started, 2),
                     "rows": len(study.computed), "cells": args.seeds * len(
                         args.study_tasks.split(","))}
    timings = {"seconds", "search_seconds", "screen_seconds", "newly_scored"}

    def rows(path: Path) -> Any:
        data = json.loads(path.read_text())
        for cells in data["tasks"].values():
            for cell in cells.values():
                for row in cell["systems"].values():
                    for key in timings & set(row):
                        del row[key]
        return data["tasks"]

    out["same_rows"] = rows(scratch / "study_in_process.json") == rows(scratch / "study_ray.json")
    return out


def main() -> None:
    from tests.support.ray_cluster import LocalRayCluster

    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="ldx-ray-", dir="/tmp")),
                              object_store_mb=300)
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "in_process_torch_threads": args.threads,
                    "load_average_at_start": os.getloadavg()},
        "cluster": "two Ray nodes on this machine (127.0.0.2 head, 127.0.0.3), 1 CPU each",
        "command": "python benchmarks/scaleout_bench.py " + " ".join(sys.argv[1:]),
    }
    try:
        started = time.perf_counter()
        cluster.start()
        results["cluster_start_seconds"] = round(time.perf_counter() - started, 1)
        results["empty_units"] = empty_units(cluster.address, args.empty_units, scratch)
        print(json.dumps(results["empty_units"], indent=1), flush=True)
        results["library_build"] = library_build(cluster.address, args, scratch)
        print(json.dumps(results["library_build"], indent=1), flush=True)
        if not args.skip_study:
            results["study_slice"] = study_slice(cluster.address, args, scratch)
            print(json.dumps(results["study_slice"], indent=1), flush=True)
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        results["machine"]["load_average_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
