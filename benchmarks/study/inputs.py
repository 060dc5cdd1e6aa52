"""What a study reads and draws: the task files, the library pool, each seed's few-shot/test
split and its candidates."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.study.settings import OWN_MODULE_MODES
from loradex.errors import ConfigError, InvalidDataFile, ModuleNotFound

if TYPE_CHECKING:
    from composer.data import Example


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
