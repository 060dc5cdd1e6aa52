"""The main job end to end: library build, server, publish, sync, search, compose, eval, publish.

The fast test runs it on a tiny random model with a two-module library built in the test; the
slow one runs the real demo path (embedded SmolLM2, the shipped library) on a small budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from loradex.cli import cli
from loradex.cli.demo import DemoConfig, format_scores, repo_name_for, run_demo
from loradex.errors import ConfigError
from tests.support.tiny_models import save_tiny_causal

REPO = Path(__file__).parents[2]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_world(tmp_path: Path) -> dict[str, Path]:
    """A tiny base model, two upstream tasks, and a new yes/no task split few-shot/test."""
    model = save_tiny_causal(tmp_path / "tiny-model", chat_template=None)
    upstream = tmp_path / "upstream"
    _write(upstream / "past_tense.jsonl",
           [{"input": f"past tense of walk {i}", "target": "walked"} for i in range(12)])
    _write(upstream / "yes_no.jsonl",
           [{"input": f"is the sky blue {i}", "target": "yes", "choices": ["yes", "no"]}
            for i in range(12)])
    task = [{"input": f"the cat sat on the mat {i}?", "target": "yes" if i % 2 else "no",
             "choices": ["yes", "no"]} for i in range(14)]
    return {
        "model": model,
        "upstream": upstream,
        "few_shot": _write(tmp_path / "new" / "few.jsonl", task[:5]),
        "test": _write(tmp_path / "new" / "test.jsonl", task[5:]),
    }


def test_demo_pipeline_on_tiny_model(tiny_world: dict[str, Path], tmp_path: Path,
                                     loradex_home: Path) -> None:
    library = tmp_path / "library"
    runner = CliRunner()
    built = runner.invoke(cli, [
        "library", "build", "--data-dir", str(tiny_world["upstream"]), "--out", str(library),
        "--base-model", str(tiny_world["model"]), "--steps", "3", "--test-size", "2",
    ])
    assert built.exit_code == 0, built.output
    manifest = json.loads((library / "manifest.json").read_text())
    assert set(manifest["modules"]) == {"past_tense", "yes_no"}
    assert all(m["n_test"] == 2 and m["steps"] == 3 for m in manifest["modules"].values())

    # Building again skips finished modules (resumable) and changes nothing.
    before = (library / "past_tense" / "adapter_model.safetensors").read_bytes()
    again = runner.invoke(cli, ["library", "build", "--data-dir", str(tiny_world["upstream"]),
                                "--out", str(library), "--base-model", str(tiny_world["model"])])
    assert again.exit_code == 0, again.output
    assert (library / "past_tense" / "adapter_model.safetensors").read_bytes() == before

    scored = runner.invoke(cli, ["library", "evaluate", "--data-dir", str(tiny_world["upstream"]),
                                 "--out", str(library), "--base-model", str(tiny_world["model"])])
    assert scored.exit_code == 0, scored.output
    records = json.loads((library / "manifest.json").read_text())["modules"]
    assert records["yes_no"]["metric"] == "choice_accuracy"
    assert records["past_tense"]["metric"] == "exact_match"
    assert records["yes_no"]["majority_rate"] == 1.0
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records.values())
    table = (library / "README.md").read_text()
    assert "| past_tense |" in table and "| yes_no |" in table and "not scored" not in table
    # Not the starter library: the README names the base, its prompts and the licence.
    assert table.startswith("# A loradex library on ")
    assert "plain prompts (the base model has no chat template)" in table
    assert "--base-model BASE" in table
    assert f"where BASE is the path of `{tiny_world['model'].name}`" in table
    assert "released under Apache-2.0" in table
    settings = json.loads((library / "manifest.json").read_text())["settings"]
    assert settings["license"] == "apache-2.0" and settings["chat_template"] is False

    # The held-out splits the modules were scored on, never trained on, as task files.
    from composer.data import load_examples
    from composer.library import split_task

    heldout = runner.invoke(cli, ["library", "heldout", "--data-dir", str(tiny_world["upstream"]),
                                  "--library", str(library), "--out", str(tmp_path / "heldout")])
    assert heldout.exit_code == 0, heldout.output
    for task in ("past_tense", "yes_no"):
        examples = load_examples(tiny_world["upstream"] / f"{task}.jsonl")
        train, test = split_task(examples, 2, 0)
        written = load_examples(tmp_path / "heldout" / f"{task}.jsonl")
        assert written == test and len(written) == records[task]["n_test"] == 2
        assert not set(written) & set(train)
    unknown = runner.invoke(cli, ["library", "heldout", "--data-dir", str(tiny_world["upstream"]),
                                  "--library", str(library), "--out", str(tmp_path / "h2"),
                                  "--task", "nope"])
    # (the command line's entry point prints it as one "error: ..." line with exit code 3)
    assert unknown.exit_code != 0 and "no built module for nope" in str(unknown.exception)
    assert not (tmp_path / "h2").exists()

    lines: list[str] = []
    result = run_demo(DemoConfig(
        workdir=tmp_path / "demo", library=library, few_shot=tiny_world["few_shot"],
        test=tiny_world["test"], task_name="cat_question", k=2, budget=4,
        base_model=str(tiny_world["model"]),
    ), echo=lines.append)
    log = "\n".join(lines)
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5."):
        assert step in log
    assert "new 2, updated 0, unchanged 0, failed 0" in log
    assert result.zero_shot["n_examples"] == result.composed["n_examples"] == 9
    assert "choice_accuracy" in result.composed
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert result.plot is not None and result.plot.stat().st_size > 0
    assert result.composed_repo == "demo/cat-question-composed"

    # The published composed module is in the demo's registry with both parents as lineage.
    shown = runner.invoke(cli, ["--db", f"sqlite:///{tmp_path / 'demo' / 'registry.db'}",
                                "show", result.composed_repo, "--json"])
    assert shown.exit_code == 0, shown.output
    module = json.loads(shown.output)
    parents = {edge["parent_repo_id"] for edge in module["lineage"]}
    assert parents == {"demo/past-tense", "demo/yes-no"}


def test_demo_refuses_missing_library(tmp_path: Path) -> None:
    few = _write(tmp_path / "few.jsonl", [{"input": "a", "target": "b"}])
    with pytest.raises(ConfigError, match="starter library not found"):
        run_demo(DemoConfig(workdir=tmp_path / "w", library=tmp_path / "nope",
                            few_shot=few, test=few), echo=lambda _: None)


def test_repo_names_and_score_table() -> None:
    assert repo_name_for("linguistic_mappings__past_tense") == "linguistic-mappings-past-tense"
    table = format_scores({"loss": 2.0, "choice_accuracy": 0.5, "n_examples": 3, "few_shot": 0},
                          {"loss": 1.0, "choice_accuracy": 0.75, "n_examples": 3, "few_shot": 0},
                          ("No", 0.54))
    assert "choice_accuracy" in table and "0.750" in table
    assert "n_examples" not in table and "few_shot" not in table
    assert "majority label rate (always 'No'): 0.540" in table


def test_majority_label(tmp_path: Path) -> None:
    from loradex.cli.demo import majority_label

    path = _write(tmp_path / "t.jsonl", [{"input": "a", "target": t} for t in "yyn"])
    assert majority_label(path) == ("y", 2 / 3)


@pytest.mark.slow
def test_real_demo_path_small_budget(tmp_path: Path, loradex_home: Path) -> None:
    """The `make demo` path: embedded SmolLM2, the shipped library, a CI-sized budget."""
    result = run_demo(DemoConfig(
        workdir=tmp_path / "demo", library=REPO / "library",
        few_shot=REPO / "examples/boolean_expressions/few_shot.jsonl",
        test=REPO / "examples/boolean_expressions/test.jsonl",
        # The search starts from the best screened module: k + 1 evaluations come first.
        k=4, budget=6, test_limit=10, max_modules=6,
    ), echo=lambda _: None)
    assert result.zero_shot["n_examples"] == 10
    assert set(result.composed) >= {"loss", "choice_accuracy", "exact_match"}
    assert (result.adapter_dir / "README.md").read_text().count("revision") >= 1


def test_learned_verdict() -> None:
    from composer.library import learned

    assert learned({"n_test": 50, "accuracy_base": 0.2, "accuracy": 0.8}) == "yes"
    # +0.04 at n=50 is noise; the loss fell, so only the loss moved.
    assert learned({"n_test": 50, "accuracy_base": 0.50, "accuracy": 0.54,
                    "heldout_loss_base": 2.0, "heldout_loss": 1.0}) == "loss only"
    assert learned({"n_test": 50, "accuracy_base": 0.5, "accuracy": 0.5,
                    "heldout_loss_base": 1.0, "heldout_loss": 1.2}) == "no"
    # Up from the base model but only to the majority rate: the label prior, not the task
    # (the starter library's social_support: 0.10 -> 0.78 against a majority of 0.80).
    social = {"n_test": 50, "accuracy_base": 0.10, "accuracy": 0.78, "multiple_choice": True,
              "majority_rate": 0.80, "heldout_loss_base": 4.1, "heldout_loss": 0.3}
    assert learned(social) == "label prior"
    assert learned({**social, "majority_rate": 0.18}) == "yes"  # intent_recognition's case
    assert learned({**social, "multiple_choice": False}) == "yes"  # no labels, no prior


def test_library_readme_follows_the_base_model() -> None:
    from composer.library import render_library_readme

    # The shipped starter library's README is exactly what its manifest renders to.
    assert render_library_readme(json.loads((REPO / "library" / "manifest.json").read_text())) \
        == (REPO / "library" / "README.md").read_text()
    gemma = {"settings": {"base_model": "google/gemma-3-270m", "license": "gemma",
                          "base_source": "gemma-3-270m-q4_k_m.gguf", "chat_template": False,
                          "train": {"rank": 16}},
             "modules": {}}
    text = render_library_readme(gemma)
    assert text.startswith("# A loradex library on `google/gemma-3-270m`")
    assert "(from `gemma-3-270m-q4_k_m.gguf`)" in text
    assert "Gemma Terms of Use found at ai.google.dev/gemma/terms" in text
    assert "released under Apache-2.0" not in text
