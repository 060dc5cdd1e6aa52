"""What a study is run with: its settings (the fingerprint of a results file), the names of its
rows (systems) and the compose rows' specs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer.models import base_model_name_for
from loradex.errors import ConfigError

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
    # How each seed's candidates are chosen (composer.selection): random, retrieve, retrieve+screen.
    select: str = "random"
    screen_pool: int = 20

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
            # Only when not random, so results files written before selection existed resume.
            **({"select": self.select} if self.select != "random" else {}),
            **({"screen_pool": self.screen_pool} if self.select == "retrieve+screen" else {}),
        }


def compose_system(method: str, objective: str, layer_groups: int = 1, restarts: int = 1,
                   start: str = "zero", guard: str = "off") -> str:
    """The name of a compose row, e.g. ``compose lorahub/lm`` or ``compose lorahub/choice/g3``
    (``/s``: the search starts from the best single candidate; ``/cv``: the cross-validation
    guard keeps the start point unless the search beats it)."""
    name = f"compose {method}/{objective}"
    if layer_groups > 1:
        name += f"/g{layer_groups}"
    if restarts > 1:
        name += f"/r{restarts}"
    if start == "best-single":
        name += "/s"
    if guard == "cv":
        name += "/cv"
    return name


@dataclass(frozen=True)
class ComposeSpec:
    """One compose row: ``method/objective[/gN][/rN][/s][/cv]`` (N layer groups, N restarts,
    start from the best single candidate, cross-validation guard)."""

    method: str
    objective: str
    layer_groups: int = 1
    restarts: int = 1
    start: str = "zero"
    guard: str = "off"

    @property
    def name(self) -> str:
        """The row's name in a results file and its tables."""
        return compose_system(self.method, self.objective, self.layer_groups, self.restarts,
                              self.start, self.guard)

    @classmethod
    def parse(cls, spec: str) -> ComposeSpec:
        """``lorahub/choice/g3/r3/s/cv`` -> its spec; :class:`ConfigError` naming a bad part."""
        from composer.methods import METHODS
        from composer.objectives import OBJECTIVES

        parts = spec.strip().removeprefix("compose ").split("/")
        if len(parts) < 2:
            raise ConfigError(f"--compose {spec!r}: expected METHOD/OBJECTIVE[/gN][/rN][/s][/cv]")
        method, objective, *extra = parts
        if method not in METHODS:
            raise ConfigError(f"--compose {spec!r}: unknown method; known: {', '.join(METHODS)}")
        if objective not in OBJECTIVES:
            raise ConfigError(
                f"--compose {spec!r}: unknown objective; known: {', '.join(OBJECTIVES)}"
            )
        options = {"g": 1, "r": 1}
        start, guard = "zero", "off"
        for part in extra:
            if part == "s":
                start = "best-single"
            elif part == "cv":
                guard = "cv"
            elif part[:1] not in options or not part[1:].isdigit() or int(part[1:]) < 1:
                raise ConfigError(f"--compose {spec!r}: {part!r} is not gN, rN (N >= 1), s or cv")
            else:
                options[part[0]] = int(part[1:])
        return cls(method, objective, options["g"], options["r"], start, guard)


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


def module_id(name: str) -> str:
    """The repo id a library module is read under (``local/<folder name>``)."""
    return f"local/{name}"
