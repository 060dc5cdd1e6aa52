"""loradex's own jobs on a real two-node Ray cluster with the tiny model: a library build and
evaluation give the same modules and scores as in-process, and a build whose driver is killed
resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from loradex.cli import cli
from loradex.errors import LoradexError
from tests.support.tiny_models import save_tiny_causal, write_jsonl

SIGNATURE = "loradex_signature.safetensors"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model and four tiny upstream tasks (two with choices)."""
    root = tmp_path_factory.mktemp("upstream")
    model = save_tiny_causal(root / "model", chat_template=None)
    tasks = root / "tasks"
    tasks.mkdir()
    for t in range(4):
        write_jsonl(tasks / f"task{t}.jsonl", [
            {"input": f"task {t} question {i}", "target": "yes" if (i + t) % 2 else "no",
             **({"choices": ["yes", "no"]} if t % 2 else {})}
            for i in range(12)
        ])
    return {"model": model, "tasks": tasks}


def _build(upstream: dict[str, Path], out: Path, *extra: str, steps: int = 3) -> None:
    result = CliRunner().invoke(cli, [
        "library", "build", "--data-dir", str(upstream["tasks"]), "--out", str(out),
        "--base-model", str(upstream["model"]), "--steps", str(steps), "--test-size", "2",
        *extra])
    assert result.exit_code == 0, result.output


def _evaluate(upstream: dict[str, Path], out: Path, *extra: str) -> None:
    result = CliRunner().invoke(cli, [
        "library", "evaluate", "--data-dir", str(upstream["tasks"]), "--out", str(out),
        "--base-model", str(upstream["model"]), *extra])
    assert result.exit_code == 0, result.output


def _manifest(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    for record in manifest["modules"].values():
        record.pop("seconds")  # wall time of the training, not a result
    return dict(manifest)


def assert_same_library(a: Path, b: Path) -> None:
    """Every file of every module equal byte for byte; a signature file's tensors and metadata
    equal (safetensors writes its metadata keys in a per-process hash order)."""
    from safetensors import safe_open

    assert _manifest(a) == _manifest(b)
    modules = sorted(p.name for p in a.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert modules == sorted(p.name for p in b.iterdir()
                             if p.is_dir() and not p.name.startswith("."))
    for name in modules:
        files = sorted(p.name for p in (a / name).iterdir())
        assert files == sorted(p.name for p in (b / name).iterdir())
        for file in files:
            if file == SIGNATURE:
                with safe_open(a / name / file, "np") as x, safe_open(b / name / file, "np") as y:
                    assert x.metadata() == y.metadata()
                    assert all((x.get_tensor(k) == y.get_tensor(k)).all() for k in x.keys())  # noqa: SIM118
            else:
                assert (a / name / file).read_bytes() == (b / name / file).read_bytes(), file


@pytest.fixture(scope="module")
def local_library(upstream: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library built in-process (40 steps a module: long enough to kill a driver mid-run),
    on one torch thread as each Ray worker runs (Ray sets OMP_NUM_THREADS=1): with two, the
    float sums split across threads, and on a busy machine MKL picks how many, so the last bits
    of the weights could differ from a worker's."""
    import torch

    out = tmp_path_factory.mktemp("local") / "library"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _build(upstream, out, steps=40)
    finally:
        torch.set_num_threads(threads)
    return out


def test_library_build_and_evaluate_on_ray_equal_in_process(ray_cluster, upstream, tmp_path,
                                                            local_library):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(local_library, local)
    _build(upstream, on_ray, "--ray", ray_cluster.address, steps=40)
    assert len(_manifest(on_ray)["modules"]) == 4
    assert_same_library(local, on_ray)

    _evaluate(upstream, local)
    _evaluate(upstream, on_ray, "--ray", ray_cluster.address)
    assert all("accuracy" in r for r in _manifest(on_ray)["modules"].values())
    assert_same_library(local, on_ray)
    assert (local / "README.md").read_text() == (on_ray / "README.md").read_text()


def test_a_build_whose_driver_is_killed_resumes(ray_cluster, upstream, tmp_path, local_library):
    on_ray = tmp_path / "ray"
    driver = subprocess.Popen(
        [sys.executable, "-m", "loradex.cli.main", "library", "build", "--data-dir",
         str(upstream["tasks"]), "--out", str(on_ray), "--base-model", str(upstream["model"]),
         "--steps", "40", "--test-size", "2", "--ray", ray_cluster.address],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (on_ray / "manifest.json").is_file() or not _manifest(on_ray)["modules"]:
            assert driver.poll() is None and time.monotonic() < deadline, "no module written"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, mid-run
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    first = set(_manifest(on_ray)["modules"])
    assert 1 <= len(first) < 4

    _build(upstream, on_ray, "--ray", ray_cluster.address, steps=40)
    assert_same_library(local_library, on_ray)


TIMINGS = {"seconds", "search_seconds", "screen_seconds", "newly_scored"}


def _rows(results_file: Path) -> dict:
    """A study's cells without their timings (and how many examples a row scored anew, which
    depends on which seed of a task got to an example first)."""
    results = json.loads(results_file.read_text())
    for cells in results["tasks"].values():
        for cell in cells.values():
            for row in cell["systems"].values():
                for key in TIMINGS & set(row):
                    del row[key]
    return {"tasks": results["tasks"], "per_example": results["per_example"]}


def test_study_on_ray_equals_in_process(ray_cluster, upstream, tmp_path):
    from benchmarks.study import main
    from tests.support.tiny_models import save_lora

    library = tmp_path / "library"
    for i in range(2):
        save_lora(upstream["model"], library / f"mod{i}", seed=20 + i)
    tasks = tmp_path / "bbh"
    tasks.mkdir()
    for name, labels in (("yesno", ("yes", "no")), ("truth", ("true", "false"))):
        write_jsonl(tasks / f"{name}.jsonl", [
            {"input": f"question {i}: is {i} even?", "target": labels[i % 3 == 0],
             "choices": list(labels)} for i in range(12)])

    def argv(out: Path, *extra: str) -> list[str]:
        return ["--tasks-dir", str(tasks), "--library", str(library), "--base-model",
                str(upstream["model"]), "--seeds", "2", "--budget", "3", "--k", "2",
                "--methods", "lorahub", "--objectives", "lm", "--out", str(out), "--quiet",
                *extra]

    local = main(argv(tmp_path / "local.json"))
    on_ray = main(argv(tmp_path / "ray.json", "--ray", ray_cluster.address))
    assert sorted(on_ray.computed) == sorted(local.computed) and len(local.computed) == 4 * 5
    assert _rows(tmp_path / "ray.json") == _rows(tmp_path / "local.json")
    # Resumed: nothing left to compute.
    assert main(argv(tmp_path / "ray.json", "--ray", ray_cluster.address)).computed == []


def _plan(root: Path, out_dir: str, model: Path) -> Path:
    """Three tasks: two good ones and one whose candidate is a broken adapter folder."""
    plan = root / f"{out_dir}.yaml"
    plan.write_text(f"""
base_model: {model}
out_dir: {out_dir}
defaults: {{budget: 6, seed: 0}}
tasks:
  - {{name: first, examples: few.jsonl, candidates: [loras/mod0, loras/mod1]}}
  - {{name: broken, examples: few.jsonl, candidates: [loras/mod0, loras/broken]}}
  - {{name: second, examples: few.jsonl, candidates: [loras/mod1, loras/mod2],
      method: mixed-rank}}
""")
    return plan


def _provenance(folder: Path) -> dict:
    record = json.loads((folder / "loradex_provenance.json").read_text())
    record["composition"].pop("seconds")  # wall time of the search, not a result
    return dict(record)


def test_compose_batch_on_ray_equals_in_process(ray_cluster, upstream, tmp_path, loradex_home):
    from composer.scaleout.batch_plan import load_plan
    from composer.scaleout.compose_jobs import ComposeBatchJob
    from loradex.settings import Settings
    from tests.support.tiny_models import FEW_SHOT, save_lora

    for i in range(3):
        save_lora(upstream["model"], tmp_path / "loras" / f"mod{i}", seed=i)
    broken = tmp_path / "loras" / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{")
    write_jsonl(tmp_path / "few.jsonl", FEW_SHOT)

    runner = CliRunner()
    local = runner.invoke(cli, ["compose-batch", str(_plan(tmp_path, "local", upstream["model"]))])
    on_ray = runner.invoke(cli, ["compose-batch", str(_plan(tmp_path, "ray", upstream["model"])),
                                 "--ray", ray_cluster.address])
    for result in (local, on_ray):  # the failed unit is raised after the others are written
        assert isinstance(result.exception, LoradexError), result.output
        assert "compose-batch: 1 of 3 unit(s) failed" in str(result.exception)
        assert "broken: InvalidAdapter" in str(result.exception)
    for name in ("first", "second"):
        a, b = tmp_path / "local" / name, tmp_path / "ray" / name
        for file in ("adapter_model.safetensors", "adapter_config.json"):
            assert (a / file).read_bytes() == (b / file).read_bytes()
        assert _provenance(a) == _provenance(b)
    assert not (tmp_path / "ray" / "broken").exists()
    assert "indexed as local/second" in on_ray.output  # by the driver, in the registry

    # A second run would compose only the task that failed.
    job = ComposeBatchJob(load_plan(tmp_path / "ray.yaml"), Settings.resolve())
    total, todo = job.plan()
    assert (total, [u.key for u in todo]) == (3, ["broken"])
