"""Every Hub command has a --help with an example, and none of them imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    ["serve"],
    ["token"],
    ["token", "create"],
    ["token", "list"],
    ["token", "revoke"],
    ["sync"],
    ["pull"],
    ["publish"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_works_without_torch(command: list[str]) -> None:
    code = (
        "import sys\nfrom loradex.cli import main\n"
        f"try:\n    main({[*command, '--help']!r})\nexcept SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: loradex" in result.stdout
    assert "Example" in result.stdout


def test_sync_itself_does_not_import_torch(tmp_path) -> None:
    """A failing sync (nothing listens) goes through the whole command path without torch."""
    code = (
        "import sys\nfrom loradex.cli import main\n"
        f"try:\n    main(['--db', 'sqlite:///{tmp_path}/r.db', 'sync', '--endpoint', "
        "'http://127.0.0.1:9', '--quiet'])\nexcept SystemExit as exc:\n    assert exc.code == 7\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_serve_on_a_taken_port_is_one_clear_line(tmp_path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "loradex",
                "--db",
                f"sqlite:///{tmp_path}/r.db",
                "serve",
                "--port",
                str(port),
                "--data",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 11
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
