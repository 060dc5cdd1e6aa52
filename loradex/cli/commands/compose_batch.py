"""``loradex compose-batch``: compose a module for every task of a plan file, in this process
or on a Ray cluster, and index (or publish) each result as it is written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from loradex.cli.ray_options import ray_options, ray_runner, worker_resources
from loradex.settings import Settings

if TYPE_CHECKING:
    from composer.scaleout.compose_jobs import AfterWrite


@click.command("compose-batch")
@click.argument("plan", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--no-index", is_flag=True, help="Do not index the results in the registry.")
@click.option("--publish", "namespace", default=None, metavar="NAMESPACE",
              help="Also publish each result to the Hub as NAMESPACE/<task name>.")
@ray_options
@click.pass_obj
def compose_batch(settings: Settings, plan: Path, no_index: bool, namespace: str | None,
                  ray_address: str | None, workers: int | None, cpus_per_worker: float,
                  gpus_per_worker: float) -> None:
    """Compose a module for each task of PLAN (YAML: each task's few-shot examples, its
    candidates or a registry query, and settings; see docs/scale-out.md). Tasks whose output
    folder holds a module are skipped, so a stopped batch resumes; a task that fails is
    reported and the others go on. With --ray, each task is a unit on a Ray worker that holds
    the base model; this process writes, indexes and publishes the results.

    \b
    Example:
      loradex compose-batch plan.yaml
      loradex compose-batch plan.yaml --ray head:6379 --publish my-team
    """
    from composer.scaleout.batch_plan import load_plan
    from composer.scaleout.compose_jobs import ComposeBatchJob
    from composer.scaleout.units import LocalRunner, Runner, run_units

    batch = load_plan(plan, index=not no_index)
    after_write = _publisher(settings, namespace, [t.name for t in batch.tasks]) \
        if namespace else None
    job = ComposeBatchJob(batch, settings, after_write=after_write,
                          resources=worker_resources(cpus_per_worker, gpus_per_worker))
    runner: Runner = ray_runner(ray_address, workers) if ray_address else LocalRunner()
    summary = run_units(job, runner)
    summary.check()


def _publisher(settings: Settings, namespace: str, names: list[str]) -> AfterWrite:
    """Publish each written module as NAMESPACE/NAME (every id checked before any work)."""
    from registry.repo_ids import check_repo_id

    for name in names:
        check_repo_id(f"{namespace}/{name}")

    def publish(name: str, folder: Path) -> str:
        from hub_client.client import HubClient
        from hub_client.publish import publish_folder
        from loradex.cli.embedding import optional_embedder
        from registry.store import RegistryStore

        store = RegistryStore.from_url(settings.db_url)
        try:
            published = publish_folder(
                HubClient(settings.endpoint, settings.token), store, folder,
                f"{namespace}/{name}",
                embedder=optional_embedder("indexed without a card signature"))
        finally:
            store.engine.dispose()
        return f"published {published.repo_id}"

    return publish
