"""``loradex demo``: the whole loop on embedded defaults, as one command."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--workdir", default="demo-out", show_default=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the server data, the registry, the composed adapter (wiped first).")
@click.option("--library", "library_dir", default="library", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Starter library folder.")
@click.option("--few-shot", default="examples/boolean_expressions/few_shot.jsonl",
              show_default=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Few-shot examples of the new task.")
@click.option("--test", "test_file", default="examples/boolean_expressions/test.jsonl",
              show_default=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Held-out examples of the new task.")
@click.option("--task-name", default="boolean_expressions", show_default=True,
              help="Name of the new task (names the composed repo).")
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Candidates chosen from the registry (by task fit, then a screen).")
@click.option("--budget", type=click.IntRange(min=1), default=40, show_default=True,
              help="CMA-ES loss evaluations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed.")
@click.option("--base-model", default=None, help="Base model (default: embedded SmolLM2).")
@click.option("--test-limit", type=click.IntRange(min=1), default=None,
              help="Evaluate at most N held-out examples.")
@click.option("--max-modules", type=click.IntRange(min=1), default=None,
              help="Publish at most N library modules.")
@click.option("--no-wait", is_flag=True,
              help="Stop the server at the end instead of keeping it up for the composed "
                   "module's web page until Enter (it never waits without a terminal).")
def demo(workdir: Path, library_dir: Path, few_shot: Path, test_file: Path, task_name: str,
         k: int, budget: int, seed: int, base_model: str | None, test_limit: int | None,
         max_modules: int | None, no_wait: bool) -> None:
    """Run the main job end to end on embedded defaults.

    Starts a local Hub server, publishes the starter library to it, syncs it into a fresh
    registry, searches it, composes a module for an unseen BIG-Bench Hard task from 5
    examples (CMA-ES over 20 candidates), evaluates zero-shot vs composed, and publishes
    the result with its provenance. Prints the composed module's web page and keeps the
    server up until Enter (not with --no-wait, nor when standard input is not a terminal).

    \b
    Example:
      loradex demo --workdir demo-out
    """
    from loradex.cli.demo import DemoConfig, run_demo

    run_demo(DemoConfig(
        workdir=workdir, library=library_dir, few_shot=few_shot, test=test_file,
        task_name=task_name, k=k, budget=budget, seed=seed, base_model=base_model,
        test_limit=test_limit, max_modules=max_modules, wait=not no_wait,
    ), echo=click.echo)
