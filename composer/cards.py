"""Model cards: README.md with YAML front matter that the Hub and the registry both read.

The pieces every writer of a card shares (the Hub keys, a trained module's tags, its
``training`` and ``heldout`` blocks) are built here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from composer.models import LoadedModel
    from composer.train import TaskInfo, TrainSettings


def render_card(front_matter: Mapping[str, Any], title: str, body: str) -> str:
    """A README.md: ``---`` YAML front matter ``---``, a title and a markdown body."""
    yaml_text = yaml.safe_dump(dict(front_matter), sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{yaml_text}---\n\n# {title}\n\n{body.strip()}\n"


def settings_table(settings: Mapping[str, Any]) -> str:
    """A two-column markdown table of settings."""
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in settings.items()]
    return "\n".join(lines)


def hub_front_matter(
    loaded: LoadedModel,
    *,
    library_name: str,
    license: str | None,
    tags: Sequence[str],
    dataset: str | None = None,
) -> dict[str, Any]:
    """The Hub's keys every card here begins with: base model, library, licence, tags, pipeline
    tag and, when there is one, the Hub dataset the module was trained on."""
    front: dict[str, Any] = {
        "base_model": loaded.name,
        "library_name": library_name,
        "license": license,
        "tags": list(tags),
        "pipeline_tag": "text2text-generation" if loaded.is_seq2seq else "text-generation",
    }
    if dataset:
        front["datasets"] = [dataset]
    return front


def task_tags(kind_tags: Sequence[str], task: TaskInfo) -> list[str]:
    """A trained module's card tags: those of its kind, the task's own, then its category."""
    return [*kind_tags, *task.tags, *([task.category] if task.category else [])]


def tail_mean(losses: Sequence[float], n: int = 10) -> float | None:
    """The final training loss a card reports: the mean of the last ``n`` steps, 4 decimals."""
    tail = list(losses[-n:])
    return round(sum(tail) / len(tail), 4) if tail else None


def training_table(
    config: TrainSettings,
    *,
    n_examples: int,
    steps: int,
    final_loss: float | None,
    listed_last: Sequence[str] = (),
) -> dict[str, Any]:
    """The card's ``training`` block: the run's settings (the alpha actually used, the fields
    of ``listed_last`` after the others), then how long it ran and its final loss."""
    settings = asdict(config)
    training = {k: v for k, v in settings.items() if k not in ("alpha", *listed_last)}
    training.update({k: settings[k] for k in listed_last})
    training.update(
        alpha=config.lora_alpha,
        targets=list(config.targets),
        n_examples=n_examples,
        total_steps=steps,
        final_train_loss=final_loss,
    )
    return training


def heldout_record(
    before: float | None, after: float | None, n_examples: int
) -> dict[str, Any] | None:
    """The card's ``heldout`` block: the held-out loss without and with the module (None when
    there was no held-out set)."""
    if after is None:
        return None
    return {
        "n_examples": n_examples,
        "loss_base": round(before, 4) if before is not None else None,
        "loss": round(after, 4),
    }


def heldout_section(record: Mapping[str, Any]) -> list[str]:
    """The card body's lines about a ``heldout`` block."""
    return [
        "",
        "## Held-out",
        "",
        f"Mean target-token loss on {record['n_examples']} held-out examples: {record['loss']} "
        f"(base model without the module: {record['loss_base']}).",
    ]
