"""The study's statistics against hand-computed examples, and the BBH study script end to end
on a tiny model, two tiny LoRA modules and a tiny task folder (resumable results file)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from benchmarks.study import (
    ComposeSpec,
    StudySettings,
    applies,
    format_p_values,
    main,
    own_share,
    pick_candidates,
    row_seconds,
    score_test,
)
from benchmarks.study.stats import (
    format_distribution,
    label_distribution,
    majority_correct,
    majority_label,
    markdown_table,
    mcnemar_exact,
    paired_bootstrap,
    summarize,
)
from loradex.errors import ConfigError, InvalidDataFile
from tests.support.tiny_models import save_lora, write_jsonl

# --------------------------------------------------------------------------- statistics


def test_majority_label_and_rate_on_the_test_split():
    targets = ["No", "Yes", "No", "No", "Yes"]
    assert majority_label(targets) == ("No", 0.6)
    assert majority_correct(targets) == [True, False, True, True, False]
    # A tie goes to the label that sorts first, so the baseline is deterministic.
    assert majority_label(["b", "a", "b", "a"]) == ("a", 0.5)
    with pytest.raises(ValueError):
        majority_label([])


def test_label_distribution_on_a_constructed_example():
    picks = ["(B)", "(A)", "(B)", "(C)", "(B)", "(A)"]
    counts = label_distribution(picks)
    assert counts == {"(B)": 3, "(A)": 2, "(C)": 1}
    assert list(counts) == ["(B)", "(A)", "(C)"]  # commonest first
    assert format_distribution(counts, top=2) == "(B) 50% · (A) 33% · +1 more"
    assert format_distribution({"No": 100}) == "No 100%"


def test_mcnemar_matches_hand_computed_binomial():
    # 10 pairs: A right & B wrong on 6, B right & A wrong on 1, 3 concordant.
    a = [1] * 6 + [0] + [1, 1, 0]
    b = [0] * 6 + [1] + [1, 1, 0]
    result = mcnemar_exact([bool(x) for x in a], [bool(x) for x in b])
    assert (result.only_a, result.only_b) == (6, 1)
    # n = 7 discordant pairs; p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128 = 0.125
    assert result.p_value == pytest.approx(0.125)
    # Symmetric, and equal discordant counts give p = 1 (capped).
    assert mcnemar_exact([bool(x) for x in b], [bool(x) for x in a]).p_value == pytest.approx(0.125)
    assert mcnemar_exact([True, False], [False, True]).p_value == 1.0
    assert mcnemar_exact([True, True], [True, True]).p_value == 1.0
    # 10 discordant pairs all one way: 2 / 2^10.
    assert mcnemar_exact([True] * 10, [False] * 10).p_value == pytest.approx(2 / 1024)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_matches_the_exact_resampling_distribution():
    # Per-example differences d = [1, 0]: the mean of two draws is 0, 0.5 or 1 with
    # probability 1/4, 1/2, 1/4, so P[d* <= 0] = 1/4 and the two-sided p-value is 1/2.
    result = paired_bootstrap([True, False], [False, False], resamples=20_000, seed=3)
    assert result.difference == 0.5
    assert result.p_value == pytest.approx(0.5, abs=0.02)
    assert (result.low, result.high) == (0.0, 1.0)
    # Identical systems: no difference, p = 1; one always right vs always wrong: p = 0.
    same = paired_bootstrap([True, False, True], [True, False, True], resamples=200)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    apart = paired_bootstrap([True] * 5, [False] * 5, resamples=200)
    assert (apart.difference, apart.low, apart.high, apart.p_value) == (1.0, 1.0, 1.0, 0.0)
    # Reproducible with a seed.
    a, b = [True, False, True, True], [False, False, True, False]
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)


def test_summarize_and_table():
    s = summarize([0.5, 0.7, 0.6])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)
    assert (s.low, s.high, s.n) == (0.5, 0.7, 3)
    assert s.format() == "0.60 ± 0.10"
    assert summarize([0.25]).format() == "0.25"
    table = markdown_table(["a", "b"], [["1", "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [["1"]])
    assert math.isclose(summarize([1.0, 3.0]).std, math.sqrt(2))


# --------------------------------------------------------------------------- the study script


def _task_rows(labels: tuple[str, str], n: int, skew: int) -> list[dict]:
    # ``skew`` of every 3 targets are labels[0], so the majority rate is not 1/2.
    return [
        {
            "input": f"question {i}: is {i} {'even' if i % 2 else 'odd'}?",
            "target": labels[0] if i % 3 < skew else labels[1],
            "choices": list(labels),
        }
        for i in range(n)
    ]


def _out_to(args: list[str], out: Path) -> list[str]:
    """The study's arguments with ``--out`` pointing at another results file."""
    args = list(args)
    args[args.index("--out") + 1] = str(out)
    return args


@pytest.fixture
def tiny_study(tmp_path, tiny_causal_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "yesno.jsonl", _task_rows(("yes", "no"), 14, 2))
    write_jsonl(tasks / "truth.jsonl", _task_rows(("true", "false"), 12, 1))
    write_jsonl(tasks / "unused.jsonl", _task_rows(("a", "b"), 8, 1))
    library = tmp_path / "library"
    for i in range(2):
        save_lora(tiny_causal_dir, library / f"mod{i}", seed=20 + i)
    out = tmp_path / "out" / "results.json"

    def argv(*extra: str) -> list[str]:
        return ["--tasks-dir", str(tasks), "--library", str(library), "--base-model",
                str(tiny_causal_dir), "--seeds", "1", "--budget", "3", "--k", "20",
                "--tasks", "yesno,truth", "--out", str(out), "--quiet", *extra]

    return argv, out


def test_study_runs_end_to_end_and_resumes(tiny_study, capsys):
    argv, out = tiny_study
    study = main(argv("--markdown"))
    systems = study.systems()
    assert systems[:3] == ["zero-shot", "single (by few-shot loss)", "uniform 1/k"]
    assert systems[-1] == "in-context"
    assert "compose lorahub/lm" in systems and "compose mixed-rank/lm" in systems
    assert len(study.computed) == 2 * len(systems)

    results = json.loads(out.read_text())
    assert set(results["tasks"]) == {"yesno", "truth"}
    cell = results["tasks"]["yesno"]["0"]
    assert cell["n_test"] == 14 - 5 and len(cell["few_shot_indices"]) == 5
    assert len(set(cell["few_shot_indices"])) == 5 and max(cell["few_shot_indices"]) < 14
    assert cell["candidates"] == ["mod0", "mod1"]  # k = 20 > 2 available: all of them
    targets = cell["test_targets"]
    assert cell["majority"]["rate"] == max(targets.count("yes"), targets.count("no")) / 9
    for name in systems:
        res = cell["systems"][name]
        assert len(res["em_correct"]) == len(res["mc_picks"]) == 9
        assert res["choice_accuracy"] == sum(
            p == t for p, t in zip(res["mc_picks"], targets, strict=True)) / 9
        assert sum(res["mc_labels"].values()) == 9
    assert len(cell["systems"]["compose lorahub/lm"]["weights"]) == 2
    assert cell["systems"]["single (by few-shot loss)"]["module"] in {"local/mod0", "local/mod1"}
    assert results["wall_seconds"] > 0

    table = capsys.readouterr().out
    assert "**yesno**" in table and "**truth**" in table
    assert "| majority label |" in table and "| compose lorahub/lm |" in table
    assert "p vs zero-shot" in table

    # A second run recomputes nothing; losing one system recomputes only that system.
    again = main(argv())
    assert again.computed == []
    del results["tasks"]["truth"]["0"]["systems"]["uniform 1/k"]
    out.write_text(json.dumps(results))
    third = main(argv())
    assert third.computed == [("truth", 0, "uniform 1/k")]
    assert json.loads(out.read_text())["tasks"]["yesno"] == results["tasks"]["yesno"]
    capsys.readouterr()
    assert main(argv("--report-only")).computed == []
    # The same tables (the settings line's wall time has grown with the third run).
    assert capsys.readouterr().out.strip().split("\n\n")[1:] == table.strip().split("\n\n")[1:]


def test_study_refuses_to_resume_with_other_settings(tiny_study):
    argv, _ = tiny_study
    main(argv("--tasks", "truth", "--methods", "lorahub"))
    with pytest.raises(ConfigError, match="budget 3 -> 4"):
        main(argv("--budget", "4"))
    with pytest.raises(InvalidDataFile, match="--tasks nope"):
        main(argv("--tasks", "nope"))


def test_prompts_over_the_length_limit_are_counted(tiny_study, tmp_path, capsys):
    argv, out = tiny_study
    # Five demonstrations make every in-context prompt longer than 40 tokens; questions alone
    # are not.
    short = tmp_path / "short.json"
    main(argv("--tasks", "truth", "--methods", "lorahub", "--objectives", "lm",
              "--max-length", "40", "--out", str(short), "--markdown"))
    cell = json.loads(short.read_text())["tasks"]["truth"]["0"]
    assert cell["systems"]["in-context"]["prompts_cut"] == cell["n_test"] == 7
    assert "prompts_cut" not in cell["systems"]["zero-shot"]
    table = capsys.readouterr().out
    assert "prompts cut to their last 40 tokens" in table
    assert "Prompts that lost their beginning (over the length limit), over all seeds: " \
           "in-context 7." in table
    # The limit is a setting of the study; a file from before it existed was made at 1024.
    with pytest.raises(ConfigError, match="max_length 40 -> 1024"):
        main(argv("--tasks", "truth", "--out", str(short)))
    main(argv("--tasks", "truth", "--methods", "lorahub", "--objectives", "lm"))
    results = json.loads(out.read_text())
    del results["settings"]["fingerprint"]["max_length"]
    out.write_text(json.dumps(results))
    assert main(argv("--tasks", "truth", "--methods", "lorahub",
                     "--objectives", "lm")).computed == []


def test_choice_picks_agree_with_loradex_eval(tiny_causal_dir, load_tiny):
    from composer.data import Example
    from composer.metrics import evaluate_examples

    loaded = load_tiny(tiny_causal_dir)
    rows = _task_rows(("yes", "no"), 9, 2) + _task_rows(("(A)", "(B)"), 3, 1)
    examples = [Example(r["input"], r["target"], tuple(r["choices"])) for r in rows]
    demos = examples[:2]
    scored = score_test(loaded, examples[2:], demonstrations=demos)
    report = evaluate_examples(loaded, examples[2:], demonstrations=demos, progress=False)
    assert label_distribution(scored["mc_picks"]) == report.label_distribution
    correct = sum(p == ex.target for p, ex in zip(scored["mc_picks"], examples[2:], strict=True))
    assert correct / len(examples[2:]) == pytest.approx(report.choice_accuracy)
    assert sum(scored["em_correct"]) / len(examples[2:]) == pytest.approx(report.exact_match)


def test_study_rows_for_layer_groups_restarts_and_hydra(tiny_study, tmp_path, tiny_causal_dir,
                                                        load_tiny):
    from composer.hydra.format import save_hydra
    from composer.hydra.runtime import init_hydra_module
    from registry.hydra import HydraConfig

    loaded = load_tiny(tiny_causal_dir)
    config = HydraConfig(base_model="tiny", target_modules=("q_proj", "v_proj"), rank=4,
                         alpha=8.0, num_heads=2)
    # Zero heads: a Hydra module that changes nothing, so its row must equal zero-shot.
    noop = save_hydra(init_hydra_module(loaded.model, config), tmp_path / "noop-hydra")
    argv, out = tiny_study
    study = main(argv("--tasks", "yesno", "--compose",
                      "lorahub/lm/g2,lorahub/lm/r2,lorahub/lm",
                      "--hydra-heads", "2", "--hydra-module", str(noop)))
    systems = study.systems()
    assert systems[3:-1] == ["compose lorahub/lm/g2", "compose lorahub/lm/r2",
                             "compose lorahub/lm", "hydra from lorahub/lm/r2",
                             "hydra module noop-hydra"]
    cell = json.loads(out.read_text())["tasks"]["yesno"]["0"]["systems"]
    assert len(cell["compose lorahub/lm/g2"]["weights"]) == 2 * 2
    assert [r["seed"] for r in cell["compose lorahub/lm/r2"]["restarts"]] == [0, 1]
    assert cell["hydra from lorahub/lm/r2"]["heads"] == 2
    assert cell["hydra module noop-hydra"]["mc_picks"] == cell["zero-shot"]["mc_picks"]
    assert cell["hydra module noop-hydra"]["answers"] == cell["zero-shot"]["answers"]


def test_compose_spec_names_round_trip():
    spec = ComposeSpec.parse("lorahub/choice/g3/r2/s")
    assert (spec.layer_groups, spec.restarts, spec.start) == (3, 2, "best-single")
    assert spec.name == "compose lorahub/choice/g3/r2/s"
    assert ComposeSpec.parse(spec.name) == spec
    assert ComposeSpec.parse("lorahub/lm").start == "zero"
    guarded = ComposeSpec.parse("lorahub/lm/s/cv")
    assert (guarded.start, guarded.guard, guarded.name) == ("best-single", "cv",
                                                           "compose lorahub/lm/s/cv")
    assert ComposeSpec.parse("lorahub/lm").guard == "off"


@pytest.mark.parametrize(("spec", "message"), [
    ("lorahub", "expected METHOD/OBJECTIVE"),
    ("nope/lm", "unknown method"),
    ("lorahub/nope", "unknown objective"),
    ("lorahub/lm/x3", "'x3' is not gN, rN"),
    ("lorahub/lm/g0", "'g0' is not gN, rN"),
])
def test_bad_compose_specs_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        ComposeSpec.parse(spec)


def test_choice_rows_are_skipped_on_tasks_without_choices(tiny_study, tmp_path):
    argv, out = tiny_study
    tasks = Path(argv()[1])
    rows = [{"input": f"sort: {i} {i + 2} {i + 1}", "target": f"{i} {i + 1} {i + 2}"}
            for i in range(9)]
    write_jsonl(tasks / "sorting.jsonl", rows)
    main(argv("--tasks", "sorting,yesno", "--compose", "lorahub/lm,lorahub/choice",
              "--hydra-heads", "2"))
    cells = json.loads(out.read_text())["tasks"]
    sorting = cells["sorting"]["0"]["systems"]
    assert "compose lorahub/lm" in sorting and "hydra from lorahub/lm" in sorting
    assert "compose lorahub/choice" not in sorting
    assert set(sorting["zero-shot"]["mc_picks"]) == {None}  # nothing to pick from
    assert "compose lorahub/choice" in cells["yesno"]["0"]["systems"]
    assert applies("compose mixed-rank/choice-normalized/g2", False) is False
    assert applies("compose mixed-rank/choice/g2", True) is True


def test_two_processes_results_merge_into_one(tiny_study, tmp_path, capsys):
    argv, out = tiny_study
    other = tmp_path / "other.json"
    main(argv("--tasks", "yesno", "--methods", "lorahub"))
    second = argv("--tasks", "truth", "--methods", "lorahub")
    second[second.index("--out") + 1] = str(other)
    split = main(second)
    assert split.computed and all(task == "truth" for task, _, _ in split.computed)

    merged = main(argv("--methods", "lorahub", "--merge", str(other)))
    assert merged.computed == []  # every row of both tasks is there now
    results = json.loads(out.read_text())
    theirs = json.loads(other.read_text())
    assert results["tasks"]["truth"] == theirs["tasks"]["truth"]
    assert results["per_example"]["truth"] == theirs["per_example"]["truth"]
    assert results["merged"] == {str(other.resolve()): len(split.computed)}
    capsys.readouterr()
    main(argv("--methods", "lorahub", "--merge", str(other), "--report-only"))
    assert "1 process(es) run side by side merged in" in capsys.readouterr().out
    expected = sum(r["seconds"] for cells in results["tasks"].values() for c in cells.values()
                   for r in c["systems"].values())
    assert row_seconds(results) == pytest.approx(expected) and expected > 0

    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1}')
    with pytest.raises(ConfigError, match="made with another fingerprint"):
        main(argv("--methods", "lorahub", "--merge", str(broken)))
    broken.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a results file of this study"):
        main(argv("--methods", "lorahub", "--merge", str(broken)))
    with pytest.raises(ConfigError, match="not a results file"):
        main(argv("--methods", "lorahub", "--merge", str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match="another fingerprint"):
        main(_out_to(argv("--budget", "4", "--merge", str(out)),
                     tmp_path / "third.json"))


def test_seed_free_rows_score_each_example_once_for_all_seeds(tiny_study):
    argv, out = tiny_study
    study = main(argv("--tasks", "yesno", "--seeds", "3", "--methods", "lorahub",
                      "--objectives", "lm"))
    results = json.loads(out.read_text())
    cells = results["tasks"]["yesno"]
    scored = results["per_example"]["yesno"]["zero-shot"]
    tests = [set(range(14)) - set(cells[s]["few_shot_indices"]) for s in "012"]
    assert set(map(int, scored)) == set().union(*tests)  # every test example, once
    newly = [cells[s]["systems"]["zero-shot"]["newly_scored"] for s in "012"]
    assert newly[0] == 9 and sum(newly) == len(scored) < 27  # later seeds reuse the overlap
    # Each seed's row is what scoring its own test split directly gives.
    from composer.data import load_examples

    examples = load_examples(Path(argv()[1]) / "yesno.jsonl")
    loaded = study._model()
    for s in "012":
        cell = cells[s]
        test = [examples[i] for i in sorted(set(range(14)) - set(cell["few_shot_indices"]))]
        direct = score_test(loaded, test)
        assert cell["systems"]["zero-shot"]["mc_picks"] == direct["mc_picks"]
        assert cell["systems"]["zero-shot"]["answers"] == direct["answers"]


def test_seeds_split_over_processes_merge_into_one_run(tiny_study, tmp_path):
    """--first-seed lets a second process take the later seeds; merged, it is one run's file."""
    argv, out = tiny_study
    rows = ("--tasks", "yesno", "--seeds", "2", "--methods", "lorahub", "--objectives", "lm")

    def elsewhere(name: str, *extra: str) -> list[str]:
        return _out_to(argv(*rows, *extra), tmp_path / name)

    main(argv(*rows))  # seeds 0 and 1 in one process
    later = main(elsewhere("later.json", "--first-seed", "1"))
    assert {seed for _, seed, _ in later.computed} == {1}
    main(elsewhere("first.json", "--seeds", "1"))
    joined = main(elsewhere("first.json", "--merge", str(tmp_path / "later.json"),
                            "--report-only"))
    whole = json.loads(out.read_text())["tasks"]["yesno"]
    assert set(joined.results["tasks"]["yesno"]) == {"0", "1"}
    for seed, cell in joined.results["tasks"]["yesno"].items():
        for key in ("few_shot_indices", "candidates", "test_targets"):
            assert cell[key] == whole[seed][key]
        for name, row in cell["systems"].items():
            assert row["mc_picks"] == whole[seed]["systems"][name]["mc_picks"]
    for bad in ("2", "-1"):
        with pytest.raises(ConfigError, match=r"--first-seed must be in 0\.\.1"):
            main(argv(*rows, "--first-seed", bad))


def test_baselines_come_from_another_study_of_the_same_splits(tiny_study, tmp_path, capsys):
    """--baselines-from copies zero-shot and in-context (they do not depend on the candidates)
    from a study with other candidates, cell by cell where the split agrees."""
    argv, out = tiny_study
    rows = ("--tasks", "yesno,truth", "--seeds", "2", "--methods", "lorahub", "--objectives",
            "lm")
    main(argv(*rows))  # the reference: every row computed, k = 20 (both modules)

    def elsewhere(name: str, *extra: str) -> list[str]:
        return _out_to(argv(*rows, *extra), tmp_path / name)

    other = elsewhere("k1.json", "--k", "1", "--baselines-from", str(out))
    study = main(other)
    computed = {name for _, _, name in study.computed}
    assert "zero-shot" not in computed and "in-context" not in computed
    assert "single (by few-shot loss)" in computed and "compose lorahub/lm" in computed
    mine = json.loads((tmp_path / "k1.json").read_text())
    theirs = json.loads(out.read_text())
    for task in ("yesno", "truth"):
        for seed in ("0", "1"):
            here, there = mine["tasks"][task][seed], theirs["tasks"][task][seed]
            assert len(here["candidates"]) == 1
            for name in ("zero-shot", "in-context"):
                row = dict(here["systems"][name])
                assert row.pop("copied_from") == str(out.resolve())
                assert row == there["systems"][name]
    # Copied rows are not this file's time; a second run copies and computes nothing.
    assert row_seconds(mine) == pytest.approx(sum(
        r["seconds"] for c in mine["tasks"].values() for cell in c.values()
        for n, r in cell["systems"].items() if n not in ("zero-shot", "in-context")))
    assert main(other).computed == []
    capsys.readouterr()
    main(_out_to(argv(*rows, "--k", "1", "--report-only"), tmp_path / "k1.json"))
    assert "**yesno**" in capsys.readouterr().out
    # A copy taken before a cell chose its candidates (baselines only) merges back cleanly.
    early = json.loads((tmp_path / "k1.json").read_text())
    cell = early["tasks"]["truth"]["1"]
    del cell["candidates"]
    cell["systems"] = {n: r for n, r in cell["systems"].items() if "copied_from" in r}
    (tmp_path / "early.json").write_text(json.dumps(early))
    assert main(elsewhere("k1.json", "--k", "1", "--merge", str(tmp_path / "early.json"))
                ).computed == []

    # Another split (a task file that changed) is computed here, not copied.
    changed = json.loads(out.read_text())
    changed["tasks"]["yesno"]["1"]["few_shot_indices"] = [0, 1, 2, 3, 4]
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    again = main(elsewhere("k1b.json", "--k", "1", "--baselines-from",
                           str(tmp_path / "changed.json")))
    assert ("yesno", 1, "zero-shot") in again.computed
    assert ("yesno", 0, "zero-shot") not in again.computed
    # Settings the baselines depend on must agree; the candidates' may differ.
    with pytest.raises(ConfigError, match=r"other settings \(shots 5 -> 4\)"):
        main(elsewhere("shots.json", "--shots", "4", "--baselines-from", str(out)))


def test_table_counts_significant_seeds_by_direction():
    tests = [
        {"mcnemar_p": 0.01, "only_this": 10, "only_other": 2},  # better
        {"mcnemar_p": 0.2, "only_this": 7, "only_other": 4},  # not significant
        {"mcnemar_p": 0.0004, "only_this": 1, "only_other": 12},  # worse
    ]
    assert format_p_values(tests) == "0.010/0.200/<0.001 (↑1 ↓1)"
    assert format_p_values([]) == ""


def test_extending_a_limited_study_equals_running_the_full_split(tiny_study, tmp_path):
    """Rows extended from a 4-example run score like a fresh run on all 9 test examples."""
    argv, out = tiny_study
    rows = ("--tasks", "yesno", "--compose", "lorahub/lm,mixed-rank/lm/g2", "--hydra-heads", "2")
    limited = main(argv(*rows, "--test-limit", "4"))
    assert len(json.loads(out.read_text())["tasks"]["yesno"]["0"]["test_targets"]) == 4

    def elsewhere(name: str, *extra: str) -> list[str]:
        return _out_to(argv(*rows, *extra), tmp_path / name)

    extended = main(elsewhere("extended.json", "--extend-from", str(out)))
    main(elsewhere("fresh.json"))
    assert {n for _, _, n in extended.computed} == set(limited.systems())
    old = json.loads(out.read_text())["tasks"]["yesno"]["0"]["systems"]
    new = json.loads((tmp_path / "extended.json").read_text())["tasks"]["yesno"]["0"]
    ref = json.loads((tmp_path / "fresh.json").read_text())["tasks"]["yesno"]["0"]
    assert new["n_test"] == ref["n_test"] == 9 and new["test_targets"] == ref["test_targets"]
    for name in limited.systems():
        for key in ("answers", "em_correct", "mc_picks"):
            assert new["systems"][name][key] == ref["systems"][name][key], (name, key)
            assert new["systems"][name][key][:4] == old[name][key]
        assert new["systems"][name]["choice_accuracy"] == ref["systems"][name]["choice_accuracy"]
    compose = new["systems"]["compose lorahub/lm"]
    assert compose["extended_from"] == 4
    assert compose["weights"] == old["compose lorahub/lm"]["weights"]
    assert compose["search_seconds"] == old["compose lorahub/lm"]["search_seconds"]  # no search
    # the seed-free rows scored only the 5 new examples
    assert new["systems"]["zero-shot"]["newly_scored"] == 5

    with pytest.raises(ConfigError, match="needs a larger --test-limit"):
        main(elsewhere("again.json", "--extend-from", str(out), "--test-limit", "4"))
    with pytest.raises(ConfigError, match="other settings than the test limit"):
        main(elsewhere("other.json", "--extend-from", str(out), "--budget", "4"))


def test_own_module_is_forced_in_or_kept_out_of_the_candidates():
    pool = [f"m{i}" for i in range(10)] + ["task"]
    pick = pick_candidates
    # "any" draws as before the option existed.
    assert pick(pool, 4, 3) == sorted(random.Random(3).sample(sorted(pool), 4))
    assert pick(pool, 4, 3, "task", "any") == pick(pool, 4, 3)
    for seed in range(20):
        included = pick(pool, 4, seed, "task", "include")
        excluded = pick(pool, 4, seed, "task", "exclude")
        assert "task" in included and len(set(included)) == 4
        assert "task" not in excluded and len(set(excluded)) == 4
    assert pick(pool, 30, 0, "task", "include") == sorted(pool)
    assert pick(pool, 30, 0, "task", "exclude") == sorted(pool[:-1])
    with pytest.raises(ConfigError, match="no module named 'other'"):
        pick(pool, 4, 0, "other", "include")


def test_study_with_the_tasks_own_module(tiny_study, tmp_path, tiny_causal_dir, capsys):
    argv, out = tiny_study
    library = Path(argv()[3])
    save_lora(tiny_causal_dir, library / "yesno", seed=7)
    # k = 1: the own module is the only candidate, so the single row must be that module.
    study = main(argv("--tasks", "yesno", "--own-module", "include", "--k", "1",
                      "--compose", "lorahub/lm", "--markdown"))
    assert study.systems()[:3] == ["zero-shot", "single (by few-shot loss)", "own module alone"]
    cell = json.loads(out.read_text())["tasks"]["yesno"]["0"]
    assert cell["candidates"] == ["yesno"]
    own, single = cell["systems"]["own module alone"], cell["systems"]["single (by few-shot loss)"]
    assert own["module"] == single["module"] == "local/yesno"
    assert own["mc_picks"] == single["mc_picks"] and own["answers"] == single["answers"]
    table = capsys.readouterr().out
    assert "| own module alone |" in table
    share = "1.00" if cell["systems"]["compose lorahub/lm"]["weights"][0] else "0.00"
    assert ("The task's own module `yesno` was a candidate in 1 seed(s) (an even share would be "
            "1.00): the single row picked it in 1 of 1 seed(s); compose lorahub/lm gave it "
            f"{share} of the weight.") in table
    # The option is a setting of the study; files from before it existed were made with "any".
    with pytest.raises(ConfigError, match="own_module 'include' -> 'any'"):
        main(argv("--tasks", "yesno", "--k", "1", "--compose", "lorahub/lm"))
    excluded = tmp_path / "excluded.json"
    main(argv("--tasks", "yesno", "--own-module", "exclude", "--compose",
              "lorahub/lm", "--out", str(excluded)))
    cell = json.loads(excluded.read_text())["tasks"]["yesno"]["0"]
    assert cell["candidates"] == ["mod0", "mod1"] and "own module alone" not in cell["systems"]
    with pytest.raises(ConfigError, match="no module named 'truth'"):
        main(argv("--tasks", "truth", "--own-module", "include",
                  "--out", str(tmp_path / "truth.json")))
    # A file from before the option existed resumes as "any".
    before = tmp_path / "before.json"
    args = ("--tasks", "yesno", "--compose", "lorahub/lm", "--out", str(before))
    main(argv(*args))
    results = json.loads(before.read_text())
    del results["settings"]["fingerprint"]["own_module"]
    before.write_text(json.dumps(results))
    assert main(argv(*args)).computed == []


def test_own_share_sums_a_modules_weight_over_layer_groups():
    # [groups, candidates] = [[0.5, -0.25], [0.0, 0.25]]: b holds 0.5 of 1.0 absolute weight.
    assert own_share([0.5, -0.25, 0.0, 0.25], ["a", "b"], "b") == 0.5
    assert own_share([0.0, 0.0], ["a", "b"], "a") == 0.0


def test_oracle_row_is_the_candidate_best_on_the_test_split(tiny_study):
    argv, out = tiny_study
    main(argv("--tasks", "yesno", "--oracle", "--compose", "lorahub/lm"))
    cell = json.loads(out.read_text())["tasks"]["yesno"]["0"]
    oracle = cell["systems"]["oracle single (chosen on test)"]
    correct = oracle["test_choice_correct"]
    assert len(correct) == len(cell["candidates"]) == 2
    best = correct.index(max(correct))
    assert oracle["module"] == f"local/{cell['candidates'][best]}"
    assert oracle["choice_accuracy"] == max(correct) / cell["n_test"]


def test_fingerprint_names_the_base_model_not_its_path(tmp_path: Path) -> None:
    # The same GGUF read from two places is the same base: a study resumes from either.
    def settings(base: str | None):
        return StudySettings(
            tasks_dir="t", library="l", base_model=base, k=2, shots=1, budget=2,
            test_limit=None, use_chat_template=True, dtype="float32")

    here = settings(str(tmp_path / "a" / "gemma-3-270m-q4_k_m.gguf")).fingerprint()
    there = settings(".models/gemma-3-270m-q4_k_m.gguf").fingerprint()
    assert here == there and here["base_model"] == "google/gemma-3-270m"
    assert settings(None).fingerprint()["base_model"] is None  # the embedded default
    assert settings(str(tmp_path / "other.gguf")).fingerprint() != here
