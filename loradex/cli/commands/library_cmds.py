"""``loradex library``: build the starter module library (one LoRA per upstream task)."""

from __future__ import annotations

from pathlib import Path

import click

from loradex.cli.ray_options import ray_options, ray_runner, worker_resources
from loradex.settings import Settings


@click.group()
def library() -> None:
    """Build and score the starter library of LoRA modules (one per upstream task).

    \b
    Example:
      loradex library build --data-dir ../shared/data/upstream --out library
      loradex library evaluate --data-dir ../shared/data/upstream --out library
      loradex library heldout --data-dir ../shared/data/upstream --out heldout
    """


@library.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of upstream task files (JSONL: input, target, optional choices).")
@click.option("--out", "out_dir", default="library", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Library folder.")
@click.option("--task", "tasks", multiple=True, help="Build only these tasks (repeatable).")
@click.option("--max-modules", type=int, default=None, help="Stop after this many tasks.")
@click.option("--steps", type=int, default=30, show_default=True,
              help="Training steps per module.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate.")
@click.option("--rank", type=int, default=16, show_default=True, help="LoRA rank.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per step.")
@click.option("--test-size", type=int, default=50, show_default=True,
              help="Held-out examples per task (never trained on).")
@click.option("--base-model", default=None, help="Base model (default: the embedded SmolLM2).")
@click.option("--dtype", default="auto", show_default=True, help="Model dtype while training.")
@ray_options
@click.pass_obj
def build(settings: Settings, data_dir: Path, out_dir: Path, tasks: tuple[str, ...],
          max_modules: int | None, steps: int, lr: float, rank: int, batch_size: int,
          test_size: int, base_model: str | None, dtype: str, ray_address: str | None,
          workers: int | None, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Train one LoRA module per task file; modules already built are skipped.

    With --ray, each module is a unit trained on a Ray worker (each worker loads the base
    model once); this process writes the modules and the manifest as they arrive.

    \b
    Example:
      loradex library build --data-dir ../shared/data/upstream --out library
      loradex library build --data-dir ../shared/data/upstream --out library --ray head:6379
    """
    from composer.library import LibrarySpec, build_library, task_files, write_library_readme
    from composer.models import ModelSpec, load_base_model
    from composer.train import TrainConfig

    names = tuple(tasks) or tuple(p.stem for p in task_files(data_dir))
    if max_modules is not None:
        names = names[:max_modules]
    spec = LibrarySpec(
        data_dir=data_dir,
        out_dir=out_dir,
        tasks=names,
        test_size=test_size,
        train=TrainConfig(rank=rank, steps=steps, lr=lr, batch_size=batch_size,
                          max_length=256, save_dtype="float16"),
    )
    model = ModelSpec(name_or_path=base_model, dtype=dtype)
    if ray_address is not None:
        from composer.library import load_manifest
        from composer.scaleout.library_jobs import LibraryBuildJob
        from composer.scaleout.units import run_units

        job = LibraryBuildJob(spec, model,
                              resources=worker_resources(cpus_per_worker, gpus_per_worker))
        summary = run_units(job, ray_runner(ray_address, workers))
        write_library_readme(out_dir)
        summary.check()
        click.echo(f"library {out_dir}: {len(load_manifest(out_dir)['modules'])} module(s)")
        return
    click.echo(f"loading base model {base_model or '(embedded SmolLM2-135M-Instruct)'} ...")
    loaded = load_base_model(model)
    from loradex.cli.embedding import optional_embedder

    manifest = build_library(loaded, spec, embedder=optional_embedder())
    write_library_readme(out_dir)
    click.echo(f"library {out_dir}: {len(manifest['modules'])} module(s)")


@library.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the upstream task files the library was built from.")
@click.option("--out", "out_dir", default="library", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Library folder.")
@click.option("--force", is_flag=True, help="Score modules that already have scores again.")
@click.option("--base-model", default=None, help="Base model (default: the embedded SmolLM2).")
@ray_options
def evaluate(data_dir: Path, out_dir: Path, force: bool, base_model: str | None,
             ray_address: str | None, workers: int | None, cpus_per_worker: float,
             gpus_per_worker: float) -> None:
    """Score each built module and the base model on the task's held-out split.

    Writes the scores into manifest.json and regenerates the library's README.md table.
    With --ray, each module is a unit scored on a Ray worker (its files and held-out split
    shipped through Ray's object store).

    \b
    Example:
      loradex library evaluate --data-dir ../shared/data/upstream --out library
    """
    from composer.library import built_spec, evaluate_library, write_library_readme
    from composer.models import ModelSpec, load_base_model

    spec = built_spec(data_dir, out_dir)
    if ray_address is not None:
        from composer.scaleout.library_jobs import LibraryEvaluateJob
        from composer.scaleout.units import run_units

        job = LibraryEvaluateJob(spec, ModelSpec(name_or_path=base_model), force=force,
                                 resources=worker_resources(cpus_per_worker, gpus_per_worker))
        summary = run_units(job, ray_runner(ray_address, workers))
        click.echo(f"wrote {write_library_readme(out_dir)}")
        summary.check()
        return
    loaded = load_base_model(ModelSpec(name_or_path=base_model))
    evaluate_library(loaded, spec, force=force)
    click.echo(f"wrote {write_library_readme(out_dir)}")


@library.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the upstream task files the library was built from.")
@click.option("--library", "library_dir", default="library", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Library folder.")
@click.option("--out", "dest", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="Folder to write <task>.jsonl files into.")
@click.option("--task", "tasks", multiple=True,
              help="Only these tasks (repeatable; default: every built module's task).")
def heldout(data_dir: Path, library_dir: Path, dest: Path, tasks: tuple[str, ...]) -> None:
    """Write the held-out split of each module's task: the examples it was scored on and
    never trained on, as JSONL task files (e.g. a --tasks-dir for benchmarks/bbh_study.py).

    \b
    Example:
      loradex library heldout --data-dir ../shared/data/upstream --out heldout
    """
    from composer.library import built_spec, write_heldout

    written = write_heldout(built_spec(data_dir, library_dir), dest, tasks)
    click.echo(f"wrote {len(written)} held-out task file(s) to {dest}")


@library.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder of the upstream task files the library was built from.")
@click.option("--out", "out_dir", default="library", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Library folder.")
@click.option("--task", "tasks", multiple=True,
              help="Only these tasks (repeatable; default: every built module).")
@click.option("--overwrite", is_flag=True, help="Replace signatures modules already have.")
def sign(data_dir: Path, out_dir: Path, tasks: tuple[str, ...], overwrite: bool) -> None:
    """Give each built module its data signature (loradex_signature.safetensors): a sample of
    the training split it was built on, embedded. No retraining; no torch.

    \b
    Example:
      loradex library sign --data-dir ../shared/data/upstream --out library
    """
    from composer.library import built_spec
    from composer.signing import sign_library
    from registry.embedders import load_embedder

    signed = sign_library(built_spec(data_dir, out_dir), load_embedder(), tasks,
                          overwrite=overwrite)
    click.echo(f"signed {len(signed)} module(s) in {out_dir}")
