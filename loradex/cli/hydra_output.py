"""What ``loradex train --method hydra`` and ``loradex compose --output hydra`` print.

The summaries are the JSON of ``--json``; the ``print_*`` functions give the lines a user
reads (head usage, losses before and after). The work itself is ``composer.hydra``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from composer.hydra.compose import HydraComposeResult
    from composer.hydra.training import HydraTrainResult

Echo = Callable[[str], None]


def train_summary(result: HydraTrainResult) -> dict[str, Any]:
    """The summary of a trained Hydra module (``registry_id`` is added by the caller)."""
    return {
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


def compose_summary(hydra: HydraComposeResult) -> dict[str, Any]:
    """The summary of a Hydra module built from a LoraHub result: heads, router fit, usage."""
    assert hydra.fit is not None
    fit = hydra.fit
    return {
        "num_heads": hydra.module.config.num_heads,
        "head_groups": [list(g.repo_ids) for g in hydra.groups],
        "router_steps": fit.steps,
        "fewshot_loss_before": fit.fewshot_loss_before,
        "fewshot_loss_after": fit.fewshot_loss_after,
        "heldout_loss_before": fit.heldout_loss_before,
        "heldout_loss_after": fit.heldout_loss_after,
        "head_usage": [round(float(u), 4) for u in fit.head_usage.top1_share],
    }


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
