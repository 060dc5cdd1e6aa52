"""The compose-batch plan: a good plan becomes one compose request a task; a bad one is
refused with the file, the task and the key named (no cluster, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from composer.pipeline import RegistrySelection
from composer.scaleout.batch_plan import load_plan
from loradex.cli import cli
from loradex.errors import ConfigError


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    (tmp_path / "few.jsonl").write_text('{"input": "a", "target": "b"}\n')
    (tmp_path / "lib" / "m0").mkdir(parents=True)
    return tmp_path


def _plan(folder: Path, text: str) -> Path:
    path = folder / "plan.yaml"
    path.write_text(text)
    return path


def test_a_plan_becomes_one_request_a_task(plan_dir: Path) -> None:
    plan = load_plan(_plan(plan_dir, """
out_dir: composed
defaults: {budget: 12, seed: 3, method: mixed-rank}
tasks:
  - {name: one, examples: few.jsonl, candidates: [lib/m0, org/hub-module@abc]}
  - {name: two, examples: few.jsonl, registry: {k: 4, select: random, tags: [bigbench]},
     budget: 20, holdout: few.jsonl, out: elsewhere/two, start: best-single, guard: cv}
"""), index=False)
    one, two = (t.request for t in plan.tasks)
    assert one.candidates == (str(plan_dir / "lib" / "m0"), "org/hub-module@abc")
    assert one.out == plan_dir / "composed" / "one" and one.name == "one" and not one.index
    assert (one.compose.method, one.compose.search.budget, one.compose.search.seed) == (
        "mixed-rank", 12, 3)
    assert two.candidates == RegistrySelection(k=4, select="random", tags=("bigbench",))
    assert two.compose.search.budget == 20 and two.out == plan_dir / "elsewhere" / "two"
    assert two.holdout == plan_dir / "few.jsonl"
    assert (one.compose.start, one.compose.guard) == ("zero", "off")
    assert (two.compose.start, two.compose.guard) == ("best-single", "cv")


@pytest.mark.parametrize(("text", "message"), [
    ("tasks: []", "'tasks' must be a non-empty list"),
    ("tasks: [{name: a, examples: few.jsonl}]", "task a: give either 'candidates' or 'registry'"),
    ("tasks: [{name: a, examples: nope.jsonl, candidates: [x]}]",
     "task a: 'examples': no such file"),
    ("tasks: [{name: a, examples: few.jsonl, candidates: [x], budgett: 3}]",
     "task a: unknown key(s) budgett"),
    ("tasks: [{name: a, examples: few.jsonl, candidates: [x], budget: many}]",
     "task a: 'budget' must be int, got 'many'"),
    ("tasks: [{name: a, examples: few.jsonl, candidates: [x]}, "
     "{name: a, examples: few.jsonl, candidates: [x]}]", "task a: named twice"),
    ("tasks: [{name: ../up, examples: few.jsonl, candidates: [x]}]", "'name' must be letters"),
    ("tasks: [", "cannot read it"),
    ("tasks: [{name: a, examples: few.jsonl, candidates: [x], guard: always}]",
     "task a: --guard must be one of off, cv, auto"),
])
def test_a_bad_plan_is_refused_with_what_is_wrong(plan_dir: Path, text: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_plan(_plan(plan_dir, text))
    assert str(refused.value).startswith(f"plan {plan_dir / 'plan.yaml'}: ")
    assert message in str(refused.value)


def test_the_cli_refuses_a_bad_plan_in_one_line(plan_dir: Path, loradex_home: Path) -> None:
    result = CliRunner().invoke(cli, ["compose-batch", str(_plan(plan_dir, "tasks: 3"))])
    assert isinstance(result.exception, ConfigError)
    assert "'tasks' must be a non-empty list" in str(result.exception)
