"""A real two-node Ray cluster on this machine for tests, all on loopback.

Ray turns 127.0.0.1 into the machine's network address, so the head is 127.0.0.2 and the
second node 127.0.0.3; each node has one CPU, a small object store and its processes in a
session of their own, so one node can be killed alone and :meth:`LocalRayCluster.stop` kills
exactly what the test started (never ``ray stop``, which would end every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HEAD_IP = "127.0.0.2"
NODE_IP = "127.0.0.3"
RAY = Path(sys.executable).parent / "ray"


def free_port(host: str = HEAD_IP) -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalRayCluster:
    """A head and a second node, started with ``ray start``; stopped by killing their process
    groups (and anything left that names the cluster's temp dir)."""

    def __init__(self, temp_dir: Path, *, object_store_mb: int = 80) -> None:
        self.temp_dir = temp_dir
        self.object_store_mb = object_store_mb
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.groups: dict[str, int] = {}  # node ip -> process group of its processes

    def _start(self, ip: str, *args: str) -> None:
        cmd = [str(RAY), "start", "--node-ip-address", ip, "--num-cpus", "1",
               "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
               "--disable-usage-stats", "--temp-dir", str(self.temp_dir), *args]
        # This cluster's own head, whatever RAY_ADDRESS the environment names.
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen(cmd, start_new_session=True, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.groups[ip] = proc.pid  # the session leader's pid is the group id
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {ip} failed:\n{out[-3000:]}")

    def start(self) -> LocalRayCluster:
        """Start the head and the second node; return when both are up."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._start(HEAD_IP, "--head", "--port", str(self.port), "--include-dashboard", "false",
                    "--dashboard-port", str(free_port()))
        self.add_node()
        return self

    def add_node(self) -> None:
        """(Re)start the second node."""
        self._start(NODE_IP, "--address", self.address)
        self.wait_for_nodes(2)

    def alive_nodes(self) -> int:
        """Nodes the cluster counts alive (``ray list nodes`` would start a client; the GCS
        answers this through ``ray status``)."""
        out = subprocess.run([str(RAY), "status", "--address", self.address],
                             capture_output=True, text=True, timeout=60).stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` nodes are alive."""
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {n} node(s)")
            time.sleep(1.0)

    def kill_node(self, ip: str = NODE_IP) -> None:
        """Kill every process of one node at once (its workers with it), like a machine lost."""
        _kill(_descendants(self.groups.pop(ip)), signal.SIGKILL)

    def stop(self) -> None:
        """Kill every process this cluster started, then anything left that names its temp dir."""
        pids = [pid for group in self.groups.values() for pid in _descendants(group)]
        _kill(pids, signal.SIGTERM)
        time.sleep(1.0)
        _kill(pids, signal.SIGKILL)
        self.groups.clear()
        marker = str(self.temp_dir).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in (os.getpid(), os.getppid()):
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            table[int(name)] = (int(fields[1]), int(fields[2]))
    return table


def _descendants(group: int) -> list[int]:
    """The processes of a process group and all their descendants (Ray workers start their own
    sessions, children of the raylet)."""
    table = _processes()
    found = {pid for pid, (_, pgrp) in table.items() if pgrp == group}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
