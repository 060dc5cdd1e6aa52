"""``loradex train``, ``loradex compose`` and ``loradex eval``.

Nothing heavy is imported at module level: torch, transformers and peft load inside the
command functions, so ``loradex --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from loradex.errors import ConfigError
from loradex.settings import Settings

_model_options = [
    click.option("--base-model", default=None, metavar="ID|DIR|FILE.gguf",
                 help="Base model: local folder, cached Hub id or GGUF file "
                      "(default: the embedded SmolLM2-135M-Instruct GGUF)."),
    click.option("--device", default="auto", show_default=True,
                 help="auto, cpu, cuda or cuda:N."),
    click.option("--dtype", default="auto", show_default=True,
                 type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                 help="Compute dtype (auto: float32 on CPU, bfloat16 on CUDA)."),
    click.option("--no-chat-template", is_flag=True,
                 help="Render prompts as plain text even if the tokenizer has a chat template."),
]


def model_options(func: Any) -> Any:
    """Attach the options shared by every command that loads a base model."""
    for option in reversed(_model_options):
        func = option(func)
    return func


def _split_csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _load_model(base_model: str | None, device: str, dtype: str) -> Any:
    from composer.models import ModelSpec, load_base_model

    click.echo(f"loading base model {base_model or '(embedded SmolLM2-135M-Instruct GGUF)'} ...",
               err=True)
    return load_base_model(ModelSpec(name_or_path=base_model, device=device, dtype=dtype))


def _index_folder(
    settings: Settings, folder: Path, lineage: list[dict[str, Any]] | None = None
) -> str | None:
    """Index an adapter folder in the registry; return its id (None if there is no registry)."""
    from composer.registry_link import index_adapter_folder

    return index_adapter_folder(settings.db_url, folder, lineage=lineage)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the PEFT adapter into.")
@model_options
@click.option("--rank", default=16, show_default=True, help="LoRA rank.")
@click.option("--alpha", default=None, type=float, help="LoRA alpha (default: 2 x rank).")
@click.option("--targets", default="q_proj,v_proj", show_default=True,
              help="Comma-separated names of the linear layers to adapt.")
@click.option("--dropout", default=0.0, show_default=True, help="LoRA dropout.")
@click.option("--steps", default=None, type=int, help="Optimizer steps (default 100).")
@click.option("--epochs", default=None, type=float, help="Passes over the data instead of --steps.")
@click.option("--lr", default=5e-4, show_default=True, help="AdamW learning rate.")
@click.option("--batch-size", default=8, show_default=True, help="Examples per step.")
@click.option("--max-length", default=256, show_default=True, help="Max tokens per example.")
@click.option("--seed", default=0, show_default=True, help="Seed (LoRA init, data order, split).")
@click.option("--save-dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "float16", "bfloat16"]),
              help="dtype of the saved tensors (float16 halves the download).")
@click.option("--task-name", default=None, help="Task name recorded in the card and registry.")
@click.option("--task-category", default=None, help="Task category, e.g. grammar.")
@click.option("--dataset", default=None, help="Source dataset name or id.")
@click.option("--license", "license_", default=None,
              help="License of the module (default apache-2.0).")
@click.option("--description", default=None, help="One-line description for the card.")
@click.option("--holdout-fraction", default=None, type=float,
              help="Hold out this share of DATA and report its loss before/after training.")
@click.option("--eval-file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Held-out JSONL file to report loss on (instead of --holdout-fraction).")
@click.option("--no-index", is_flag=True, help="Do not index the module in the registry.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def train(settings: Settings, data: Path, out: Path, base_model: str | None, device: str,
          dtype: str, no_chat_template: bool, rank: int, alpha: float | None, targets: str,
          dropout: float, steps: int | None, epochs: float | None, lr: float, batch_size: int,
          max_length: int, seed: int, save_dtype: str, task_name: str | None,
          task_category: str | None, dataset: str | None, license_: str | None,
          description: str | None, holdout_fraction: float | None, eval_file: Path | None,
          no_index: bool, overwrite: bool, as_json: bool) -> None:
    """Train a LoRA module on DATA (JSONL lines of {"input", "target"}) and index it.

    \b
    Example:
      loradex train past_tense.jsonl --out modules/past_tense --rank 16 --steps 200 \\
          --task-name past_tense --task-category grammar
    """
    from composer.adapter_io import check_output_dir
    from composer.data import load_examples, split_holdout
    from composer.train import TaskInfo, TrainConfig, train_lora

    config = TrainConfig(
        rank=rank, alpha=alpha, targets=_split_csv(targets), dropout=dropout, steps=steps,
        epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
        use_chat_template=not no_chat_template, save_dtype=save_dtype,
    )
    config.validate()
    if holdout_fraction is not None and eval_file is not None:
        raise ConfigError("give --holdout-fraction or --eval-file, not both")
    check_output_dir(out, overwrite)
    examples = load_examples(data)
    heldout = []
    if eval_file is not None:
        heldout = load_examples(eval_file)
    elif holdout_fraction is not None:
        examples, heldout = split_holdout(examples, holdout_fraction, seed)
    task = TaskInfo(name=task_name, category=task_category, dataset=dataset, license=license_,
                    description=description)

    loaded = _load_model(base_model, device, dtype)
    result = train_lora(loaded, examples, out, config, task=task, heldout=heldout,
                        overwrite=overwrite)
    module_id = None if no_index else _index_folder(settings, result.out_dir)
    summary = {
        "out": str(result.out_dir),
        "steps": result.steps,
        "first_loss": round(result.losses[0], 4),
        "last_loss": round(result.losses[-1], 4),
        "seconds": round(result.seconds, 1),
        "heldout_loss_before": result.heldout_loss_before,
        "heldout_loss_after": result.heldout_loss_after,
        "registry_id": module_id,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f}s: loss "
               f"{summary['first_loss']} -> {summary['last_loss']}")
    if result.heldout_loss_after is not None:
        click.echo(f"held-out loss {result.heldout_loss_before:.4f} -> "
                   f"{result.heldout_loss_after:.4f} ({len(heldout)} examples)")
    click.echo(f"wrote {result.out_dir}")
    if module_id:
        click.echo(f"indexed as {module_id}")
