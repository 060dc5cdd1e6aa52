"""``loradex demo`` keeps its server up for the composed module's page only when someone can
press Enter: standard input a terminal, and no ``--no-wait``."""

from __future__ import annotations

import io
import sys

import pytest
from click.testing import CliRunner

from loradex.cli.demo import DemoConfig, DemoRun


class Terminal(io.StringIO):
    """A standard input that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run(tmp_path, monkeypatch, stdin, *, wait: bool = True) -> tuple[list[str], str]:
    lines: list[str] = []
    monkeypatch.setattr(sys, "stdin", stdin)
    DemoRun(DemoConfig(workdir=tmp_path, wait=wait), echo=lines.append).wait_for_user()
    return lines, stdin.read()


def test_waits_for_enter_at_a_terminal(tmp_path, monkeypatch):
    lines, left = run(tmp_path, monkeypatch, Terminal("\nlater\n"))
    assert lines == ["   the server stays up for the page: press Enter to stop it"]
    assert left == "later\n"  # exactly one line (the Enter) was read


@pytest.mark.parametrize("stdin, wait", [
    (io.StringIO("\n"), True),  # a pipe or a file: nobody to press Enter
    (Terminal("\n"), False),  # --no-wait
])
def test_does_not_wait_without_a_terminal_or_with_no_wait(tmp_path, monkeypatch, stdin, wait):
    lines, left = run(tmp_path, monkeypatch, stdin, wait=wait)
    assert lines == [] and left == "\n"


def test_end_of_input_stops_the_wait(tmp_path, monkeypatch):
    lines, _ = run(tmp_path, monkeypatch, Terminal(""))
    assert len(lines) == 1


def test_demo_help_offers_no_wait():
    from loradex.cli.commands.demo import demo

    result = CliRunner().invoke(demo, ["--help"])
    assert result.exit_code == 0 and "--no-wait" in result.output
