"""``loradex train --method hydra``, ``compose --output hydra``, ``add``/``search`` of Hydra."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.adapters import write_hydra_module
from tests.support.cli import run
from tests.support.tiny_models import FEW_SHOT, save_lora, save_tiny_causal, write_jsonl

COUNT = [{"input": f"count {i}", "target": ["one", "two", "three"][i % 3]} for i in range(8)]
COLOURS = [{"input": f"colour of thing {i}", "target": ["red", "blue"][i % 2]} for i in range(8)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hydra-cli")
    base = save_tiny_causal(root / "base")
    return {
        "base": base,
        **{f"m{i}": save_lora(base, root / f"m{i}", seed=i) for i in range(3)},
        "few": write_jsonl(root / "few.jsonl", FEW_SHOT),
        "count": write_jsonl(root / "count.jsonl", COUNT),
        "colours": write_jsonl(root / "colours.jsonl", COLOURS),
    }


def test_train_hydra_on_two_files_reports_usage_and_indexes(tiny, tmp_path, capsys, loradex_home):
    db = ["--db", f"sqlite:///{tmp_path / 'r.db'}"]
    out = tmp_path / "hydra"
    code, stdout, err = run([*db, "train", "--method", "hydra", str(tiny["count"]),
                             str(tiny["colours"]), "--heads", "2", "--out", str(out),
                             "--base-model", str(tiny["base"]), "--rank", "4", "--steps", "3",
                             "--batch-size", "4", "--eval-file", str(tiny["few"]), "--json"],
                            capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["num_heads"] == 2 and summary["steps"] == 3
    assert len(summary["head_usage"]) == 2 and sum(summary["head_usage"]) == pytest.approx(1.0)
    assert summary["heldout_loss_after"] is not None
    assert summary["registry_id"] == "local/hydra"
    assert {p.name for p in out.iterdir()} >= {"hydra_config.json", "hydra_model.safetensors"}

    code, stdout, err = run([*db, "search", "--kind", "hydra"], capsys)
    assert code == 0, err
    assert "local/hydra" in stdout and "4x2" in stdout
    code, stdout, err = run([*db, "search", "--kind", "lora"], capsys)
    assert code == 0 and "local/hydra" not in stdout


def test_train_refuses_bad_hydra_options(tiny, tmp_path, capsys, loradex_home):
    base = ["train", str(tiny["count"]), "--out", str(tmp_path / "x"), "--base-model",
            str(tiny["base"])]
    code, _, err = run([*base, "--method", "hydra", "--heads", "zero"], capsys)
    assert code != 0 and "--heads must be 'auto' or a positive integer" in err
    code, _, err = run([*base, str(tiny["colours"])], capsys)
    assert code != 0 and "--method lora trains on one DATA file" in err
    assert not (tmp_path / "x").exists()


def test_compose_output_hydra(tiny, tmp_path, capsys, loradex_home):
    db = ["--db", f"sqlite:///{tmp_path / 'r.db'}"]
    out = tmp_path / "composed-hydra"
    code, stdout, err = run([*db, "compose", "--examples", str(tiny["few"]), "--base-model",
                             str(tiny["base"]), "--budget", "4", "--seed", "1", "--output",
                             "hydra", "--hydra-heads", "2", "--router-steps", "3", "--holdout",
                             str(tiny["few"]), "--out", str(out), str(tiny["m0"]),
                             str(tiny["m1"]), str(tiny["m2"]), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    hydra = summary["hydra"]
    assert hydra["num_heads"] == 2 and hydra["router_steps"] == 3
    assert hydra["fewshot_loss_after"] is not None and hydra["heldout_loss_after"] is not None
    assert summary["registry_id"] == "local/composed-hydra"
    config = json.loads((out / "hydra_config.json").read_text())
    assert config["num_heads"] == 2

    code, _, err = run([*db, "compose", "--examples", str(tiny["few"]), "--base-model",
                        str(tiny["base"]), "--output", "hydra", "--hydra-heads", "5",
                        "--out", str(tmp_path / "no"), str(tiny["m0"]), str(tiny["m1"])],
                       capsys)
    assert code != 0 and "--hydra-heads must be between 1 and the number of candidates" in err
    assert not (tmp_path / "no").exists()


def test_add_indexes_a_hydra_folder(tmp_path, capsys, loradex_home):
    folder = write_hydra_module(tmp_path / "h", num_heads=3, rank=4)
    code, stdout, err = run(["--db", f"sqlite:///{tmp_path / 'r.db'}", "add", str(folder)],
                            capsys)
    assert code == 0, err
    assert stdout.startswith("added local/h: Hydra r=4, 3 heads on ")
