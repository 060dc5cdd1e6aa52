"""Start ``loradex serve`` in a subprocess on a loopback port and wait until it answers.

The demo, the Hub tests and the benchmarks each need a real server in a process of its own;
this is the one place that knows its command line, how to tell it is ready and how to stop
it. The server is started by command line (``python -m loradex serve``), so the registry
layer runs the CLI without importing it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from loradex.errors import HubUnavailable

LOOPBACK = "127.0.0.1"
# What "it answers" means: the model listing, the first request every client makes.
READY_PATH = "/api/models?limit=1"
_LOG_TAIL_LINES = 15
# Loopback never goes through a proxy, whatever HTTP_PROXY says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the operating system picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_args(
    db_url: str,
    data_dir: str | os.PathLike[str],
    *,
    port: int,
    host: str = LOOPBACK,
    workers: int | None = None,
    max_upload_size: int | str | None = None,
    log_level: str | None = None,
    rate_limit: str | None = None,
) -> list[str]:
    """The ``loradex`` arguments that serve ``db_url``; ``None`` keeps the command's default.

    ``--host`` is written only when it is not the loopback, ``loradex serve``'s own default,
    so that the command shown to a user (the demo prints it) stays the short one.
    """
    args = ["--db", db_url, "serve"]
    if host != LOOPBACK:
        args += ["--host", host]
    args += ["--port", str(port), "--data", str(data_dir)]
    if workers is not None:
        args += ["--workers", str(workers)]
    if max_upload_size is not None:
        args += ["--max-upload-size", str(max_upload_size)]
    if log_level is not None:
        args += ["--log-level", log_level]
    if rate_limit is not None:
        args += ["--rate-limit", rate_limit]
    return args


@dataclass
class LaunchedServer:
    """A running ``loradex serve`` subprocess; ``stop()`` (or leaving a ``with``) ends it."""

    url: str
    args: list[str]  # the loradex arguments it runs with, for showing the command
    process: subprocess.Popen[bytes]
    log_path: Path | None  # its stdout and stderr; None: discarded

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it has already exited."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    db_url: str,
    data_dir: str | os.PathLike[str],
    *,
    port: int | None = None,
    host: str = LOOPBACK,
    workers: int | None = None,
    max_upload_size: int | str | None = None,
    log_level: str | None = None,
    rate_limit: str | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> LaunchedServer:
    """Start ``loradex serve`` (on a free port unless ``port`` is given) and wait until it answers.

    Raises :class:`HubUnavailable`, quoting the end of its log, when the server exits or does
    not answer within ``timeout`` seconds; the process is killed first.
    """
    port = free_port(host) if port is None else port
    args = serve_args(db_url, data_dir, port=port, host=host, workers=workers,
                      max_upload_size=max_upload_size, log_level=log_level,
                      rate_limit=rate_limit)
    command = [sys.executable, "-m", "loradex", *args]
    log = Path(log_path) if log_path is not None else None
    child_env = dict(env) if env is not None else None
    if log is None:
        process = subprocess.Popen(command, env=child_env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    else:
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, env=child_env, stdout=out,
                                       stderr=subprocess.STDOUT)
    server = LaunchedServer(f"http://{host}:{port}", args, process, log)
    try:
        _wait_until_ready(server, timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return server


def _wait_until_ready(server: LaunchedServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = server.process.poll()
        if code is not None:
            raise HubUnavailable(
                f"loradex serve exited with code {code} before answering at {server.url}"
                + _log_tail(server.log_path)
            )
        if _answers(server.url + READY_PATH):
            return
        if time.monotonic() > deadline:
            raise HubUnavailable(
                f"loradex serve did not answer at {server.url} in {timeout:g} s"
                + _log_tail(server.log_path)
            )
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):  # refused, reset, timed out, or an error status
        return False


def _log_tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.is_file():
        return ""
    tail = log_path.read_text(errors="replace").rstrip().splitlines()[-_LOG_TAIL_LINES:]
    return f"; its log ({log_path}) ends:\n" + "\n".join(tail) if tail else f"; see {log_path}"
