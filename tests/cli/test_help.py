"""Every command's ``--help`` works and shows an example (STYLE.md, habit 10)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from loradex.cli import COMMANDS, cli


def _load(name: str) -> click.Command:
    """The command object; a missing module or attribute is an error, never a skip."""
    module_name, attr = COMMANDS[name].split(":")
    command = getattr(importlib.import_module(module_name), attr)
    assert isinstance(command, click.Command), COMMANDS[name]
    return command


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
    _load(path[0])
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


def test_every_command_is_listed_and_loads() -> None:
    """A command whose module is gone fails here instead of silently leaving the list."""
    result = CliRunner().invoke(cli, ["--help"], prog_name="loradex", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in COMMANDS:
        assert f"  {name} " in result.output
        _load(name)


def test_a_missing_command_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(COMMANDS, "ghost", "loradex.cli.commands.no_such_module:ghost")
    with pytest.raises(ModuleNotFoundError):
        cli.get_command(click.Context(cli), "ghost")
