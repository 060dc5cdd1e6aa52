"""Modules added from a folder are usable by id, and compose draws only what it can use
(issue 23, parts 6 and 7), end to end through the CLI on a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.cli import run
from tests.support.tiny_models import FEW_SHOT, save_lora, save_tiny_causal, write_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("local")
    base = save_tiny_causal(root / "base")
    mods = {f"m{i}": save_lora(base, root / "shelf" / f"m{i}", seed=i) for i in range(3)}
    dora = save_lora(base, root / "shelf" / "dora", seed=7)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    return {"root": root, "base": base, **mods, "dora": dora,
            "few": write_jsonl(root / "few.jsonl", FEW_SHOT)}


def _compose(db: str, tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--db", db, "compose", "--examples", str(tiny["few"]), "--base-model",
            str(tiny["base"]), "--budget", "6", "--seed", "1", "--out", str(out), "--json",
            *extra]


def test_local_ids_compose_twice_in_a_row_without_modules_dir(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], loradex_home: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    for name in ("m0", "m1", "m2", "dora"):
        assert run(["--db", db, "add", str(tiny[name])], capsys)[0] == 0
    code, out, _ = run(["--db", db, "show", "--json", "local/dora"], capsys)
    shown = json.loads(out)
    assert shown["peft"]["use_dora"] is True and shown["local_path"] == str(tiny["dora"])
    code, out, _ = run(["--db", db, "search", "--compatible-with", "local/m0", "--json"], capsys)
    assert {r["repo_id"] for r in json.loads(out)["results"]} == {"local/m1", "local/m2"}

    # By id, from any working directory, with no --modules-dir.
    code, out, err = run(_compose(db, tiny, tmp_path / "first", "--candidates",
                                  "local/m0,local/m1"), capsys)
    assert code == 0, err
    assert list(json.loads(out)["weights"]) == ["local/m0", "local/m1"]
    code, out, err = run(["--db", db, "eval", str(tiny["few"]), "--adapter", "local/m2",
                          "--base-model", str(tiny["base"]), "--limit", "2"], capsys)
    assert code == 0, err

    # From the registry, twice in a row: the first result is indexed as local/first; it is
    # left out of the draw by default (its parents are there), and DoRA is never drawn.
    for out_name in ("second", "third"):
        code, out, err = run(_compose(db, tiny, tmp_path / out_name, "--from-registry",
                                      "--select", "random", "--k", "10"), capsys)
        assert code == 0, err
        assert sorted(json.loads(out)["weights"]) == ["local/m0", "local/m1", "local/m2"]
    code, out, err = run(_compose(db, tiny, tmp_path / "fourth", "--from-registry", "--select",
                                  "random", "--k", "10", "--include-composed"), capsys)
    assert code == 0, err
    assert {"local/first", "local/second", "local/third"} <= set(json.loads(out)["weights"])


def test_a_moved_or_changed_folder_is_one_line_naming_it(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], loradex_home: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    moved = shutil.copytree(tiny["m0"], tmp_path / "m0")
    changed = shutil.copytree(tiny["m1"], tmp_path / "m1")
    for folder in (moved, changed):
        assert run(["--db", db, "add", str(folder)], capsys)[0] == 0
    shutil.move(moved, tmp_path / "elsewhere")
    weights = changed / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    cases = [("local/m0", 3, f"its folder {moved} is gone"),
             ("local/m1", 5, f"{weights} changed since it was indexed")]
    for ref, exit_code, message in cases:
        code, _out, err = run(_compose(db, tiny, tmp_path / "o", "--candidates",
                                       f"{ref},{tiny['m2']}"), capsys)
        assert (code, err.count("\n")) == (exit_code, 1) and message in err, err


def test_a_dora_folder_is_refused_by_compose_in_one_line(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], loradex_home: Path
) -> None:
    code, _out, err = run(_compose(f"sqlite:///{tmp_path / 'r.db'}", tiny, tmp_path / "o",
                                   str(tiny["m0"]), str(tiny["dora"])), capsys)
    assert code == 4 and err.count("\n") == 1
    assert "a DoRA adapter (use_dora) cannot be composed as LoRA" in err
