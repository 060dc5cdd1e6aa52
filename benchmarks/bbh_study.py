"""The BIG-Bench Hard study: does composing library modules teach a task, or only its format?

For every task (a JSONL file in ``--tasks-dir``) and seed:

- 5 few-shot examples are drawn with the seed; every other example is the test split
  (``--test-limit N`` keeps the first N of them, in file order);
- ``k`` candidates are drawn with the seed from the library (the pool of modules is frozen in
  the results file on the first run);
- systems, all scored on the same test examples (paired): the majority label of the test split
  (a constant answer), zero-shot, 5-shot in-context (the few-shot examples as demonstrations),
  the best single candidate *chosen by few-shot loss* (``--oracle`` adds the best single
  candidate chosen on the test split itself, labelled as such), the uniform average of the k
  candidates (weights 1/k, lorahub method), and loradex compose (CMA-ES) for every method and
  objective asked for;
- metrics: exact match of the greedy answer, multiple-choice accuracy (the choice with the
  highest log-likelihood), the distribution of the picked labels, and paired tests (exact
  McNemar and a paired bootstrap) of every system against zero-shot and the majority label.

``--own-module include`` runs the study on tasks that have a library module of their own (the
held-out splits that ``loradex library heldout`` writes, never trained on): that module is in
every seed's candidates, the row "own module alone" scores it, and each task's table says how
often the single row picked it and what share of each compose row's weight it got, so the
study shows whether composition finds a skill that is in the library. ``exclude`` keeps it out
(transfer from the other modules only).

Prompts over ``--max-length`` tokens (1,024) lose their beginning, as in ``loradex eval``;
each row records how many did (5-shot prompts can be far longer than the question alone).

Results are written after every system to ``--out`` (atomically); a run that is stopped can be
resumed and finished cells are not recomputed. ``--markdown`` prints the tables.
``--extend-from OLD`` takes a study run with a smaller ``--test-limit`` to a larger test split
(or the whole of it): the seeds' few-shot examples and candidates are the same and the first
test examples too, so each recorded row is rebuilt from what it recorded (weights, module) and
scores only the new examples; no search runs again.

Run:  .venv/bin/python benchmarks/bbh_study.py --tasks navigate --seeds 2 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from composer.models import base_model_name_for  # noqa: E402
from composer.study import (  # noqa: E402
    format_distribution,
    format_p,
    label_distribution,
    majority_correct,
    majority_label,
    markdown_table,
    mcnemar_exact,
    paired_bootstrap,
    summarize,
)
from loradex.errors import ConfigError, InvalidDataFile, LoradexError, ModuleNotFound  # noqa: E402
from loradex.files import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from composer.candidates import Candidate
    from composer.data import Example
    from composer.hydra.format import HydraModule
    from composer.models import LoadedModel

RESULTS_VERSION = 1
# Prompts longer than this many tokens lose their beginning; files made before the setting
# existed were made with it.
DEFAULT_MAX_LENGTH = 1024
ZERO_SHOT = "zero-shot"
IN_CONTEXT = "in-context"
SINGLE = "single (by few-shot loss)"
ORACLE = "oracle single (chosen on test)"
OWN = "own module alone"
UNIFORM = "uniform 1/k"
MAJORITY = "majority label"
SIGNIFICANT = 0.05  # the level at which the tables count a seed as a significant difference
# --own-module: what the candidates of a task do with the library module of the same name
# (a module trained on that very task, as for the held-out splits of the upstream tasks).
OWN_MODULE_MODES = ("any", "include", "exclude")


@dataclass(frozen=True)
class StudySettings:
    """What every cell of a results file was computed with (checked when resuming)."""

    tasks_dir: str
    library: str
    base_model: str | None
    k: int
    shots: int
    budget: int
    test_limit: int | None
    use_chat_template: bool
    dtype: str
    max_length: int = DEFAULT_MAX_LENGTH
    own_module: str = "any"

    def fingerprint(self) -> dict[str, Any]:
        """The settings that make cells comparable (paths are informative, not checked)."""
        return {
            "k": self.k,
            "shots": self.shots,
            "budget": self.budget,
            "test_limit": self.test_limit,
            "use_chat_template": self.use_chat_template,
            "dtype": self.dtype,
            # The base model's stable name, not the path it was read from this time.
            "base_model": base_model_name_for(self.base_model) if self.base_model else None,
            "max_length": self.max_length,
            "own_module": self.own_module,
        }


def compose_system(method: str, objective: str, layer_groups: int = 1, restarts: int = 1,
                   start: str = "zero") -> str:
    """The name of a compose row, e.g. ``compose lorahub/lm`` or ``compose lorahub/choice/g3``
    (``/s``: the search starts from the best single candidate)."""
    name = f"compose {method}/{objective}"
    if layer_groups > 1:
        name += f"/g{layer_groups}"
    if restarts > 1:
        name += f"/r{restarts}"
    if start == "best-single":
        name += "/s"
    return name


@dataclass(frozen=True)
class ComposeSpec:
    """One compose row: ``method/objective[/gN][/rN][/s]`` (N layer groups, N restarts, start
    from the best single candidate)."""

    method: str
    objective: str
    layer_groups: int = 1
    restarts: int = 1
    start: str = "zero"

    @property
    def name(self) -> str:
        return compose_system(self.method, self.objective, self.layer_groups, self.restarts,
                              self.start)

    @classmethod
    def parse(cls, spec: str) -> ComposeSpec:
        """``lorahub/choice/g3/r3/s`` -> its spec; :class:`ConfigError` naming a bad part."""
        from composer.methods import METHODS
        from composer.objectives import OBJECTIVES

        parts = spec.strip().removeprefix("compose ").split("/")
        if len(parts) < 2:
            raise ConfigError(f"--compose {spec!r}: expected METHOD/OBJECTIVE[/gN][/rN][/s]")
        method, objective, *extra = parts
        if method not in METHODS:
            raise ConfigError(f"--compose {spec!r}: unknown method; known: {', '.join(METHODS)}")
        if objective not in OBJECTIVES:
            raise ConfigError(
                f"--compose {spec!r}: unknown objective; known: {', '.join(OBJECTIVES)}"
            )
        options = {"g": 1, "r": 1}
        start = "zero"
        for part in extra:
            if part == "s":
                start = "best-single"
            elif part[:1] not in options or not part[1:].isdigit() or int(part[1:]) < 1:
                raise ConfigError(f"--compose {spec!r}: {part!r} is not gN, rN (N >= 1) or s")
            else:
                options[part[0]] = int(part[1:])
        return cls(method, objective, options["g"], options["r"], start)


def applies(system: str, task_has_choices: bool) -> bool:
    """Whether ``system`` can run on a task: choice objectives need choices on every example."""
    if task_has_choices or not system.startswith(("compose ", "hydra from ")):
        return True
    objective = system.split(" ", 1)[1].split("/")[1]
    return not objective.startswith("choice")


def hydra_system(compose_name: str) -> str:
    """The Hydra composition row built from a compose row's weights."""
    return f"hydra from {compose_name.removeprefix('compose ')}"


def hydra_module_system(folder: Path) -> str:
    """The row of a ready Hydra module (e.g. trained on the upstream mixture)."""
    return f"hydra module {folder.name}"


# --------------------------------------------------------------------------- inputs


def task_files(tasks_dir: Path, only: Sequence[str]) -> dict[str, Path]:
    """The task files of ``tasks_dir`` by name (``only`` restricts and orders them)."""
    if not tasks_dir.is_dir():
        raise InvalidDataFile(f"--tasks-dir {tasks_dir}: no such folder")
    found = {p.stem: p for p in sorted(tasks_dir.glob("*.jsonl"))}
    if not found:
        raise InvalidDataFile(f"--tasks-dir {tasks_dir}: no .jsonl task files")
    if not only:
        return found
    missing = [t for t in only if t not in found]
    if missing:
        raise InvalidDataFile(
            f"--tasks {','.join(missing)}: not in {tasks_dir} (have {', '.join(found)})"
        )
    return {t: found[t] for t in only}


def library_pool(library: Path) -> list[str]:
    """Names of the adapter folders under ``library`` (sorted); when the library has a
    ``manifest.json`` (``loradex library build``), only the modules it lists as finished."""
    if not library.is_dir():
        raise ModuleNotFound(f"--library {library}: no such folder")
    names = sorted(p.name for p in library.iterdir() if (p / "adapter_config.json").is_file())
    manifest = library / "manifest.json"
    if manifest.is_file():  # a library being built lists its finished modules there
        try:
            finished = set(json.loads(manifest.read_text()).get("modules", {}))
        except ValueError:
            raise ModuleNotFound(f"{manifest}: not valid JSON") from None
        names = [n for n in names if n in finished]
    if not names:
        raise ModuleNotFound(f"--library {library}: no adapter folders (adapter_config.json)")
    return names


def split_task(
    examples: Sequence[Example], shots: int, seed: int, test_limit: int | None
) -> tuple[list[int], list[int]]:
    """Seeded few-shot indices, and the test indices: every other example (first N with a limit)."""
    if len(examples) <= shots:
        raise InvalidDataFile(f"{len(examples)} example(s): too few for {shots} few-shot + a test")
    few = sorted(random.Random(seed).sample(range(len(examples)), shots))
    chosen = set(few)
    test = [i for i in range(len(examples)) if i not in chosen]
    return few, test[:test_limit] if test_limit else test


def pick_candidates(
    pool: Sequence[str], k: int, seed: int, task: str = "", own_module: str = "any"
) -> list[str]:
    """A seeded random ``k`` of the pool (all of it, sorted, when it has at most ``k``).

    ``own_module`` says what to do with the module named ``task`` (one trained on the task
    itself): ``any`` treats it like the others, ``exclude`` leaves it out of the draw,
    ``include`` draws ``k - 1`` of the others and adds it, so every seed has it.
    """
    if own_module not in OWN_MODULE_MODES:
        raise ConfigError(f"--own-module {own_module!r}: one of {', '.join(OWN_MODULE_MODES)}")
    if own_module == "any":
        others, forced = list(pool), []
    elif task not in pool:
        raise ConfigError(
            f"--own-module {own_module}: the library pool has no module named {task!r}"
        )
    else:
        others = [name for name in pool if name != task]
        forced = [task] if own_module == "include" else []
    draw = k - len(forced)
    if draw >= len(others):
        return sorted([*others, *forced])
    return sorted([*random.Random(seed).sample(sorted(others), draw), *forced])


# --------------------------------------------------------------------------- scoring


def score_test(
    loaded: LoadedModel,
    examples: Sequence[Example],
    *,
    demonstrations: Sequence[Example] = (),
    use_chat_template: bool = True,
    batch_size: int = 16,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> dict[str, Any]:
    """Per-example results of the model as it is: greedy answers, exact match, picked choices
    (and ``prompts_cut``, how many prompts were over ``max_length`` tokens, when any were).

    ``composer.evaluate.read_examples`` gives them, as ``loradex eval`` does: prompts rendered
    the same way, each read once for its answer and its choices.
    """
    from composer.data import normalize_answer
    from composer.evaluate import read_examples

    loaded.model.eval()
    read = read_examples(
        loaded, examples, demonstrations=demonstrations, use_chat_template=use_chat_template,
        max_length=max_length, batch_size=batch_size,
    )
    answers = [normalize_answer(a or "") for a in read.answers]
    scored: dict[str, Any] = {
        "answers": answers,
        "em_correct": [int(a == normalize_answer(ex.target))
                       for a, ex in zip(answers, examples, strict=True)],
        "mc_picks": read.picks,
    }
    if any(read.prompt_cut):
        scored["prompts_cut"] = sum(read.prompt_cut)
    return scored


def cell_metrics(result: dict[str, Any], targets: Sequence[str], has_choices: bool) -> None:
    """Add exact match, choice accuracy and label distributions to a system's result."""
    result["exact_match"] = sum(result["em_correct"]) / len(targets)
    if has_choices:
        correct = [int(p == t) for p, t in zip(result["mc_picks"], targets, strict=True)]
        result["mc_correct"] = correct
        result["choice_accuracy"] = sum(correct) / len(targets)
        result["mc_labels"] = label_distribution(p for p in result["mc_picks"] if p is not None)
    result["generated_labels"] = label_distribution(result["answers"])


def read_results_file(path: Path, option: str) -> dict[str, Any]:
    """A results file of this study (for --out, --merge, --extend-from), else a ConfigError."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{option} {path}: not a results file ({exc})") from None
    if not isinstance(results, dict) or results.get("version") != RESULTS_VERSION:
        raise ConfigError(f"{option} {path}: not a results file of this study")
    fingerprint = results.get("settings", {}).get("fingerprint")
    if isinstance(fingerprint, dict):  # made before these options existed: their defaults
        fingerprint.setdefault("max_length", DEFAULT_MAX_LENGTH)
        fingerprint.setdefault("own_module", "any")
    return results


# --------------------------------------------------------------------------- one cell


class Study:
    """Runs the cells of a study and keeps the results file up to date."""

    def __init__(
        self,
        settings: StudySettings,
        out: Path,
        *,
        compose: Sequence[ComposeSpec],
        oracle: bool,
        hydra_heads: int = 0,
        hydra_modules: Sequence[Path] = (),
        quiet: bool = False,
        extend_from: Path | None = None,
    ) -> None:
        self.settings = settings
        self.out = out
        self.compose = list(compose)
        self.oracle = oracle
        self.hydra_heads = hydra_heads
        self.hydra_modules = {hydra_module_system(f): f for f in hydra_modules}
        self.quiet = quiet
        self.loaded: LoadedModel | None = None
        self.computed: list[tuple[str, int, str]] = []
        self.prior = self._open_prior(extend_from) if extend_from else None
        self.results = self._open()
        if self.prior is not None:
            self._adopt_prior(self.prior)

    def _open(self) -> dict[str, Any]:
        if self.out.exists():
            results = read_results_file(self.out, "--out")
            stored = results["settings"]["fingerprint"]
            if stored != self.settings.fingerprint():
                diff = ", ".join(
                    f"{k} {stored.get(k)!r} -> {v!r}"
                    for k, v in self.settings.fingerprint().items() if stored.get(k) != v
                )
                raise ConfigError(
                    f"--out {self.out} was made with other settings ({diff}); "
                    "use another --out to start a new study"
                )
            return results
        pool = library_pool(Path(self.settings.library))
        return {
            "version": RESULTS_VERSION,
            "settings": {
                "fingerprint": self.settings.fingerprint(),
                "tasks_dir": self.settings.tasks_dir,
                "library": self.settings.library,
                "library_pool": pool,
            },
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            },
            "wall_seconds": 0.0,
            "tasks": {},
        }

    def _open_prior(self, path: Path) -> dict[str, Any]:
        """The results file a larger test split extends (``--extend-from``), checked."""
        prior = read_results_file(path, "--extend-from")
        theirs = dict(prior["settings"]["fingerprint"])
        mine = self.settings.fingerprint()
        limit = theirs.pop("test_limit", None)
        if theirs != {k: v for k, v in mine.items() if k != "test_limit"}:
            raise ConfigError(f"--extend-from {path}: made with other settings than the test limit")
        if limit is None or (mine["test_limit"] is not None and mine["test_limit"] <= limit):
            raise ConfigError(
                f"--extend-from {path}: its test limit is {limit}; extending needs a larger "
                "--test-limit, or none (every non-few-shot example)"
            )
        return prior

    def _adopt_prior(self, prior: dict[str, Any]) -> None:
        """Take the prior's frozen library pool, and its per-example scores of seed-free rows."""
        pool = prior["settings"]["library_pool"]
        if not self.results["tasks"]:
            self.results["settings"]["library_pool"] = pool
        elif self.results["settings"]["library_pool"] != pool:
            raise ConfigError("--extend-from: the results file holds another library pool")
        self.results["settings"]["extends"] = prior["settings"]["fingerprint"]["test_limit"]
        self._take_per_example(prior)

    def _take_per_example(self, other: dict[str, Any]) -> None:
        """Add the per-example scores of seed-free rows that ``other`` has and this lacks."""
        for task, systems in other.get("per_example", {}).items():
            mine = self.results.setdefault("per_example", {}).setdefault(task, {})
            for name, scores in systems.items():
                for index, row in scores.items():
                    mine.setdefault(name, {}).setdefault(index, row)

    def _prior_cell(
        self, task: str, seed: int, few_idx: list[int], names: list[str], targets: list[str]
    ) -> dict[str, Any] | None:
        """The prior's cell of (task, seed) when its split is a prefix of this one's."""
        if self.prior is None:
            return None
        cell = self.prior["tasks"].get(task, {}).get(str(seed))
        if not cell or not cell.get("systems"):
            return None
        old = cell["test_targets"]
        if (cell["few_shot_indices"] != few_idx or cell["candidates"] != names
                or targets[: len(old)] != old):
            raise ConfigError(
                f"--extend-from: {task} seed {seed} has another split or candidates there"
            )
        return cell

    def merge(self, other_path: Path) -> int:
        """Take the rows another results file of the same settings has and this one lacks.

        Lets two processes run disjoint tasks or seeds, each with its own ``--out``, and be
        joined after. Returns the number of rows taken.
        """
        other = read_results_file(other_path, "--merge")
        mine, theirs = self.results["settings"], other.get("settings", {})
        for key in ("fingerprint", "library_pool"):
            if mine[key] != theirs.get(key):
                what = key.replace("_", " ")
                raise ConfigError(f"--merge {other_path}: made with another {what}")
        taken = 0
        for task, cells in other.get("tasks", {}).items():
            for seed, cell in cells.items():
                here = self.results["tasks"].setdefault(task, {}).setdefault(seed, {})
                if here.get("systems") and any(
                    here.get(key) != cell.get(key) for key in ("few_shot_indices", "candidates")
                ):
                    raise ConfigError(f"--merge {other_path}: {task} seed {seed} has another split")
                for key, value in cell.items():
                    if key != "systems":
                        here.setdefault(key, value)
                systems = here.setdefault("systems", {})
                for name, result in cell.get("systems", {}).items():
                    if name not in systems:
                        systems[name] = result
                        taken += 1
        self._take_per_example(other)
        # Which files rows came from. Their wall times are not added: a file started as a copy
        # of this one holds this one's time too; the report sums the rows' own times instead.
        merged = self.results.setdefault("merged", {})
        merged[str(other_path.resolve())] = merged.get(str(other_path.resolve()), 0) + taken
        self.save()
        return taken

    def save(self) -> None:
        """Write the results file atomically (a crash never leaves half a file)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.results, indent=1) + "\n"
        atomic_write(self.out, lambda tmp: tmp.write_text(text))

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def _model(self) -> LoadedModel:
        if self.loaded is None:
            from composer.models import ModelSpec, load_base_model

            self._say(f"loading base model {self.settings.base_model or '(embedded SmolLM2)'} ...")
            self.loaded = load_base_model(ModelSpec(
                name_or_path=self.settings.base_model, device="cpu", dtype=self.settings.dtype,
            ))
        return self.loaded

    def systems(self) -> list[str]:
        """The systems every cell computes, in order."""
        # In-context prompts are ~6x longer than the others: computed last, so a stopped run
        # has the module rows of as many cells as possible.
        names = [ZERO_SHOT, SINGLE]
        if self.oracle:
            names.append(ORACLE)
        if self.settings.own_module == "include":
            names.append(OWN)
        names.append(UNIFORM)
        names += [spec.name for spec in self.compose]
        source = next((spec.name for spec in self.compose
                       if spec.method == "lorahub" and spec.layer_groups == 1), None)
        if self.hydra_heads and source:
            names.append(hydra_system(source))
        names += list(self.hydra_modules)
        return [*names, IN_CONTEXT]

    def run(self, tasks: dict[str, Path], seeds: Sequence[int]) -> None:
        """Compute every missing (task, seed, system), saving after each one."""
        from composer.data import load_examples

        examples = {task: load_examples(path, min_examples=self.settings.shots + 1)
                    for task, path in tasks.items()}
        # Seeds outside: a run stopped early still covers every task.
        for seed in seeds:
            for task in tasks:
                started = time.perf_counter()
                try:
                    self._run_cell(task, examples[task], seed)
                finally:
                    self.results["wall_seconds"] += time.perf_counter() - started
                    self.save()

    def _run_cell(self, task: str, examples: list[Example], seed: int) -> None:
        s = self.settings
        cell = self.results["tasks"].setdefault(task, {}).setdefault(str(seed), {})
        with_choices = all(ex.choices for ex in examples)
        todo = [name for name in self.systems()
                if name not in cell.get("systems", {}) and applies(name, with_choices)]
        if not todo:
            self._say(f"[{task} seed {seed}] done already, skipped")
            return
        few_idx, test_idx = split_task(examples, s.shots, seed, s.test_limit)
        pool = self.results["settings"]["library_pool"]
        names = pick_candidates(pool, s.k, seed, task, s.own_module)
        few = [examples[i] for i in few_idx]
        test = [examples[i] for i in test_idx]
        targets = [ex.target for ex in test]
        has_choices = all(ex.choices for ex in test)
        label, rate = majority_label(targets)
        cell.update({
            "few_shot_indices": few_idx,
            "n_test": len(test),
            "test_targets": targets,
            "has_choices": has_choices,
            "majority": {"label": label, "rate": rate},
            "candidates": names,
        })
        systems = cell.setdefault("systems", {})
        prior = self._prior_cell(task, seed, few_idx, names, targets)
        loaded = self._model()
        candidates = [self._candidate(n) for n in names]

        def record(name: str, result: dict[str, Any], started: float) -> None:
            result["seconds"] = round(time.perf_counter() - started, 2)
            cell_metrics(result, targets, has_choices)
            systems[name] = result
            self.computed.append((task, seed, name))
            mc = result.get("choice_accuracy")
            cut = result.get("prompts_cut")
            self._say(
                f"[{task} seed {seed}] {name}: exact match {result['exact_match']:.3f}"
                + (f", choice accuracy {mc:.3f}" if mc is not None else "")
                + f" ({result['seconds']:.0f} s)"
                + (f"; {cut} prompts over --max-length {s.max_length} tokens lost their "
                   "beginning" if cut else "")
            )
            self.save()

        for name in todo:
            t0 = time.perf_counter()
            old = prior["systems"].get(name) if prior else None
            if old is not None and name != ZERO_SHOT and name not in self.hydra_modules:
                rest = test[len(old["em_correct"]):]
                scored = self._rescore(name, old, seed, loaded, candidates, few, rest, systems)
                record(name, extended_row(old, scored), t0)
            elif name == ZERO_SHOT or name in self.hydra_modules:
                record(name, self._seed_free_system(name, task, examples, test_idx), t0)
            elif name == IN_CONTEXT:
                scored = self._score(loaded, test, demonstrations=few)
                record(name, scored, t0)
            elif name in (SINGLE, UNIFORM, ORACLE, OWN):
                record(name, self._lorahub_system(name, loaded, candidates, few, test, task), t0)
            elif name.startswith("hydra from "):
                source = "compose " + name.removeprefix("hydra from ")
                weights = systems[source]["weights"]
                record(name, self._hydra_compose_system(weights, seed, loaded, candidates, few,
                                                        test), t0)
            else:
                spec = ComposeSpec.parse(name)
                record(name, self._compose_system(spec, seed, loaded, candidates, few, test), t0)

    def _rescore(
        self,
        name: str,
        old: dict[str, Any],
        seed: int,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        rest: Sequence[Example],
        systems: dict[str, Any],
    ) -> dict[str, Any]:
        """Score ``rest`` with a prior row's system rebuilt from what the row recorded.

        No search runs again: compose and uniform rows keep their weights (as recorded, to 6
        decimals), the single module its module; a Hydra composition is rebuilt from its
        source row's weights with the same seed.
        """
        import numpy as np

        from composer.compose import ComposeSession
        from composer.methods import get_method

        if not rest:
            return {"answers": [], "em_correct": [], "mc_picks": []}
        if name == IN_CONTEXT:
            return self._score(loaded, rest, demonstrations=few)
        if name.startswith("hydra from "):
            source = systems["compose " + name.removeprefix("hydra from ")]["weights"]
            return self._hydra_compose_system(source, seed, loaded, candidates, few, rest)
        method, groups = "lorahub", 1
        if name in (SINGLE, ORACLE, OWN):
            ids = [c.repo_id for c in candidates]
            weights = np.eye(len(candidates))[ids.index(old["module"])]
        elif name == UNIFORM:
            weights = np.asarray(old["weights"], dtype=float)
        else:
            spec = ComposeSpec.parse(name)
            method, groups = spec.method, spec.layer_groups
            weights = np.asarray(old["weights"], dtype=float)
        with ComposeSession(loaded, candidates, get_method(method), layer_groups=groups) as session:
            session.set_weights(weights)
            return self._score(loaded, rest)

    def _seed_free_system(
        self, name: str, task: str, examples: Sequence[Example], test_idx: Sequence[int]
    ) -> dict[str, Any]:
        """A system that depends on no seed (zero-shot, a ready Hydra module), from its scores
        per example: each example is scored once for all seeds, and only the examples no
        earlier seed had are scored now. The seeds' test splits overlap, so this saves most
        of the work of these rows."""
        store = self.results.setdefault("per_example", {}).setdefault(task, {})
        scores = store.setdefault(name, {})
        extra: dict[str, Any] = {}
        module: HydraModule | None = None
        if name in self.hydra_modules:
            from composer.hydra.format import load_hydra

            module = load_hydra(self.hydra_modules[name])
            extra = {"heads": module.config.num_heads, "module": str(self.hydra_modules[name])}
        missing = [i for i in test_idx if str(i) not in scores]
        if missing:
            loaded = self._model()
            subset = [examples[i] for i in missing]
            if module is None:
                scored = self._score(loaded, subset)
            else:
                scored = self._score_with_hydra(loaded, module, subset)
            for j, i in enumerate(missing):
                scores[str(i)] = [scored[key][j] for key in ("answers", "em_correct", "mc_picks")]
        rows = [scores[str(i)] for i in test_idx]
        return {
            "answers": [r[0] for r in rows],
            "em_correct": [r[1] for r in rows],
            "mc_picks": [r[2] for r in rows],
            "newly_scored": len(missing),
            **extra,
        }

    def _candidate(self, name: str) -> Candidate:
        from composer.candidates import read_candidate

        folder = Path(self.settings.library) / name
        if not (folder / "adapter_config.json").is_file():
            raise ModuleNotFound(
                f"{folder}: module {name} of this study's frozen pool is gone from --library"
            )
        return read_candidate(folder, repo_id=_module_id(name))

    def _lorahub_system(
        self,
        name: str,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        test: Sequence[Example],
        task: str,
    ) -> dict[str, Any]:
        import numpy as np

        from composer.compose import ComposeSession
        from composer.methods import get_method
        from composer.objectives import get_objective

        chat = self.settings.use_chat_template
        k = len(candidates)
        with ComposeSession(loaded, candidates, get_method("lorahub")) as session:

            def alone(i: int) -> dict[str, Any]:
                """Candidate ``i`` alone (weight 1, the others 0), scored on the test split."""
                session.set_weights(np.eye(k)[i])
                return {**self._score(loaded, test), "module": candidates[i].repo_id}

            if name == UNIFORM:
                weights = np.full(k, 1.0 / k)
                session.set_weights(weights)
                scored = self._score(loaded, test)
                return {**scored, "weights": weights.tolist()}
            if name == SINGLE:
                objective = get_objective("lm")
                objective.prepare(loaded, few, use_chat_template=chat)
                losses = [float(session.losses(objective, np.eye(k)[i : i + 1])[0])
                          for i in range(k)]
                return {**alone(int(np.argmin(losses))),
                        "few_shot_losses": [round(x, 6) for x in losses]}
            if name == OWN:  # the module trained on this task: what composition could recover
                return alone([c.repo_id for c in candidates].index(_module_id(task)))
            # ORACLE: the candidate with the best choice accuracy on the test split itself.
            rows = [alone(i) for i in range(k)]
            accuracies = [sum(p == ex.target for p, ex in zip(row["mc_picks"], test, strict=True))
                          for row in rows]
            return {**rows[int(np.argmax(accuracies))], "test_choice_correct": accuracies}

    def _compose_system(
        self,
        spec: ComposeSpec,
        seed: int,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        test: Sequence[Example],
    ) -> dict[str, Any]:
        from composer.compose import ComposeConfig, ComposeSession, compose
        from composer.methods import get_method
        from composer.search import SearchConfig

        config = ComposeConfig(
            method=spec.method, objective=spec.objective, layer_groups=spec.layer_groups,
            restarts=spec.restarts, start=spec.start,
            search=SearchConfig(budget=self.settings.budget, seed=seed),
            use_chat_template=self.settings.use_chat_template,
        )
        result = compose(loaded, candidates, few, config, progress=False)
        with ComposeSession(loaded, candidates, get_method(spec.method),
                            layer_groups=spec.layer_groups) as session:
            session.set_weights(result.weights)
            scored = self._score(loaded, test)
        out = {
            **scored,
            "weights": [round(float(w), 6) for w in result.weights],
            "few_shot_loss": round(result.loss, 6),
            "few_shot_loss_zero_weights": round(result.zero_loss, 6),
            "search_seconds": round(result.seconds, 2),
        }
        if result.restarts:
            out["restarts"] = [{"seed": r.seed, "cv_loss": round(r.cv_loss, 6)}
                               for r in result.restarts]
        return out

    def _hydra_compose_system(
        self,
        weights: Sequence[float],
        seed: int,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        few: Sequence[Example],
        test: Sequence[Example],
    ) -> dict[str, Any]:
        """A Hydra module from a compose row's weights, router fitted on the few-shot set."""
        from composer.hydra.compose import compose_hydra_module, lora_candidate_from

        chat = self.settings.use_chat_template
        built = compose_hydra_module(
            loaded, [lora_candidate_from(c) for c in candidates], weights, few, None,
            num_heads=min(self.hydra_heads, len(candidates)), use_chat_template=chat, seed=seed,
        )
        scored = self._score_with_hydra(loaded, built.module, test)
        fit = built.fit
        return {
            **scored,
            "heads": built.module.config.num_heads,
            "few_shot_loss_before_fit": round(fit.fewshot_loss_before, 6) if fit else None,
            "few_shot_loss_after_fit": round(fit.fewshot_loss_after, 6) if fit else None,
        }

    def _score(
        self, loaded: LoadedModel, test: Sequence[Example], demonstrations: Sequence[Example] = ()
    ) -> dict[str, Any]:
        return score_test(loaded, test, demonstrations=demonstrations,
                          use_chat_template=self.settings.use_chat_template,
                          max_length=self.settings.max_length)

    def _score_with_hydra(
        self, loaded: LoadedModel, module: HydraModule, test: Sequence[Example]
    ) -> dict[str, Any]:
        from composer.hydra.runtime import attach_hydra

        handle = attach_hydra(loaded.model, module, dtype=loaded.dtype)
        try:
            return self._score(loaded, test)
        finally:
            handle.detach()


def _module_id(name: str) -> str:
    """The repo id a library module is read under (``local/<folder name>``)."""
    return f"local/{name}"


_PER_EXAMPLE = ("answers", "em_correct", "mc_picks")
_DERIVED = ("exact_match", "mc_correct", "choice_accuracy", "mc_labels", "generated_labels",
            "seconds", "newly_scored")


def extended_row(old: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """A prior row over its first examples joined with the scores of the rest (metrics are
    recomputed by the caller); what the prior row recorded (weights, search) is kept."""
    row = {k: v for k, v in old.items() if k not in _PER_EXAMPLE and k not in _DERIVED}
    row.update({k: list(old[k]) + list(scored[k]) for k in _PER_EXAMPLE})
    if scored.get("prompts_cut"):
        row["prompts_cut"] = row.get("prompts_cut", 0) + scored["prompts_cut"]
    row["extended_from"] = len(old["em_correct"])
    row["seconds_before_extension"] = old.get("seconds", 0.0)
    return row


# --------------------------------------------------------------------------- report


def paired_tests(cell: dict[str, Any], name: str) -> dict[str, Any]:
    """McNemar and bootstrap of a system against zero-shot and the majority label, per metric."""
    system = cell["systems"][name]
    targets = cell["test_targets"]
    out: dict[str, Any] = {}
    metrics = [("mc", "mc_correct")] if cell["has_choices"] else []
    metrics.append(("em", "em_correct"))
    for metric, key in metrics:
        mine = [bool(x) for x in system[key]]
        against = {"majority": majority_correct(targets)}
        if name != ZERO_SHOT and ZERO_SHOT in cell["systems"]:
            against[ZERO_SHOT] = [bool(x) for x in cell["systems"][ZERO_SHOT][key]]
        for other, theirs in against.items():
            mc = mcnemar_exact(mine, theirs)
            boot = paired_bootstrap(mine, theirs, resamples=2000, seed=0)
            out[f"{metric} vs {other}"] = {
                "only_this": mc.only_a, "only_other": mc.only_b, "mcnemar_p": mc.p_value,
                "difference": boot.difference, "bootstrap_95": [boot.low, boot.high],
                "bootstrap_p": boot.p_value,
            }
    return out


def task_table(task: str, cells: dict[str, dict[str, Any]], systems: Sequence[str]) -> str:
    """The Markdown table of one task over its seeds (systems missing from a seed are skipped)."""
    seeds = sorted(cells, key=int)
    first = cells[seeds[0]]
    has_choices = first["has_choices"]
    metric = "mc" if has_choices else "em"
    majority = summarize([cells[s]["majority"]["rate"] for s in seeds])
    labels = sorted({cells[s]["majority"]["label"] for s in seeds})
    header = ["system", "exact match", "MC accuracy", "best seed (EM / MC)",
              "labels picked (MC)", "generated answers", "p vs zero-shot", "p vs majority"]
    rows = [[MAJORITY, majority.format(), majority.format() if has_choices else "-",
             f"{majority.high:.2f}", f"{'/'.join(labels)} 100%", "-", "-", "-"]]
    for name in systems:
        done = [s for s in seeds if name in cells[s].get("systems", {})]
        if not done:
            continue
        res = [cells[s]["systems"][name] for s in done]
        em = summarize([r["exact_match"] for r in res])
        mc = summarize([r["choice_accuracy"] for r in res]) if has_choices else None
        best = max(res, key=lambda r: (r.get("choice_accuracy") or 0.0, r["exact_match"]))
        best_txt = f"{best['exact_match']:.2f} / " + (
            f"{best['choice_accuracy']:.2f}" if has_choices else "-")
        picked = _pooled([r.get("mc_labels", {}) for r in res])
        generated = _pooled([label_distribution(_short(a) for a in r["answers"]) for r in res])
        tests = [paired_tests(cells[s], name) for s in done]
        vs_zero = ("-" if name == ZERO_SHOT
                   else _p_values([t[f"{metric} vs {ZERO_SHOT}"] for t in tests
                                   if f"{metric} vs {ZERO_SHOT}" in t]))
        vs_major = _p_values([t[f"{metric} vs majority"] for t in tests])
        rows.append([name, em.format(), mc.format() if mc else "-", best_txt,
                     format_distribution(picked) if picked else "-",
                     format_distribution(generated, top=2), vs_zero or "-", vs_major])
    n_test = sorted({cells[s]["n_test"] for s in seeds})
    head = (f"**{task}** — {len(seeds)} seed(s) ({', '.join(seeds)}), "
            f"{'/'.join(map(str, n_test))} test examples per seed, "
            f"{len(first['candidates'])} candidates; p-values: exact McNemar on "
            f"{'multiple-choice' if has_choices else 'exact-match'} correctness, one per seed; "
            f"↑N/↓N: seeds where the system is significantly (p < {SIGNIFICANT}) better/worse")
    table = head + "\n\n" + markdown_table(header, rows)
    cut = {name: sum(c["systems"][name].get("prompts_cut", 0) for c in cells.values()
                     if name in c.get("systems", {})) for name in systems}
    if any(cut.values()):
        table += ("\n\nPrompts that lost their beginning (over the length limit), over all "
                  "seeds: " + ", ".join(f"{name} {n}" for name, n in cut.items() if n) + ".")
    own = own_module_line(task, cells, systems)
    if own:
        table += "\n\n" + own
    return table


def own_share(weights: Sequence[float], candidates: Sequence[str], own: str) -> float:
    """The task's own module's share of the absolute weight of a compose row (weights laid
    out ``[layer groups, candidates]``, summed over the groups)."""
    k = len(candidates)
    absolute = [abs(w) for w in weights]
    total = sum(absolute)
    mine = sum(absolute[candidates.index(own)::k])
    return mine / total if total else 0.0


def own_module_line(task: str, cells: dict[str, dict[str, Any]], systems: Sequence[str]) -> str:
    """Where the task's own library module was a candidate: how often the few-shot loss picked
    it as the single module, and its share of each compose row's weight (mean over seeds)."""
    seeds = [s for s in sorted(cells, key=int) if task in cells[s]["candidates"]]
    if not seeds:
        return ""
    parts = []
    picked = [cells[s]["systems"][SINGLE]["module"] == _module_id(task)
              for s in seeds if SINGLE in cells[s]["systems"]]
    if picked:
        parts.append(f"the single row picked it in {sum(picked)} of {len(picked)} seed(s)")
    k = len(cells[seeds[0]]["candidates"])
    for name in systems:
        if not name.startswith("compose "):
            continue
        shares = [own_share(cells[s]["systems"][name]["weights"], cells[s]["candidates"], task)
                  for s in seeds if name in cells[s]["systems"]]
        if shares:
            parts.append(f"{name} gave it {summarize(shares).format()} of the weight")
    return (f"The task's own module `{task}` was a candidate in {len(seeds)} seed(s) (an even "
            f"share would be {1 / k:.2f}): " + "; ".join(parts) + ".")


def _p_values(tests: Sequence[dict[str, Any]]) -> str:
    """Per-seed McNemar p-values, then how many seeds are significantly better and worse."""
    if not tests:
        return ""
    ps = "/".join(format_p(t["mcnemar_p"]) for t in tests)
    better = sum(t["mcnemar_p"] < SIGNIFICANT and t["only_this"] > t["only_other"] for t in tests)
    worse = sum(t["mcnemar_p"] < SIGNIFICANT and t["only_this"] < t["only_other"] for t in tests)
    return f"{ps} (↑{better} ↓{worse})"


def _short(answer: str, width: int = 14) -> str:
    """A generated answer for a table cell: quoted, cut to ``width`` characters."""
    text = answer if len(answer) <= width else answer[: width - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def _pooled(distributions: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in distributions:
        for label, n in d.items():
            total[label] = total.get(label, 0) + n
    return label_distribution(label for label, n in total.items() for _ in range(n))


def row_seconds(results: dict[str, Any]) -> float:
    """The time spent computing every row of a results file, whichever process computed it."""
    return sum(
        system.get("seconds", 0.0)
        for cells in results["tasks"].values()
        for cell in cells.values()
        for system in cell.get("systems", {}).values()
    )


def report(results: dict[str, Any], systems: Sequence[str]) -> str:
    """All task tables of a results file, with the settings and wall time."""
    fp = results["settings"]["fingerprint"]
    parts = [
        f"Settings: k = {fp['k']} candidates, {fp['shots']} few-shot examples, budget "
        f"{fp['budget']}, test limit {fp['test_limit'] or 'none'}, chat template "
        f"{fp['use_chat_template']}, dtype {fp['dtype']}, prompts cut to their last "
        f"{fp['max_length']} tokens; library pool of "
        f"{len(results['settings']['library_pool'])} modules; time spent on the rows "
        f"{row_seconds(results) / 60:.1f} min (the sum of every row's own time"
        + (f", rows from {len(results['merged'])} process(es) run side by side merged in"
           if results.get("merged") else "")
        + ").",
    ]
    for task, cells in results["tasks"].items():
        if any(c.get("systems") for c in cells.values()):
            done = {s: c for s, c in cells.items() if c.get("systems")}
            parts.append(task_table(task, done, systems))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks-dir", type=Path, default=ROOT.parent / "shared" / "data" / "bbh",
                   help="folder of JSONL tasks (input, target, optional choices)")
    p.add_argument("--library", type=Path, default=ROOT / "library",
                   help="folder of candidate adapter folders")
    p.add_argument("--base-model", default=None,
                   help="base model folder/GGUF (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run only seeds FIRST..N-1 (another process can take the others; "
                        "join them with --merge)")
    p.add_argument("--k", type=int, default=20, help="candidates per seed")
    p.add_argument("--shots", type=int, default=5, help="few-shot examples per task")
    p.add_argument("--budget", type=int, default=40, help="CMA-ES evaluations per compose")
    p.add_argument("--tasks", default="", help="comma-separated subset of task names")
    p.add_argument("--test-limit", type=int, default=None,
                   help="keep the first N test examples (default: every non-few-shot example)")
    p.add_argument("--methods", default="lorahub,mixed-rank", help="composition methods")
    p.add_argument("--objectives", default=None,
                   help="search objectives (default: every one the composer offers of lm, choice)")
    p.add_argument("--compose", default=None,
                   help="compose rows as METHOD/OBJECTIVE[/gN][/rN][/s] (N layer groups, N "
                        "restarts, s: start from the best single candidate, k + 1 evaluations "
                        "of the budget), comma-separated; default: every --methods x "
                        "--objectives pair")
    p.add_argument("--hydra-heads", type=int, default=0,
                   help="also build a Hydra module with this many heads from the weights of "
                        "the first lorahub compose row without layer groups (router fitted on "
                        "the few-shot examples)")
    p.add_argument("--hydra-module", type=Path, action="append", default=[],
                   help="also score this ready Hydra module folder (repeatable)")
    p.add_argument("--oracle", action="store_true",
                   help="also report the best single module chosen on the test split (k evals)")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--own-module", default="any", choices=OWN_MODULE_MODES,
                   help="the library module named like the task (trained on it, e.g. on the "
                        "held-out splits of `loradex library heldout`): any = drawn like the "
                        "others, include = in every seed's candidates (adds the row 'own module "
                        "alone'), exclude = never a candidate")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help="longest prompt in tokens; longer ones lose their beginning (counted)")
    p.add_argument("--out", type=Path, default=Path("bbh_study_results.json"))
    p.add_argument("--merge", type=Path, action="append", default=[],
                   help="first copy into --out the rows this results file (same settings) has "
                        "and --out lacks, e.g. from a second process (repeatable)")
    p.add_argument("--extend-from", type=Path, default=None,
                   help="a results file of the same settings with a smaller --test-limit: its "
                        "rows are extended to this run's larger test split by scoring only the "
                        "new examples with the systems it recorded (no search runs again)")
    p.add_argument("--markdown", action="store_true", help="print the tables")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: print the tables of what --out holds so far")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Study:
    """Run (or resume) the study; return it (the tests read ``computed``)."""
    from composer.methods import METHODS
    from composer.objectives import OBJECTIVES

    args = parse_args(argv)
    for name, value in (("--seeds", args.seeds), ("--k", args.k), ("--shots", args.shots),
                        ("--budget", args.budget), ("--max-length", args.max_length)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not 0 <= args.first_seed < args.seeds:
        raise ConfigError(f"--first-seed must be in 0..{args.seeds - 1} (--seeds {args.seeds}), "
                          f"got {args.first_seed}")
    if args.test_limit is not None and args.test_limit < 1:
        raise ConfigError(f"--test-limit must be >= 1, got {args.test_limit}")
    if args.hydra_heads < 0:
        raise ConfigError(f"--hydra-heads must be >= 0, got {args.hydra_heads}")
    for folder in args.hydra_module:
        if not (folder / "hydra_config.json").is_file():
            raise ModuleNotFound(f"--hydra-module {folder}: no hydra_config.json there")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods {','.join(unknown)}: known: {', '.join(METHODS)}")
    if args.objectives is None:
        objectives = [o for o in ("lm", "choice") if o in OBJECTIVES]
    else:
        objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown:
            raise ConfigError(f"--objectives {','.join(unknown)}: known: {', '.join(OBJECTIVES)}")
    if args.compose:
        compose = [ComposeSpec.parse(c) for c in args.compose.split(",") if c.strip()]
    else:
        compose = [ComposeSpec(m, o) for m in methods for o in objectives]
    tasks = task_files(args.tasks_dir, [t.strip() for t in args.tasks.split(",") if t.strip()])
    settings = StudySettings(
        tasks_dir=str(args.tasks_dir.resolve()),
        library=str(args.library.resolve()),
        base_model=args.base_model,
        k=args.k,
        shots=args.shots,
        budget=args.budget,
        test_limit=args.test_limit,
        use_chat_template=not args.no_chat_template,
        max_length=args.max_length,
        dtype=args.dtype,
        own_module=args.own_module,
    )
    if args.report_only and not args.out.is_file():
        raise ConfigError(f"--report-only: no results file {args.out}")
    study = Study(settings, args.out, compose=compose, oracle=args.oracle,
                  hydra_heads=args.hydra_heads, hydra_modules=args.hydra_module,
                  quiet=args.quiet, extend_from=args.extend_from)
    for other in args.merge:
        taken = study.merge(other)
        study._say(f"merged {taken} row(s) from {other}")
    if args.report_only:
        print(report(study.results, study.systems()))
        return study
    try:
        study.run(tasks, range(args.first_seed, args.seeds))
    except KeyboardInterrupt:
        study.save()
        print(f"stopped; finished cells are in {args.out}, run again to resume",
              file=sys.stderr)
        raise
    if args.markdown:
        print(report(study.results, study.systems()))
    return study


if __name__ == "__main__":
    try:
        main()
    except LoradexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
