"""Every command's ``--help`` works and shows an example (STYLE.md, habit 10)."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from loradex.cli import COMMANDS, cli


def _load(name: str) -> click.Command | None:
    """The command object, or None while its module or attribute is not written yet."""
    module_name, attr = COMMANDS[name].split(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    return getattr(importlib.import_module(module_name), attr, None)


def _command_paths() -> list[tuple[str, ...]]:
    """Each top-level command, and each subcommand of a group, as an argv prefix."""
    paths: list[tuple[str, ...]] = []
    for name in sorted(COMMANDS):
        paths.append((name,))
        try:
            command = _load(name)
        except Exception:  # reported by test_help itself, not at collection
            continue
        if isinstance(command, click.Group):
            paths += [(name, sub) for sub in sorted(command.commands)]
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_help(path: tuple[str, ...]) -> None:
    if _load(path[0]) is None:
        pytest.skip(f"{COMMANDS[path[0]]} is not written yet")
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="loradex",
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"Usage: loradex {' '.join(path)}" in result.output
    assert "Example" in result.output, f"`loradex {' '.join(path)} --help` shows no example"


def test_top_level_help_in_a_subprocess() -> None:
    proc = subprocess.run([sys.executable, "-m", "loradex", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: loradex" in proc.stdout
    for name in ("add", "search", "show", "db"):
        assert f"  {name} " in proc.stdout
