"""Units on a Ray cluster: one actor per worker holds the base model; the driver hands each
idle actor the next unit and records results as they come back.

Faults: an actor lost mid-unit (its process or node killed) gives its unit back to the queue,
run again on another actor (a replacement is started, placed wherever Ray finds the
resources); an outcome for a unit already recorded is dropped, so every unit is recorded once.
A unit whose worker is lost ``max_attempts`` times is reported failed. ``ray`` is imported
here only, inside the functions, so nothing else of loradex needs it.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from composer.scaleout.summary import RunSummary
from composer.scaleout.units import (
    Handle,
    Job,
    Unit,
    UnitOutcome,
    WorkerSpec,
    one_line,
    ready_to_run,
    run_one,
)
from loradex.errors import ConfigError, LoradexError


def import_ray() -> Any:
    """The ``ray`` module, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'loradex[ray]'") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> str:
    """The host of a ``HOST:PORT`` (or ``ray://HOST:PORT``) address that answers; a clear
    error at once when nothing listens there (Ray itself would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: not an address of the form HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc})") from None
    return host


class UnitHost:
    """The actor: builds its worker once (the base model loaded here), then runs units."""

    def __init__(self, spec: WorkerSpec) -> None:
        import ray

        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id()
        self.error: str | None = None  # every worker is built alike: the driver stops the run
        started = time.perf_counter()
        try:
            self.worker = spec.build()
        except Exception as exc:
            self.error = one_line(exc)
        self.load_seconds = time.perf_counter() - started

    def ready(self) -> tuple[float, str, str | None]:
        """How long the worker took to build, the node it is on, and why it could not be
        built (None when it was)."""
        return self.load_seconds, self.node, self.error

    def run(self, unit: Unit) -> UnitOutcome:
        """One unit's outcome (its own failure included)."""
        return run_one(self.worker, unit, self.where)


class RayRunner:
    """Runs units on the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else a Ray started
    on this machine), one actor per worker, as many workers as the cluster has room for."""

    def __init__(self, address: str | None = None, *, max_workers: int | None = None,
                 max_attempts: int = 3, python_path: Sequence[str] = (),
                 start_timeout: float = 600.0) -> None:
        self.address = address
        self.max_workers = max_workers
        self.max_attempts = max_attempts
        self.python_path = list(python_path)  # folders workers import from (not installed)
        self.start_timeout = start_timeout  # seconds with no actor up before giving up
        self.actors: list[Any] = []
        self.n_workers = 0
        self._started_ray = False

    def start(self, job: Job, n_units: int) -> str:
        """Connect, and size the pool from the cluster's CPUs and GPUs."""
        ray = import_ray()
        if not ray.is_initialized():
            env = {"PYTHONPATH": os.pathsep.join(self.python_path)} if self.python_path else {}
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING",
                                      "runtime_env": {"env_vars": env} if env else None}
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address and address != "auto":
                host = check_reachable(address)
                if host.startswith("127."):  # keep the driver on loopback with the cluster
                    kwargs["_node_ip_address"] = host
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--ray {address or '(local)'}: cannot reach the Ray cluster "
                                  f"({' '.join(str(exc).split())[:200]})") from None
            self._started_ray = True
        total = ray.cluster_resources()
        res = job.resources
        room = int(total.get("CPU", 0) // res.cpus) if res.cpus else n_units
        if res.gpus:
            room = min(room, int(total.get("GPU", 0) // res.gpus))
        if room < 1:
            raise ConfigError(f"the Ray cluster has no room for one worker of {res.cpus} CPU and "
                              f"{res.gpus} GPU (it has {total.get('CPU', 0)} CPU, "
                              f"{total.get('GPU', 0)} GPU)")
        self.n_workers = min(room, n_units, self.max_workers or room)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return (f"ray, {nodes} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU, "
                f"{self.n_workers} worker(s)")

    def _new_actor(self, spec_ref: Any, job: Job) -> tuple[Any, Any]:
        ray = import_ray()
        host = ray.remote(UnitHost).options(
            num_cpus=job.resources.cpus, num_gpus=job.resources.gpus, max_restarts=0)
        actor = host.remote(spec_ref)
        self.actors.append(actor)
        return actor, actor.ready.remote()

    def run(self, job: Job, units: Sequence[Unit], handle: Handle, summary: RunSummary) -> None:
        """Hand units to idle actors until every unit has an outcome."""
        ray = import_ray()
        from ray.exceptions import GetTimeoutError, RayActorError

        spec_ref = ray.put(job.worker_spec())  # in the object store once, read by every actor
        queue: deque[Unit] = deque(units)
        attempts: dict[str, int] = {}
        starting: dict[Any, Any] = {}  # ready() ref -> actor
        busy: dict[Any, tuple[Any, Unit, float]] = {}  # run() ref -> actor, unit, submitted
        idle: list[Any] = []
        nodes: set[str] = set()
        stalled: float | None = None  # since when no actor is up (all starting or lost)
        for _ in range(self.n_workers):
            actor, ref = self._new_actor(spec_ref, job)
            starting[ref] = actor
        summary.workers = self.n_workers

        def lost(unit: Unit | None) -> None:
            summary.lost_workers += 1
            if unit is not None:
                attempts[unit.key] = attempts.get(unit.key, 0) + 1
                if attempts[unit.key] >= self.max_attempts:
                    handle(UnitOutcome(unit.key, error=f"its worker was lost {attempts[unit.key]}"
                                       " times"), 0.0)
                else:
                    summary.retried += 1
                    queue.appendleft(unit)
            if queue:  # a replacement, placed wherever the cluster has room
                actor, ref = self._new_actor(spec_ref, job)
                starting[ref] = actor

        while queue or busy:
            while idle and queue:
                actor, unit = idle.pop(), queue.popleft()
                ref = actor.run.remote(ready_to_run(unit))  # a lazy payload is read just now
                busy[ref] = (actor, unit, time.perf_counter())
            waiting = list(busy) + list(starting)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=5.0)
            for ref in ready:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        load, node, error = ray.get(ref)
                    except RayActorError:
                        lost(None)
                        continue
                    if error is not None:
                        raise LoradexError(f"a Ray worker could not start on {self.where_is(node)}:"
                                           f" {error}")
                    summary.load_seconds.append(load)
                    nodes.add(node)
                    summary.nodes = len(nodes)
                    idle.append(actor)
                    continue
                actor, unit, submitted = busy.pop(ref)
                try:
                    outcome = ray.get(ref, timeout=60)
                except (RayActorError, GetTimeoutError):
                    ray.kill(actor, no_restart=True)
                    lost(unit)
                    continue
                handle(outcome, time.perf_counter() - submitted)
                idle.append(actor)
            if busy or idle or not starting:
                stalled = None
            elif stalled is None:
                stalled = time.perf_counter()
            elif time.perf_counter() - stalled > self.start_timeout:
                raise ConfigError(f"no Ray worker could be started in {self.start_timeout:.0f} s "
                                  f"({len(queue)} unit(s) left; run again to resume)")

    @staticmethod
    def where_is(node_id: str) -> str:
        """A node's address, for messages."""
        ray = import_ray()
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                return str(node.get("NodeManagerAddress", node_id))
        return node_id

    def close(self) -> None:
        """Kill this run's actors (their models go with them); leave the cluster running."""
        if not self.actors and not self._started_ray:
            return
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
