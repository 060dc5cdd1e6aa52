"""``loradex train``, ``compose`` and ``eval`` end to end on a tiny model, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run
from tests.support.tiny_models import FEW_SHOT, save_lora, save_tiny_causal, write_jsonl

TRAIN_ROWS = [{"input": f"count {i}", "target": ["one", "two", "three"][i % 3]} for i in range(12)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    base = save_tiny_causal(root / "base")
    mods = [save_lora(base, root / f"m{i}", seed=i) for i in range(3)]
    odd = save_lora(base, root / "r8", seed=9, rank=8)
    return {
        "root": root, "base": base, "m0": mods[0], "m1": mods[1], "m2": mods[2], "r8": odd,
        "few": write_jsonl(root / "few.jsonl", FEW_SHOT),
        "train": write_jsonl(root / "train.jsonl", TRAIN_ROWS),
    }


def test_train_compose_eval_and_registry(tiny, db_url, tmp_path, capsys, loradex_home):
    from registry.store import RegistryStore

    db = ["--db", db_url]
    code, out, err = run([*db, "train", str(tiny["train"]), "--out", str(tmp_path / "trained"),
                          "--base-model", str(tiny["base"]), "--rank", "4", "--steps", "3",
                          "--batch-size", "4", "--task-name", "count", "--task-category", "toy",
                          "--holdout-fraction", "0.25", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 3 and summary["registry_id"] == "local/trained"
    assert summary["heldout_loss_after"] is not None

    code, out, err = run([*db, "compose", "--examples", str(tiny["few"]),
                          "--base-model", str(tiny["base"]), "--budget", "6", "--seed", "1",
                          "--out", str(tmp_path / "composed"), "--holdout", str(tiny["few"]),
                          str(tiny["m0"]), str(tiny["m1"]), "--candidates",
                          f"{tiny['m2']},{tmp_path / 'trained'}", "--method", "mixed-rank",
                          "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert list(summary["weights"]) == ["local/m0", "local/m1", "local/m2", "local/trained"]
    assert len(summary["holdout"]) == 2 + 4
    assert (tmp_path / "composed" / "loss_curve.png").is_file()

    store = RegistryStore.from_url(db_url)
    try:
        module = store.get_module("local/composed")
        trained = store.get_module("local/trained")
    finally:
        store.engine.dispose()
    assert [e.parent_repo_id for e in module.lineage] == list(summary["weights"])
    weights = list(summary["weights"].values())
    assert [e.weight for e in module.lineage] == pytest.approx(weights, abs=1e-5)
    assert module.rank == 4 * 4 and trained.task_name == "count"

    code, out, err = run([*db, "eval", str(tiny["few"]), "--base-model", str(tiny["base"]),
                          "--adapter", str(tmp_path / "composed"), "--json",
                          "--predictions", str(tmp_path / "pred.jsonl")], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_examples"] == 5 and metrics["n_choice_examples"] == 1
    assert metrics["loss"] == pytest.approx(summary["loss"], abs=1e-4)
    assert len((tmp_path / "pred.jsonl").read_text().splitlines()) == 5
    assert "prompts_cut" not in metrics and "lost their beginning" not in err

    # Prompts longer than --max-length are cut, and the user is told how many.
    code, out, err = run([*db, "eval", str(tiny["few"]), "--base-model", str(tiny["base"]),
                          "--max-length", "3", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["prompts_cut"] == 5
    assert "5 of 5 prompts were longer than --max-length 3 tokens" in err


def test_unequal_ranks_fail_before_the_model_is_loaded(tiny, tmp_path, capsys, loradex_home):
    code, _out, err = run(["compose", "--examples", str(tiny["few"]), "--base-model",
                          str(tiny["base"]), "--out", str(tmp_path / "x"), str(tiny["m0"]),
                          str(tiny["r8"])], capsys)
    assert code == 5
    assert err.strip().splitlines()[-1].startswith("error: unequal ranks")
    assert "--method mixed-rank" in err and "loading base model" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["compose", "--examples", "{empty}", "--out", "{tmp}/o", "{m0}"], 6, "no examples"),
        (["compose", "--examples", "{few}", "--out", "{tmp}/o", "{tmp}/missing"], 3,
         "no such folder"),
        (["compose", "--examples", "{few}", "--out", "{tmp}/o"], 11, "give candidates"),
        (["compose", "--examples", "{few}", "--out", "{tmp}/o", "{m0}", "--optimizer", "Nope"], 11,
         "unknown nevergrad optimizer"),
        (["compose", "--examples", "{few}", "--out", "{tmp}/o", "{m0}", "--svd-rank", "2"], 11,
         "svd-rank only applies"),
        (["compose", "--examples", "{few}", "--out", "{tmp}/o", "{m0}", "--base-model", "{base}",
          "--start", "best-single", "--budget", "2"], 11, "--budget 2 must be larger"),
        (["train", "{bad}", "--out", "{tmp}/o"], 6, "bad.jsonl:1: not valid JSON"),
        (["train", "{few}", "--out", "{tmp}/o", "--steps", "2", "--epochs", "1"], 11,
         "either steps or epochs"),
        (["eval", "{few}", "--adapter", "{tmp}/missing"], 3, "no such folder"),
        (["eval", "{few}", "--base-model", "{tmp}/nomodel"], 10, "model folder not found"),
        (["eval", "{few}", "--max-length", "0"], 11, "--max-length >= 1"),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(
    argv, code, message, tiny, tmp_path, capsys, loradex_home
):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    values = {"tmp": tmp_path, "few": tiny["few"], "m0": tiny["m0"], "base": tiny["base"],
              "empty": tmp_path / "empty.jsonl", "bad": tmp_path / "bad.jsonl"}
    got, _out, err = run([a.format(**values) for a in argv], capsys)
    assert got == code
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["train", "compose", "eval"])
def test_help_shows_an_example_without_importing_torch(command):
    code = (
        "import sys\n"
        "from loradex.cli import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout and "loradex " + command in proc.stdout


def test_compose_from_registry_picks_k_seeded_candidates(tiny, db_url, tmp_path, capsys,
                                                         loradex_home):
    from composer.registry_link import index_adapter_folder

    for name in ("m0", "m1", "m2", "r8"):
        index_adapter_folder(db_url, tiny[name])
    argv = ["--db", db_url, "compose", "--examples", str(tiny["few"]), "--base-model",
            str(tiny["base"]), "--from-registry", "--select", "random", "--k", "2", "--rank", "4",
            "--budget", "2",
            "--modules-dir", str(tiny["root"]), "--no-index", "--json"]
    code, out, err = run([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    first = list(json.loads(out)["weights"])
    code, out, err = run([*argv, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert list(json.loads(out)["weights"]) == first
    assert len(first) == 2 and set(first) <= {"local/m0", "local/m1", "local/m2"}


def test_compose_objective_defaults_to_choice_when_every_example_has_choices(
    tiny, tmp_path, capsys, loradex_home
):
    rows = [{"input": f"yes or no {i}?", "target": "yes" if i % 2 else "no",
             "choices": ["yes", "no"]} for i in range(4)]
    few = write_jsonl(tmp_path / "choice.jsonl", rows)
    cards = {}
    for objective in ("auto", "lm"):
        code, _out, err = run(["compose", "--examples", str(few), "--base-model",
                               str(tiny["base"]), "--budget", "3", "--objective", objective,
                               "--out", str(tmp_path / objective), "--no-index",
                               str(tiny["m0"]), str(tiny["m1"])], capsys)
        assert code == 0, err
        cards[objective] = json.loads((tmp_path / objective / "loradex_provenance.json")
                                      .read_text())
    assert json.dumps(cards["auto"]).count('"objective": "choice"') >= 1
    assert json.dumps(cards["lm"]).count('"objective": "lm"') >= 1
    # Mixed few-shot files (some examples without choices) keep the paper's lm objective.
    code, _out, err = run(["compose", "--examples", str(tiny["few"]), "--base-model",
                           str(tiny["base"]), "--budget", "2", "--objective", "choice",
                           "--out", str(tmp_path / "bad"), "--no-index", str(tiny["m0"])],
                          capsys)
    assert code == 11 and "needs 'choices' on every example" in err


def test_compose_with_restarts_and_layer_groups(tiny, tmp_path, capsys, loradex_home):
    argv = ["compose", "--examples", str(tiny["few"]), "--base-model", str(tiny["base"]),
            "--budget", "3", "--restarts", "2", "--layer-groups", "2", "--no-index",
            str(tiny["m0"]), str(tiny["m1"])]
    code, out, err = run([*argv, "--out", str(tmp_path / "text")], capsys)
    assert code == 0, err
    assert "restarts: held-out loss" in out and "seed 0: held-out" in out
    assert "(11 searches of 3 evaluations)" in out  # 2 seeds x 5 folds + the picked seed
    assert "weights (mean of 2 layer groups):" in out
    code, out, err = run([*argv, "--out", str(tmp_path / "json"), "--json",
                          "--restart-pick", "average"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert [r["seed"] for r in summary["restarts"]] == [0, 1]
    assert all(r["loss"] is not None for r in summary["restarts"])
    assert len(summary["layer_group_weights"]) == 2
    code, _out, err = run([*argv[:-2], "--output", "hydra", "--out", str(tmp_path / "h"),
                           str(tiny["m0"]), str(tiny["m1"])], capsys)
    assert code == 11 and "--layer-groups 1" in err


def test_compose_with_the_cross_validation_guard(tiny, tmp_path, capsys, loradex_home):
    argv = ["compose", "--examples", str(tiny["few"]), "--base-model", str(tiny["base"]),
            "--budget", "5", "--start", "best-single", "--guard", "cv", "--no-index",
            str(tiny["m0"]), str(tiny["m1"])]
    code, out, err = run([*argv, "--out", str(tmp_path / "text")], capsys)
    assert code == 0, err
    assert "(6 searches of 5 evaluations)" in out  # 5 leave-one-out folds + all examples
    assert "guard: held-out loss" in out and "; kept the " in out
    code, out, err = run([*argv, "--out", str(tmp_path / "json"), "--json"], capsys)
    assert code == 0, err
    guard = json.loads(out)["guard"]
    assert guard["kept"] == ("search" if guard["search_cv_loss"] < guard["start_cv_loss"]
                             else "start")
    provenance = json.loads((tmp_path / "json" / "loradex_provenance.json").read_text())
    assert provenance["composition"]["guard_cv"]["kept"] == guard["kept"]


def test_compose_selects_candidates_by_signature_and_records_it(
        tiny, db_url, tmp_path, capsys, loradex_home):
    """Retrieval picks the module whose data signature matches the examples; the screen
    scores the retrieved ones alone; the provenance records both."""
    import shutil

    from composer.data import load_examples
    from composer.registry_link import index_adapter_folder
    from composer.signing import sign_folder
    from registry.embedders import load_embedder

    embedder = load_embedder()
    few = load_examples(tiny["few"])
    unrelated = [load_examples(write_jsonl(tmp_path / f"u{i}.jsonl", [
        {"input": text, "target": "x"} for text in texts]))
        for i, texts in enumerate((["Translate to French: good morning", "Translate: cat"],
                                   ["Is the claim about vaccines true?", "Claim: masks work"]))]
    for name, examples in (("m0", unrelated[0]), ("m1", few), ("m2", unrelated[1])):
        folder = shutil.copytree(tiny[name], tmp_path / "mods" / name)
        sign_folder(folder, examples, embedder)
        index_adapter_folder(db_url, folder)
    argv = ["--db", db_url, "compose", "--examples", str(tiny["few"]), "--base-model",
            str(tiny["base"]), "--from-registry", "--rank", "4", "--budget", "3",
            "--modules-dir", str(tmp_path / "mods"), "--no-index", "--json"]
    code, out, err = run([*argv, "--select", "retrieve", "--k", "1",
                          "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert list(json.loads(out)["weights"]) == ["local/m1"]
    provenance = json.loads((tmp_path / "r" / "loradex_provenance.json").read_text())
    selection = provenance["selection"]
    assert selection["method"] == "retrieve" and selection["pool_size"] == 3
    assert [r["repo_id"] for r in selection["retrieved"]] == ["local/m1"]
    assert selection["retrieved"][0]["signature"] == "data"

    code, out, err = run([*argv, "--select", "retrieve+screen", "--screen-pool", "3", "--k",
                          "2", "--budget", "5", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    assert len(json.loads(out)["weights"]) == 2
    selection = json.loads((tmp_path / "s" / "loradex_provenance.json").read_text())["selection"]
    assert len(selection["retrieved"]) == 3 and len(selection["screen"]) == 3
    kept = sorted(selection["screen"], key=lambda r: r["loss"])[:2]
    assert list(json.loads(out)["weights"]) == [r["repo_id"] for r in kept]
    # retrieve+screen is the default, and starts the search from the best one it kept.
    code, out, err = run([*argv, "--k", "2", "--budget", "5", "--out", str(tmp_path / "d")],
                         capsys)
    assert code == 0, err
    provenance = json.loads((tmp_path / "d" / "loradex_provenance.json").read_text())
    assert provenance["selection"]["method"] == "retrieve+screen"
    assert provenance["composition"]["start"] == "best-single"

    code, _out, err = run([*argv, "--select", "retrieve", "--all-compatible",
                           "--out", str(tmp_path / "x")], capsys)
    assert code == 11 and "--all-compatible" in err
    code, _out, err = run(["--db", db_url, "compose", "--examples", str(tiny["few"]),
                           "--select", "retrieve", "--out", str(tmp_path / "y"),
                           str(tiny["m0"])], capsys)
    assert code == 11 and "--from-registry" in err


def test_train_writes_a_data_signature_that_add_indexes(tiny, db_url, tmp_path, capsys,
                                                        loradex_home):
    from registry.signatures import DATA, SIGNATURE_FILE, read_signature_file
    from registry.store import RegistryStore

    code, _out, err = run(["--db", db_url, "train", str(tiny["train"]), "--out",
                           str(tmp_path / "t"), "--base-model", str(tiny["base"]), "--rank",
                           "4", "--steps", "2", "--batch-size", "4", "--no-index"], capsys)
    assert code == 0, err
    signature = read_signature_file(tmp_path / "t" / SIGNATURE_FILE)
    assert signature.kind == DATA and signature.count == len(TRAIN_ROWS)
    code, _out, err = run(["--db", db_url, "add", str(tmp_path / "t")], capsys)
    assert code == 0, err
    store = RegistryStore.from_url(db_url)
    try:
        kinds = sorted(s.kind for s in store.signatures("local/t"))
    finally:
        store.engine.dispose()
    assert kinds == ["card", "data"]
    # A broken signature file: one warning line, the module still indexed without it.
    (tmp_path / "t" / SIGNATURE_FILE).write_bytes(b"garbage")
    code, _out, err = run(["--db", db_url, "add", str(tmp_path / "t")], capsys)
    assert code == 0 and "warning:" in err and "truncated" in err
    store = RegistryStore.from_url(db_url)
    try:
        assert [s.kind for s in store.signatures("local/t")] == ["card"]
    finally:
        store.engine.dispose()
