"""The Hydra halves of ``loradex train --method hydra`` and ``loradex compose --output hydra``.

The click commands live in ``loradex/cli/commands/composer_cmds.py``; they validate their options
and call these functions, which do the work and print what a user wants to see (head usage,
losses before/after). Kept here so the Hydra code path stays in one package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from composer.data import Example
from composer.models import LoadedModel
from loradex.errors import ConfigError

Echo = Callable[[str], None]


def parse_heads(value: str) -> int | str:
    """``--heads``: ``auto`` or a positive integer, else a ConfigError naming the option."""
    if value == "auto":
        return "auto"
    try:
        heads = int(value)
    except ValueError:
        heads = 0
    if heads < 1:
        raise ConfigError(f"--heads must be 'auto' or a positive integer, got {value!r}")
    return heads


def run_train_hydra(
    loaded: LoadedModel,
    datasets: Sequence[Path],
    out: Path,
    config: Any,
    *,
    task: Any,
    heldout: Sequence[Example],
    overwrite: bool,
) -> tuple[Any, dict[str, Any]]:
    """Train a Hydra module (``composer.hydra.training.train_hydra``); return it and a summary."""
    from composer.hydra.training import train_hydra

    result = train_hydra(
        loaded, datasets, out, config, task=task, heldout=heldout, overwrite=overwrite
    )
    summary: dict[str, Any] = {
        "out": str(result.out_dir),
        "method": "hydra",
        "num_heads": result.num_heads,
        "heads_chosen_by": "auto" if result.head_selection is not None else "fixed",
        "steps": result.steps,
        "first_loss": round(result.losses[0], 4),
        "last_loss": round(result.losses[-1], 4),
        "seconds": round(result.seconds, 1),
        "head_usage": [round(float(u), 4) for u in result.head_usage.top1_share],
        "heldout_loss_before": result.heldout_loss_before,
        "heldout_loss_after": result.heldout_loss_after,
    }
    return result, summary


def print_train_summary(summary: dict[str, Any], echo: Echo) -> None:
    """The human-readable lines of ``loradex train --method hydra``."""
    echo(
        f"trained a Hydra module with {summary['num_heads']} heads ({summary['heads_chosen_by']}) "
        f"for {summary['steps']} steps in {summary['seconds']:.1f}s: loss "
        f"{summary['first_loss']} -> {summary['last_loss']}"
    )
    usage = "  ".join(f"head {j}: {u:.1%}" for j, u in enumerate(summary["head_usage"]))
    echo(f"head usage (share of tokens): {usage}")
    if summary["heldout_loss_after"] is not None:
        echo(
            f"held-out loss {summary['heldout_loss_before']:.4f} -> "
            f"{summary['heldout_loss_after']:.4f}"
        )


def hydra_head_count(num_heads: int | None, router_steps: int, n_candidates: int) -> int:
    """Check ``--hydra-heads`` / ``--router-steps`` before any model work; return N.

    N defaults to ``min(4, number of candidates)``.
    """
    heads = num_heads if num_heads is not None else min(4, n_candidates)
    if not 1 <= heads <= n_candidates:
        raise ConfigError(
            f"--hydra-heads must be between 1 and the number of candidates ({n_candidates}), "
            f"got {heads}"
        )
    if router_steps < 0:
        raise ConfigError(f"--router-steps must be >= 0, got {router_steps}")
    return heads


def run_compose_hydra(
    loaded: LoadedModel,
    result: Any,
    few_shot: Sequence[Example],
    out: Path,
    *,
    num_heads: int,
    router_steps: int,
    holdout: Sequence[Example],
    overwrite: bool,
) -> tuple[Path, dict[str, Any]]:
    """Build the Hydra module of a LoraHub result, fit its router, write it; return a summary."""
    from composer.hydra.compose import compose_result_to_hydra

    hydra = compose_result_to_hydra(
        loaded, result, few_shot, out, num_heads=num_heads, holdout=holdout,
        fit_steps=router_steps, overwrite=overwrite,
    )
    assert hydra.out_dir is not None and hydra.fit is not None
    fit = hydra.fit
    summary: dict[str, Any] = {
        "num_heads": num_heads,
        "head_groups": [list(g.repo_ids) for g in hydra.groups],
        "router_steps": fit.steps,
        "fewshot_loss_before": fit.fewshot_loss_before,
        "fewshot_loss_after": fit.fewshot_loss_after,
        "heldout_loss_before": fit.heldout_loss_before,
        "heldout_loss_after": fit.heldout_loss_after,
        "head_usage": [round(float(u), 4) for u in fit.head_usage.top1_share],
    }
    return hydra.out_dir, summary


def print_compose_summary(summary: dict[str, Any], echo: Echo) -> None:
    """The human-readable lines of ``loradex compose --output hydra``."""
    echo(f"Hydra module: {summary['num_heads']} heads from {summary['head_groups']}")
    echo(
        f"router fit ({summary['router_steps']} steps): few-shot loss "
        f"{summary['fewshot_loss_before']:.4f} -> {summary['fewshot_loss_after']:.4f}"
    )
    if summary["heldout_loss_before"] is not None:
        echo(
            f"held-out loss {summary['heldout_loss_before']:.4f} -> "
            f"{summary['heldout_loss_after']:.4f}"
        )
