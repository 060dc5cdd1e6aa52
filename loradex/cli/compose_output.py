"""What ``loradex compose`` prints: the JSON summary, or the losses, weights, held-out rows
and where the module went."""

from __future__ import annotations

import json
import statistics
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from composer.pipeline import ComposeOutcome, ComposeRequest
    from hub_client.publish import PublishResult


def print_compose(outcome: ComposeOutcome, request: ComposeRequest,
                   published: PublishResult | None, as_json: bool) -> None:
    """What ``loradex compose`` prints of a run (and of its publication, when there was one):
    the JSON summary, or the losses, weights, held-out rows and where the module went."""
    result, config = outcome.result, request.compose
    summary: dict[str, Any] = {
        "out": str(outcome.folder),
        "method": config.method,
        "optimizer": config.search.optimizer,
        "loss_zero_weights": round(result.zero_loss, 6),
        "loss": round(result.loss, 6),
        "objective": round(result.objective, 6),
        "seconds": round(result.seconds, 2),
        "weights": {c.repo_id: round(float(w), 6)
                    for c, w in zip(result.candidates, result.parent_weights(), strict=True)},
        "registry_id": outcome.registry_id,
        "published": f"{published.repo_id}@{published.revision}" if published else None,
    }
    if config.layer_groups > 1:
        summary["layer_group_weights"] = result.weights_by_group().round(6).tolist()
    if result.restarts:
        summary["restarts"] = [
            {"seed": r.seed, "cv_loss": round(r.cv_loss, 6),
             "loss": None if r.loss is None else round(r.loss, 6)}
            for r in result.restarts
        ]
    if result.guard is not None:
        summary["guard"] = result.guard.summary()
    if result.holdout:
        summary["holdout"] = [row.__dict__ for row in result.holdout]
    hydra_summary = None
    if outcome.hydra is not None:
        from loradex.cli.hydra_output import compose_summary

        hydra_summary = summary["hydra"] = compose_summary(outcome.hydra)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    budget = config.search.budget
    runs = f"{budget} evaluations"
    if result.folds:
        searches = (config.restarts * result.folds
                    + max(1, sum(r.loss is not None for r in result.restarts)))
        runs = f"{searches} searches of {budget} evaluations"
    click.echo(f"few-shot loss {result.zero_loss:.4f} (zero weights) -> "
               f"{result.loss:.4f} in {result.seconds:.1f}s ({runs})")
    if result.restarts:
        cv = [r.cv_loss for r in result.restarts]
        click.echo(f"restarts: held-out loss {statistics.mean(cv):.4f} +- "
                   f"{statistics.pstdev(cv):.4f} over {len(cv)} seeds ({result.folds} folds); "
                   f"pick {config.restart_pick}")
        for rec in result.restarts:
            full = "" if rec.loss is None else f"  all examples {rec.loss:.4f}"
            click.echo(f"  seed {rec.seed}: held-out {rec.cv_loss:.4f}{full}")
    if result.guard is not None:
        g = result.guard
        click.echo(f"guard: held-out loss {g.search_cv_loss:.4f} searched, "
                   f"{g.start_cv_loss:.4f} at the start ({result.folds} folds); "
                   f"kept the {g.kept}")
    mean_note = f" (mean of {config.layer_groups} layer groups)" if config.layer_groups > 1 else ""
    click.echo(f"weights{mean_note}:")
    for repo_id, weight in summary["weights"].items():
        click.echo(f"  {weight:+.4f}  {repo_id}")
    if result.holdout:
        click.echo("held-out:")
        for row in result.holdout:
            em = "-" if row.exact_match is None else f"{row.exact_match:.3f}"
            acc = "" if row.choice_accuracy is None else f"  choice acc {row.choice_accuracy:.3f}"
            click.echo(f"  loss {row.loss:.4f}  exact match {em}{acc}  {row.label}")
    if hydra_summary is not None:
        from loradex.cli.hydra_output import print_compose_summary

        print_compose_summary(hydra_summary, click.echo)
    click.echo(f"wrote {outcome.folder}")
    if outcome.registry_id:
        click.echo(f"indexed as {outcome.registry_id}")
    if published:
        click.echo(f"published {published.repo_id}@{published.revision} -> {published.url}")
