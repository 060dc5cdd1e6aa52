"""The results file of a study: its format, the checks that let a run resume it, merging the
rows of another process's file (``--merge``), taking a smaller study's rows to a larger test
split (``--extend-from``) and the rows that do not depend on the candidates from another study
of the same splits (``--baselines-from``). Every function works on the plain JSON object of
the file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from benchmarks.study.inputs import library_pool
from benchmarks.study.settings import DEFAULT_MAX_LENGTH, IN_CONTEXT, ZERO_SHOT, StudySettings
from loradex.errors import ConfigError
from loradex.files import atomic_write

RESULTS_VERSION = 1
# Rows that depend on the task's split alone, not on the candidates or the search, and the
# settings they depend on: another study of the same splits has them already.
BASELINE_SYSTEMS = (ZERO_SHOT, IN_CONTEXT)
BASELINE_SETTINGS = ("shots", "test_limit", "use_chat_template", "dtype", "base_model",
                     "max_length")


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


def open_results(out: Path, settings: StudySettings) -> dict[str, Any]:
    """The results file at ``out`` to resume (made with the same settings), or a new one whose
    library pool is frozen from ``settings.library`` now."""
    if out.exists():
        results = read_results_file(out, "--out")
        stored = results["settings"]["fingerprint"]
        if stored != settings.fingerprint():
            diff = ", ".join(
                f"{k} {stored.get(k)!r} -> {v!r}"
                for k, v in settings.fingerprint().items() if stored.get(k) != v
            )
            raise ConfigError(
                f"--out {out} was made with other settings ({diff}); "
                "use another --out to start a new study"
            )
        return results
    pool = library_pool(Path(settings.library))
    return {
        "version": RESULTS_VERSION,
        "settings": {
            "fingerprint": settings.fingerprint(),
            "tasks_dir": settings.tasks_dir,
            "library": settings.library,
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


def save_results(out: Path, results: dict[str, Any]) -> None:
    """Write the results file atomically (a crash never leaves half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(out, lambda tmp: tmp.write_text(text))


def open_prior(path: Path, settings: StudySettings) -> dict[str, Any]:
    """The results file a larger test split extends (``--extend-from``), checked."""
    prior = read_results_file(path, "--extend-from")
    theirs = dict(prior["settings"]["fingerprint"])
    mine = settings.fingerprint()
    limit = theirs.pop("test_limit", None)
    if theirs != {k: v for k, v in mine.items() if k != "test_limit"}:
        raise ConfigError(f"--extend-from {path}: made with other settings than the test limit")
    if limit is None or (mine["test_limit"] is not None and mine["test_limit"] <= limit):
        raise ConfigError(
            f"--extend-from {path}: its test limit is {limit}; extending needs a larger "
            "--test-limit, or none (every non-few-shot example)"
        )
    return prior


def adopt_prior(results: dict[str, Any], prior: dict[str, Any]) -> None:
    """Take the prior's frozen library pool, and its per-example scores of seed-free rows."""
    pool = prior["settings"]["library_pool"]
    if not results["tasks"]:
        results["settings"]["library_pool"] = pool
    elif results["settings"]["library_pool"] != pool:
        raise ConfigError("--extend-from: the results file holds another library pool")
    results["settings"]["extends"] = prior["settings"]["fingerprint"]["test_limit"]
    take_per_example(results, prior)


def take_per_example(results: dict[str, Any], other: dict[str, Any]) -> None:
    """Add the per-example scores of seed-free rows that ``other`` has and ``results`` lacks."""
    for task, systems in other.get("per_example", {}).items():
        mine = results.setdefault("per_example", {}).setdefault(task, {})
        for name, scores in systems.items():
            for index, row in scores.items():
                mine.setdefault(name, {}).setdefault(index, row)


def prior_cell(
    prior: dict[str, Any] | None,
    task: str,
    seed: int,
    few_idx: list[int],
    names: list[str],
    targets: list[str],
) -> dict[str, Any] | None:
    """The prior's cell of (task, seed) when its split is a prefix of this one's."""
    if prior is None:
        return None
    cell = prior["tasks"].get(task, {}).get(str(seed))
    if not cell or not cell.get("systems"):
        return None
    old = cell["test_targets"]
    if (cell["few_shot_indices"] != few_idx or cell["candidates"] != names
            or targets[: len(old)] != old):
        raise ConfigError(
            f"--extend-from: {task} seed {seed} has another split or candidates there"
        )
    return cell


def open_baselines(path: Path, settings: StudySettings) -> dict[str, Any]:
    """A results file to take the candidate-free rows from (``--baselines-from``), checked:
    made with the same settings those rows depend on (the candidates and search may differ)."""
    other = read_results_file(path, "--baselines-from")
    theirs, mine = other["settings"]["fingerprint"], settings.fingerprint()
    diff = ", ".join(f"{k} {theirs.get(k)!r} -> {mine[k]!r}"
                     for k in BASELINE_SETTINGS if theirs.get(k) != mine[k])
    if diff:
        raise ConfigError(f"--baselines-from {path}: made with other settings ({diff})")
    return other


def take_baselines(
    results: dict[str, Any],
    other: dict[str, Any],
    source: str,
    task: str,
    seed: int,
    few_idx: list[int],
    targets: list[str],
) -> int | None:
    """Copy the candidate-free rows ``other`` has for (task, seed) and ``results`` lacks; the
    number copied, or None when ``other``'s cell has another split (a different task file)."""
    cell = other["tasks"].get(task, {}).get(str(seed))
    if not cell or not cell.get("systems"):
        return 0
    if cell.get("few_shot_indices") != few_idx or cell.get("test_targets") != targets:
        return None
    here = results["tasks"].setdefault(task, {}).setdefault(str(seed), {})
    if here.setdefault("few_shot_indices", few_idx) != few_idx:
        return None
    for key in ("n_test", "test_targets", "has_choices", "majority"):  # the split's, as there
        if key in cell:
            here.setdefault(key, cell[key])
    systems = here.setdefault("systems", {})
    taken = 0
    for name in BASELINE_SYSTEMS:
        row = cell["systems"].get(name)
        if row is not None and name not in systems:
            systems[name] = {**row, "copied_from": source}
            taken += 1
    return taken


def merge_results(results: dict[str, Any], other_path: Path) -> int:
    """Take into ``results`` the rows another results file of the same settings has and it
    lacks; return the number of rows taken (the caller saves)."""
    other = read_results_file(other_path, "--merge")
    mine, theirs = results["settings"], other.get("settings", {})
    for key in ("fingerprint", "library_pool"):
        if mine[key] != theirs.get(key):
            what = key.replace("_", " ")
            raise ConfigError(f"--merge {other_path}: made with another {what}")
    taken = 0
    for task, cells in other.get("tasks", {}).items():
        for seed, cell in cells.items():
            here = results["tasks"].setdefault(task, {}).setdefault(seed, {})
            # A cell may hold copied baselines before its candidates are chosen (here or
            # there): compare what both have.
            if here.get("systems") and any(
                here.get(key) is not None and cell.get(key) is not None
                and here.get(key) != cell.get(key)
                for key in ("few_shot_indices", "candidates")
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
    take_per_example(results, other)
    # Which files rows came from. Their wall times are not added: a file started as a copy
    # of this one holds this one's time too; the report sums the rows' own times instead.
    merged = results.setdefault("merged", {})
    merged[str(other_path.resolve())] = merged.get(str(other_path.resolve()), 0) + taken
    return taken
