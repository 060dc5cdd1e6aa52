"""The ``--ray`` options of the commands that run independent units (library build and
evaluate, compose-batch): where the units run and what each worker asks of the cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from composer.scaleout.units import Resources, Runner

F = TypeVar("F", bound=Callable[..., Any])


def ray_options(command: F) -> F:
    """Add ``--ray [ADDRESS]``, ``--workers``, ``--cpus-per-worker``, ``--gpus-per-worker``."""
    options = [
        click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None,
                     metavar="[ADDRESS]",
                     help="Run the units on a Ray cluster: ADDRESS (host:port), or alone for "
                          "RAY_ADDRESS or a Ray started on this machine (pip install "
                          "'loradex[ray]'). Default: in this process."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="With --ray: at most this many workers (default: as many as fit)."),
        click.option("--cpus-per-worker", type=click.FloatRange(min=0.0), default=1.0,
                     show_default=True, help="With --ray: CPU cores each worker asks for."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0.0), default=0.0,
                     show_default=True,
                     help="With --ray: GPUs each worker asks for (0.5: two share one)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def ray_runner(ray_address: str, workers: int | None) -> Runner:
    """The Ray runner for ``--ray``."""
    from composer.scaleout.units import make_runner

    return make_runner(ray_address, max_workers=workers)


def worker_resources(cpus: float, gpus: float) -> Resources:
    """What each worker asks of the cluster."""
    from composer.scaleout.units import Resources

    return Resources(cpus=cpus, gpus=gpus)
