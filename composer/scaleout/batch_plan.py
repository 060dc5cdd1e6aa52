"""The plan of ``loradex compose-batch``: a YAML (or JSON) file naming, for each task, its
few-shot examples, its candidates (adapter folders or Hub ids) or a registry query, and the
composition settings; ``defaults`` apply to every task unless the task sets its own.

```yaml
base_model: null            # one base model for the batch (null: the embedded SmolLM2)
out_dir: composed           # a task's module goes to out_dir/NAME unless it names an out
defaults: {method: lorahub, budget: 40, seed: 0}   # also start, guard (compose --start/--guard)
tasks:
  - name: past-tense
    examples: few/past_tense.jsonl
    candidates: [library/linguistic_mappings__plural, library/tense]
  - name: fever
    examples: few/fever.jsonl
    registry: {k: 5, select: random, task: fact-checking}
    holdout: test/fever.jsonl
```

Paths are relative to the plan's folder. Every task becomes one
:class:`~composer.pipeline.ComposeRequest`; a bad plan is refused with the file, the task and
the key named, before anything is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer.compose import ComposeConfig
from composer.models import ModelSpec
from composer.pipeline import ComposeRequest, RegistrySelection
from composer.search import SearchConfig
from loradex.errors import ConfigError

# The settings a task (or the defaults) may give, and their types.
SETTINGS: dict[str, type] = {
    "method": str, "objective": str, "budget": int, "seed": int, "layer_groups": int,
    "restarts": int, "start": str, "guard": str, "chat_template": bool, "optimizer": str,
}
TASK_KEYS = {"name", "examples", "out", "candidates", "registry", "holdout", *SETTINGS}
REGISTRY_KEYS = {"k", "select", "text", "task", "tags", "rank", "screen_pool"}
PLAN_KEYS = {"base_model", "dtype", "device", "out_dir", "defaults", "tasks"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BatchTask:
    """One task of the plan: its name and the compose request made of it."""

    name: str
    request: ComposeRequest


@dataclass(frozen=True)
class BatchPlan:
    """A checked plan: the base model every worker holds and the tasks in file order."""

    path: Path
    model: ModelSpec
    tasks: tuple[BatchTask, ...]


def load_plan(path: Path, *, index: bool = True) -> BatchPlan:
    """Read and check a plan file (``index``: each result goes into the registry)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"plan {path}: cannot read it ({' '.join(str(exc).split())})") from None

    def fail(message: str) -> ConfigError:
        return ConfigError(f"plan {path}: {message}")

    if not isinstance(data, dict):
        raise fail("not a mapping with 'tasks'")
    _no_unknown(data, PLAN_KEYS, "", fail)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise fail("'defaults' must be a mapping")
    _no_unknown(defaults, set(SETTINGS), "defaults: ", fail)
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise fail("'tasks' must be a non-empty list")
    root = path.resolve().parent
    out_dir = root / str(data.get("out_dir") or "composed")
    base = _opt_str(data.get("base_model"), "base_model", fail)
    if base is not None and (root / base).exists():  # a folder or GGUF beside the plan
        base = str(root / base)
    model = ModelSpec(name_or_path=base,
                      device=str(data.get("device") or "auto"),
                      dtype=str(data.get("dtype") or "auto"))
    parsed, names = [], set()
    for i, entry in enumerate(tasks):
        if not isinstance(entry, dict):
            raise fail(f"task {i + 1} is not a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise fail(f"task {i + 1}: 'name' must be letters, digits, '.', '_' or '-'")
        if name in names:
            raise fail(f"task {name}: named twice")
        names.add(name)
        where = f"task {name}: "
        _no_unknown(entry, TASK_KEYS, where, fail)
        settings = {**defaults, **{k: v for k, v in entry.items() if k in SETTINGS}}
        for key, value in settings.items():
            if not isinstance(value, SETTINGS[key]) or (SETTINGS[key] is int
                                                        and isinstance(value, bool)):
                raise fail(f"{where}'{key}' must be {SETTINGS[key].__name__}, got {value!r}")
        config = _config(settings)
        try:
            config.make_method()  # a bad method, start or guard, named before any work
        except ConfigError as bad:
            raise fail(f"{where}{bad}") from None
        parsed.append(BatchTask(name, ComposeRequest(
            examples=_file(root, entry.get("examples"), where + "'examples'", fail),
            out=root / entry["out"] if entry.get("out") else out_dir / name,
            candidates=_candidates(root, entry, where, fail),
            model=model,
            compose=config,
            holdout=(_file(root, entry["holdout"], where + "'holdout'", fail)
                     if entry.get("holdout") else None),
            name=name,
            index=index,
        )))
    return BatchPlan(path, model, tuple(parsed))


def _config(settings: dict[str, Any]) -> ComposeConfig:
    search = SearchConfig(**{k: settings[k] for k in ("budget", "seed", "optimizer")
                             if k in settings})
    kwargs = {k: settings[k] for k in ("method", "layer_groups", "restarts", "start", "guard")
              if k in settings}
    return ComposeConfig(objective=settings.get("objective", "auto"), search=search,
                         use_chat_template=settings.get("chat_template", True), **kwargs)


def _candidates(root: Path, entry: dict[str, Any], where: str,
                fail: Any) -> tuple[str, ...] | RegistrySelection:
    listed, query = entry.get("candidates"), entry.get("registry")
    if (listed is None) == (query is None):
        raise fail(f"{where}give either 'candidates' or 'registry'")
    if query is not None:
        if not isinstance(query, dict):
            raise fail(f"{where}'registry' must be a mapping")
        _no_unknown(query, REGISTRY_KEYS, where + "registry: ", fail)
        query = dict(query)
        if "tags" in query:
            query["tags"] = tuple(query["tags"])
        return RegistrySelection(**query)
    if not isinstance(listed, list) or not listed or not all(isinstance(c, str) for c in listed):
        raise fail(f"{where}'candidates' must be a non-empty list of folders or Hub ids")
    # A folder is relative to the plan; anything else is a Hub id (ID[@REV]).
    return tuple(str(root / c) if (root / c).is_dir() else c for c in listed)


def _file(root: Path, value: Any, what: str, fail: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise fail(f"{what} must name a file")
    path = root / value
    if not path.is_file():
        raise fail(f"{what}: no such file {path}")
    return path


def _opt_str(value: Any, what: str, fail: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise fail(f"'{what}' must be a string")
    return value


def _no_unknown(mapping: dict[str, Any], known: set[str], where: str, fail: Any) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise fail(f"{where}unknown key(s) {', '.join(map(str, unknown))} "
                   f"(known: {', '.join(sorted(known))})")
