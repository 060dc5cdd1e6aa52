"""A private PostgreSQL 15 cluster for the fault tests: its own data folder, port and socket.

The shared server on 127.0.0.1:5432 serves other tests at the same time, so a test that stops
and restarts PostgreSQL does it to a cluster of its own: ``initdb`` in a temporary folder owned
by the ``postgres`` user (the binaries refuse to run as root), ``pg_ctl start`` on a free
loopback port, and everything removed at the end, even when the test fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from registry.server.launch import LOOPBACK, free_port

PG_BIN = Path(os.environ.get("LORADEX_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
_TIMEOUT = 60  # seconds any pg_ctl call may take


def missing_reason() -> str | None:
    """Why a private cluster cannot be made here (None: it can)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"no PostgreSQL binaries in {PG_BIN} ({tool} missing)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} OS user to run PostgreSQL as"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != PG_USER:
        return "must run as root or as the postgres user to start a private cluster"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "no runuser command to run PostgreSQL as the postgres user"
    return None


@dataclass
class PgCluster:
    """A running private cluster; ``url`` is its SQLAlchemy URL (trust auth, loopback)."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@{LOOPBACK}:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl -D DATA ARGS`` as the postgres user (waits for it to finish)."""
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w",
                      "-t", str(_TIMEOUT), *args])

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={LOOPBACK} "
                   "-c fsync=off -c max_connections=60 -c shared_buffers=16MB")
        self.pg_ctl("-o", options, "-l", str(self.root / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def _as_postgres(command: list[str]) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", PG_USER, "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=_TIMEOUT + 30)


@contextmanager
def private_cluster() -> Iterator[PgCluster]:
    """``initdb`` + ``start`` a cluster in a fresh folder; stop it and delete the folder after."""
    root = Path(tempfile.mkdtemp(prefix="loradex-pg-"))
    entry = pwd.getpwnam(PG_USER)
    os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(root, free_port())
    try:
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", PG_USER,
                      "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        cluster.start()
        yield cluster
    finally:
        try:
            if (cluster.data / "postmaster.pid").exists():
                cluster.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
