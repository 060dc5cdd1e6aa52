"""Compose candidate LoRA modules into a new one for a task, from a few examples (LoraHub).

:class:`ComposeSession` holds the loaded base model with the candidates' tensors stacked once on
the device and the grouped LoRA runtime attached; it turns weight vectors into losses.
:func:`compose` runs the search and :func:`write_composition` writes the PEFT folder, its card
with provenance, ``loradex_provenance.json`` and a PNG of the loss curve.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from composer.adapter_io import lora_config_dict, write_adapter_folder
from composer.candidates import Candidate, load_layers
from composer.cards import hub_front_matter, render_card, settings_table
from composer.crossval import (
    GUARDS,
    RESTART_PICKS,
    GuardRecord,
    Picked,
    RestartRecord,
    cross_validated_search,
    cv_folds,
    prepared,
    resolved_guard,
)
from composer.data import Example
from composer.lora_runtime import attached
from composer.methods import CompositionMethod, ExportedLora, build_bank, get_method
from composer.metrics import EvalConfig, evaluate_examples
from composer.models import LoadedModel
from composer.objectives import Objective
from composer.search import (
    SearchConfig,
    SearchResult,
    generation_size,
    nevergrad_name,
    search_weights,
)
from loradex import __version__
from loradex.errors import ConfigError

# Where the weight search starts: at zero (the paper), or at the best of zero and each
# candidate alone (k + 1 evaluations of the budget), so the search refines the best single
# module instead of having to find it from the middle.
STARTS = ("zero", "best-single")


@dataclass(frozen=True)
class ComposeConfig:
    """Settings of one composition run."""

    method: str = field(default="lorahub", metadata={"help": "lorahub or mixed-rank"})
    svd_rank: int | None = field(
        default=None, metadata={"help": "mixed-rank only: compress the result to this rank"}
    )
    objective: str = field(
        default="lm", metadata={"help": "search objective: lm, choice or choice-normalized"}
    )
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"help": "search"})
    batched_population: bool = field(
        default=False, metadata={"help": "evaluate a whole CMA-ES generation in one forward"}
    )
    use_chat_template: bool = field(default=True, metadata={"help": "render with chat template"})
    layer_groups: int = field(
        default=1,
        metadata={"help": "one weight per candidate per block of consecutive layers (1 = paper)"},
    )
    restarts: int = field(
        default=1,
        metadata={"help": "searches from seeds seed..seed+N-1, picked by cross-validation"},
    )
    restart_pick: str = field(
        default="best",
        metadata={"help": "best: the seed with the lowest held-out loss; average: mean weights"},
    )
    start: str = field(
        default="zero",
        metadata={"help": "zero (the paper) or best-single: first try zero and each candidate "
                          "alone (k + 1 evaluations of the budget), search from the best"},
    )
    guard: str = field(
        default="off",
        metadata={"help": "off (the paper), cv: keep the start point unless the search beats "
                          "it in cross-validation on the examples (folds x more searches), or "
                          "auto: cv when starting from the best single candidate"},
    )

    def make_method(self) -> CompositionMethod:
        """The configured composition method (raises ConfigError for bad combinations)."""
        if self.svd_rank is not None and self.method != "mixed-rank":
            raise ConfigError("--svd-rank only applies to --method mixed-rank")
        if self.layer_groups < 1:
            raise ConfigError(f"--layer-groups must be >= 1, got {self.layer_groups}")
        if self.restarts < 1:
            raise ConfigError(f"--restarts must be >= 1, got {self.restarts}")
        if self.restart_pick not in RESTART_PICKS:
            raise ConfigError(f"--restart-pick must be one of {', '.join(RESTART_PICKS)}")
        if self.start not in STARTS:
            raise ConfigError(f"--start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if self.guard not in GUARDS:
            raise ConfigError(f"--guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")
        options = {"svd_rank": self.svd_rank} if self.method == "mixed-rank" else {}
        return get_method(self.method, **options)

    def check_budget(self, n_candidates: int) -> None:
        """Refuse a ``best-single`` start whose first points would use the whole budget."""
        if self.start == "best-single" and self.search.budget <= n_candidates + 1:
            raise ConfigError(
                f"--start best-single first tries {n_candidates + 1} points (zero and each of "
                f"{n_candidates} candidates alone); --budget {self.search.budget} must be larger"
            )


class ComposeSession:
    """A base model with the candidates attached through the grouped LoRA runtime.

    Use as a context manager; on exit the base model is exactly as it was.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        candidates: Sequence[Candidate],
        method: CompositionMethod,
        *,
        max_groups: int = 1,
        layer_groups: int = 1,
    ) -> None:
        self.loaded = loaded
        self.candidates = list(candidates)
        self.method = method
        layers = [load_layers(c) for c in candidates]
        self.bank = build_bank(
            method, candidates, layers, max_groups=max_groups, device=loaded.device,
            dtype=loaded.dtype, layer_groups=layer_groups,
        )
        self.layer_groups = layer_groups
        self.max_groups = max_groups
        self._stack = ExitStack()
        self._wrapped: dict[str, Any] = {}
        self._groups = 0

    def __enter__(self) -> ComposeSession:
        self._wrapped = self._stack.enter_context(
            attached(self.loaded.model, self.bank.layer_paths)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._wrapped = {}

    @property
    def n(self) -> int:
        """Number of candidates."""
        return len(self.candidates)

    @property
    def dim(self) -> int:
        """Length of a weight vector: one weight per candidate (per layer group)."""
        return self.bank.dim

    def per_candidate(self, weights: Sequence[float] | np.ndarray) -> np.ndarray:
        """A weight vector giving candidate ``i`` weight ``weights[i]`` in every layer group."""
        return np.tile(np.asarray(weights, dtype=np.float64), self.layer_groups)

    def set_weights(self, weights: np.ndarray) -> None:
        """Make the live LoRA(s) the composition of ``weights`` (``[dim]`` or ``[g, dim]``)."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        g = w.shape[0]
        if g > self.max_groups:
            raise ValueError(f"{g} weight groups but the session holds {self.max_groups}")
        if g != self._groups:
            self.bank.bind(self._wrapped, g)
            self._groups = g
        self.bank.set_weights(torch.from_numpy(w).to(self.loaded.device))

    def losses(self, objective: Objective, weights: np.ndarray) -> np.ndarray:
        """The objective's loss for each row of ``weights [g, dim]``."""
        w = np.atleast_2d(weights)
        self.set_weights(w)
        return objective.losses(w.shape[0]).numpy()


@dataclass
class HoldoutRow:
    """Held-out metrics for one setting of the weights."""

    label: str
    loss: float
    exact_match: float | None
    choice_accuracy: float | None


@dataclass
class ComposeResult:
    """Everything a composition run found."""

    weights: np.ndarray
    search: SearchResult  # the search whose curve is plotted (the picked seed's)
    zero_loss: float
    exported: ExportedLora
    candidates: list[Candidate]
    config: ComposeConfig
    seconds: float
    population: int  # points per batched evaluation (1 = sequential)
    loss: float  # few-shot loss at ``weights``
    objective: float  # loss + L1 penalty at ``weights``
    holdout: list[HoldoutRow] = field(default_factory=list)
    restarts: list[RestartRecord] = field(default_factory=list)
    folds: int = 0
    guard: GuardRecord | None = None
    # How the candidates were chosen (composer.selection), recorded in the provenance.
    selection: dict[str, Any] | None = None

    def weights_by_group(self) -> np.ndarray:
        """The weights as ``[layer_groups, candidates]``."""
        return np.asarray(self.weights).reshape(self.config.layer_groups, len(self.candidates))

    def parent_weights(self) -> np.ndarray:
        """One weight per candidate: its mean over the layer groups."""
        return self.weights_by_group().mean(axis=0)


def compose(
    loaded: LoadedModel,
    candidates: Sequence[Candidate],
    examples: Sequence[Example],
    config: ComposeConfig | None = None,
    *,
    holdout: Sequence[Example] = (),
    progress: bool = True,
) -> ComposeResult:
    """Search the candidates' weights on ``examples``; return the composed module.

    With ``config.restarts`` = N > 1 the search runs from seeds ``seed .. seed+N-1``. Each seed
    is scored by cross-validation on the few-shot examples (leave-one-out for up to 5
    examples, else 5 folds: search on the rest, score the held-out loss), which costs N x folds
    searches. ``restart_pick`` ``best`` then searches all examples with the seed of the lowest
    held-out loss; ``average`` searches all examples with every seed and averages the weights.

    With ``config.guard`` ``cv`` the same cross-validation also scores the search's start point
    (zero weights, or the best single candidate of each fold), and the result is that start
    point on all examples unless the search's mean held-out loss is lower
    (:mod:`composer.crossval`).
    """
    config = config or ComposeConfig()
    method = config.make_method()
    config = replace(config, guard=resolved_guard(config.guard, config.start, len(examples)))
    method.check(candidates, base_model=loaded.name)
    config.check_budget(len(candidates))
    objective = prepared(loaded, config, examples)
    search_cfg = config.search
    search_cfg.validate()
    if config.batched_population and search_cfg.population == 1:
        search_cfg = replace(search_cfg, population=0)
    dim = len(candidates) * config.layer_groups
    population = generation_size(search_cfg, dim)
    cross_validate = config.restarts > 1 or config.guard == "cv"
    folds = cv_folds(len(examples)) if cross_validate else []

    started = time.perf_counter()
    with ComposeSession(
        loaded, candidates, method, max_groups=population, layer_groups=config.layer_groups
    ) as session:
        zero_loss = float(session.losses(objective, np.zeros((1, session.dim)))[0])

        first = start_points(config.start, len(candidates), config.layer_groups,
                             search_cfg.bound)

        def run(obj: Objective, seed: int, desc: str) -> SearchResult:
            return search_weights(
                lambda points: session.losses(obj, points), session.dim,
                replace(search_cfg, seed=seed), first_points=first, progress=progress,
                desc=desc,
            )

        if cross_validate:
            picked = cross_validated_search(session, run, loaded, config, examples, objective,
                                            0 if first is None else len(first), zero_loss)
        else:
            picked = Picked.of(run(objective, search_cfg.seed, "compose"))
        result, weights = picked.search, picked.weights
        seconds = time.perf_counter() - started
        rows = (
            holdout_report(session, holdout, weights, config, progress=progress)
            if holdout
            else []
        )
        exported = session.bank.export(weights)
    return ComposeResult(
        weights=np.asarray(weights),
        search=result,
        zero_loss=zero_loss,
        exported=exported,
        candidates=list(candidates),
        config=config,
        seconds=seconds,
        population=population,
        loss=picked.loss,
        objective=picked.objective,
        holdout=rows,
        restarts=picked.records if config.restarts > 1 else [],
        folds=len(folds),
        guard=picked.guard,
    )


def start_points(start: str, k: int, layer_groups: int, bound: float) -> np.ndarray | None:
    """The points a search tries first: none for ``zero``; for ``best-single`` zero and each
    of the ``k`` candidates alone (weight 1, or the bound if smaller, in every layer group)."""
    if start == "zero":
        return None
    unit = np.eye(k) * min(1.0, bound)
    return np.vstack([np.zeros((1, k * layer_groups)), np.tile(unit, layer_groups)])


def holdout_report(
    session: ComposeSession,
    examples: Sequence[Example],
    weights: np.ndarray,
    config: ComposeConfig,
    *,
    progress: bool = True,
) -> list[HoldoutRow]:
    """Held-out loss and accuracy for zero weights, the result and each single candidate."""
    from tqdm.auto import tqdm

    settings: list[tuple[str, np.ndarray]] = [
        ("zero weights (base model)", np.zeros(session.dim)),
        ("composed", np.asarray(weights)),
    ]
    for i, cand in enumerate(session.candidates):
        one = np.zeros(session.n)
        one[i] = 1.0
        settings.append((f"only {cand.repo_id}", session.per_candidate(one)))
    eval_cfg = EvalConfig(use_chat_template=config.use_chat_template)
    rows = []
    for label, w in tqdm(settings, desc="holdout", disable=not progress):
        session.set_weights(w[None])
        report = evaluate_examples(session.loaded, examples, eval_cfg, progress=False)
        rows.append(HoldoutRow(label, report.loss, report.exact_match, report.choice_accuracy))
    return rows


# --------------------------------------------------------------------------- writing


def lineage(result: ComposeResult) -> list[dict[str, Any]]:
    """One provenance entry per candidate: repo id, revision, weight, role."""
    return [
        {
            "repo_id": c.repo_id,
            "revision": c.revision,
            "weight": round(float(w), 8),
            "role": "parent",
        }
        for c, w in zip(result.candidates, result.parent_weights(), strict=True)
    ]


def provenance(
    result: ComposeResult,
    loaded: LoadedModel,
    *,
    examples_file: str | None,
    examples_sha256: str | None,
    n_examples: int,
) -> dict[str, Any]:
    """The machine-readable provenance of a composed module (card YAML ``loradex:`` block)."""
    s = result.config.search
    block: dict[str, Any] = {
        "kind": "lora",
        "version": __version__,
        "composition": {
            "method": result.config.make_method().describe(),
            "objective": result.config.objective,
            "optimizer": s.optimizer,
            "nevergrad_optimizer": nevergrad_name(
                s.optimizer, len(result.candidates) * result.config.layer_groups),
            "start": result.config.start,
            "guard": result.config.guard,
            "budget": s.budget,
            "seed": s.seed,
            "l1": s.l1,
            "l1_form": s.l1_form,
            "bound": s.bound,
            "population": result.population,
            "layer_groups": result.config.layer_groups,
            "chat_template": result.config.use_chat_template,
            "few_shot_file": Path(examples_file).name if examples_file else None,
            "few_shot_sha256": examples_sha256,
            "few_shot_examples": n_examples,
            "loss_zero_weights": round(result.zero_loss, 6),
            "loss": round(result.loss, 6),
            "objective_value": round(result.objective, 6),
            "loss_curve": [round(v, 6) for v in result.search.curve],
            "seconds": round(result.seconds, 2),
            **{k: v for k, v in result.exported.info.items() if k != "use_rslora"},
        },
        "lineage": lineage(result),
    }
    if result.config.layer_groups > 1:
        block["composition"]["layer_group_weights"] = [
            [round(float(w), 8) for w in row] for row in result.weights_by_group()
        ]
    if result.restarts:
        block["composition"]["restarts"] = {
            "pick": result.config.restart_pick,
            "folds": result.folds,
            "runs": [
                asdict(r) | {"weights": [round(w, 8) for w in r.weights] if r.weights else None}
                for r in result.restarts
            ],
        }
    if result.guard is not None:
        block["composition"]["guard_cv"] = {"folds": result.folds,
                                            **_rounded(asdict(result.guard))}
    if result.selection is not None:
        block["selection"] = result.selection
    if loaded.gguf_file:
        block["base_model_file"] = Path(loaded.gguf_file).name
    if result.holdout:
        block["holdout"] = [asdict(r) for r in result.holdout]
    return block


def loss_plot_png(result: ComposeResult) -> bytes:
    """A PNG of the objective per evaluation and the best so far."""
    # A Figure of its own, not pyplot: drawing leaves the caller's matplotlib backend and
    # figure list as they were.
    from matplotlib.figure import Figure

    steps = [h["step"] for h in result.search.history]
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.subplots()
    ax.plot(steps, [h["objective"] for h in result.search.history], ".", alpha=0.6,
            label="each evaluation")
    ax.plot(steps, [h["best_so_far"] for h in result.search.history], "-", label="best so far")
    ax.axhline(result.zero_loss, color="grey", linestyle="--", linewidth=1,
               label="zero weights (base)")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("loss + L1 penalty")
    s = result.config.search
    ax.set_title(f"{result.config.method} / {s.optimizer}, {len(result.candidates)} candidates")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_composition(
    result: ComposeResult,
    loaded: LoadedModel,
    out: str | Path,
    *,
    examples_file: str | None = None,
    examples_sha256: str | None = None,
    n_examples: int = 0,
    name: str | None = None,
    license: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the composed module as a PEFT adapter folder with card, provenance and plot."""
    out = Path(out)
    exported = result.exported
    config = lora_config_dict(
        base_model=loaded.name,
        rank=exported.rank,
        alpha=exported.alpha,
        target_modules=list(result.candidates[0].target_modules),
        task_type="SEQ_2_SEQ_LM" if loaded.is_seq2seq else "CAUSAL_LM",
    )
    if exported.info.get("use_rslora"):
        config["use_rslora"] = True
    block = provenance(
        result, loaded, examples_file=examples_file, examples_sha256=examples_sha256,
        n_examples=n_examples,
    )
    front = hub_front_matter(
        loaded, library_name="peft", license=license or loaded.module_license,
        tags=["loradex", "lora", "peft", "composed", result.config.method],
    )
    front["loradex"] = block
    card = render_card(front, name or out.name, _card_body(result, block))
    extras = {
        "loradex_provenance.json": (json.dumps(block, indent=2) + "\n").encode(),
        "loss_curve.png": loss_plot_png(result),
    }
    return write_adapter_folder(
        out, config=config, tensors=exported.tensors, card=card, extra_files=extras,
        overwrite=overwrite,
    )


def _rounded(record: dict[str, Any]) -> dict[str, Any]:
    def r(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 6)
        return [r(x) for x in v] if isinstance(v, list) else v

    return {k: r(v) for k, v in record.items()}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _card_body(result: ComposeResult, block: dict[str, Any]) -> str:
    comp = block["composition"]
    lines = [
        f"A LoRA module composed by loradex from {len(result.candidates)} modules with the "
        f"`{result.config.method}` method, searched with nevergrad `{comp['optimizer']}` over "
        f"{comp['budget']} evaluations on {comp['few_shot_examples']} examples"
        + (", starting from the best of zero weights and each parent alone "
           f"({len(result.candidates) + 1} of the evaluations)."
           if result.config.start == "best-single" else "."),
        "",
        f"Few-shot loss: {comp['loss_zero_weights']:.4f} with zero weights, "
        f"{comp['loss']:.4f} composed.",
        "",
        "![loss curve](loss_curve.png)",
        "",
        "## Parents",
        "",
    ]
    if result.config.layer_groups > 1:
        lines += [
            f"Weights were searched per candidate for each of {result.config.layer_groups} "
            "groups of consecutive layers; the table shows their mean, the provenance block "
            "`layer_group_weights` all of them.",
            "",
        ]
    lines += ["| module | revision | weight |", "|---|---|---|"]
    for entry in block["lineage"]:
        revision = entry["revision"] or "-"
        lines.append(f"| {entry['repo_id']} | {revision} | {entry['weight']:+.4f} |")
    if result.restarts:
        lines += [
            "",
            "## Restarts",
            "",
            f"Each seed was scored by {result.folds}-fold cross-validation on the few-shot "
            f"examples; pick: {result.config.restart_pick}.",
            "",
            "| seed | held-out loss (mean of folds) | few-shot loss (all examples) |",
            "|---|---|---|",
        ]
        for rec in result.restarts:
            lines.append(f"| {rec.seed} | {rec.cv_loss:.4f} | {_fmt(rec.loss)} |")
    if result.guard is not None:
        g = result.guard
        start = "the best single parent" if result.config.start == "best-single" else "zero weights"
        lines += [
            "",
            "## Guard",
            "",
            f"The search and its start point ({start}) were scored by {result.folds}-fold "
            f"cross-validation on the few-shot examples: held-out loss {g.search_cv_loss:.4f} "
            f"searched, {g.start_cv_loss:.4f} at the start. Kept: **{g.kept}**"
            + (" (the weights above are the start point; the loss curve is the search's)."
               if g.kept == "start" else "."),
        ]
    settings = {
        k: v for k, v in comp.items()
        if k not in ("loss_curve", "layer_group_weights", "layer_group_spans", "restarts",
                     "guard_cv")
    }
    lines += ["", "## Settings", "", settings_table(settings)]
    if result.holdout:
        lines += [
            "",
            "## Held-out check",
            "",
            "| weights | loss | exact match | choice accuracy |",
            "|---|---|---|---|",
        ]
        for row in result.holdout:
            lines.append(
                f"| {row.label} | {row.loss:.4f} | {_fmt(row.exact_match)} | "
                f"{_fmt(row.choice_accuracy)} |"
            )
    lines += ["", f"Made with loradex {__version__}."]
    return "\n".join(lines)
