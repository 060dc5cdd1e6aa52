"""The console examples of docs/registry.md are run and must print exactly what the doc shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from loradex.cli import main
from tests.support.adapters import write_example_adapters

DOC = Path(__file__).resolve().parents[2] / "docs" / "registry.md"
DOC_ROOT = "/tmp/demo"  # the doc's working folder (where its adapters/ are)
DOC_HOME = f"{DOC_ROOT}/home"


def _examples() -> list[tuple[str, str]]:
    """(command, expected output) for every ``$ loradex ...`` line in the console blocks."""
    examples = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), re.S):
        for chunk in re.split(r"^(?=\$ )", block, flags=re.M):
            if chunk.startswith("$ "):
                command, _, output = chunk.partition("\n")
                examples.append((command[2:], output.strip()))
    return examples


def _any_head(text: str) -> str:
    return re.sub(r"\b\w+ \(head\)", "<revision> (head)", text)


def test_doc_examples_print_what_the_doc_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LORADEX_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    write_example_adapters(tmp_path / "adapters")
    examples = _examples()
    assert len(examples) >= 10
    for command, expected in examples:
        argv = shlex.split(command)
        assert argv[0] == "loradex"
        with pytest.raises(SystemExit):
            main(argv[1:])
        out, err = capsys.readouterr()
        printed = (out + err).replace(str(home), DOC_HOME).replace(str(tmp_path), DOC_ROOT)
        printed = printed.strip()
        # Other features add migrations; which revision is head is not this doc's point.
        assert _any_head(printed) == _any_head(expected), f"`{command}` printed:\n{printed}"
