"""Train one LoRA module on ``input``/``target`` pairs with PEFT; write a PEFT adapter folder.

The model is passed in (load it once with :func:`composer.models.load_base_model` and train many
modules with it): :func:`train_lora` injects a fresh LoRA, trains it, saves it, and removes it
again, leaving the base model exactly as it was.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from composer.adapter_io import (
    SAVE_DTYPES,
    check_output_dir,
    lora_config_dict,
    write_adapter_folder,
)
from composer.batching import make_batch, mean_target_loss
from composer.cards import (
    heldout_record,
    heldout_section,
    hub_front_matter,
    render_card,
    settings_table,
    tail_mean,
    task_tags,
    training_table,
)
from composer.data import Example, encode_examples
from composer.models import LoadedModel
from loradex import __version__
from loradex.errors import ConfigError

if TYPE_CHECKING:
    from registry.embedders import Embedder


@dataclass(frozen=True)
class TaskInfo:
    """What a module is for; recorded in its model card and the registry."""

    name: str | None = field(default=None, metadata={"help": "task name, e.g. past_tense"})
    category: str | None = field(default=None, metadata={"help": "task category, e.g. grammar"})
    dataset: str | None = field(default=None, metadata={"help": "source dataset id or name"})
    license: str | None = field(default=None, metadata={"help": "license of the module"})
    description: str | None = field(default=None, metadata={"help": "one-line description"})
    tags: tuple[str, ...] = field(default=(), metadata={"help": "extra card tags"})


@dataclass(frozen=True)
class TrainSettings:
    """The settings every trainer here shares (plain LoRA and Hydra)."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)"})
    targets: tuple[str, ...] = field(
        default=("q_proj", "v_proj"), metadata={"help": "names of the linear layers to adapt"}
    )
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (default 100)"})
    epochs: float | None = field(default=None, metadata={"help": "passes over the data (or steps)"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_fraction: float = field(default=0.05, metadata={"help": "linear warm-up share of steps"})
    batch_size: int = field(default=8, metadata={"help": "examples per optimizer step"})
    max_length: int = field(default=256, metadata={"help": "max tokens per example"})
    seed: int = field(default=0, metadata={"help": "seed for init and data order"})
    use_chat_template: bool = field(default=True, metadata={"help": "render with chat template"})
    save_dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16"})

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible settings (call before loading anything)."""
        validate_schedule(self)


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """Settings of one LoRA training run (defaults work for the embedded SmolLM2)."""

    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    heldout_loss_before: float | None = None
    heldout_loss_after: float | None = None
    front_matter: dict[str, Any] = field(default_factory=dict)


def validate_schedule(config: TrainSettings) -> None:
    """Raise :class:`ConfigError` for impossible shared settings (before loading anything)."""
    if config.rank < 1:
        raise ConfigError(f"rank must be >= 1, got {config.rank}")
    if config.steps is not None and config.epochs is not None:
        raise ConfigError("give either steps or epochs, not both")
    if config.steps is not None and config.steps < 1:
        raise ConfigError(f"steps must be >= 1, got {config.steps}")
    if config.epochs is not None and config.epochs <= 0:
        raise ConfigError(f"epochs must be > 0, got {config.epochs}")
    if config.batch_size < 1 or config.max_length < 2:
        raise ConfigError("batch size must be >= 1 and max length >= 2")
    if not config.targets:
        raise ConfigError("at least one target module is needed")
    if config.save_dtype not in SAVE_DTYPES:
        raise ConfigError(f"invalid save dtype {config.save_dtype!r}")
    if config.lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got {config.lr}")


def total_steps(config: TrainSettings, n_examples: int) -> int:
    """Optimizer steps of a run: ``steps``, or ``epochs`` over the data, else 100."""
    if config.steps is not None:
        return config.steps
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * n_examples / config.batch_size))
    return 100


def warmup_linear_schedule(
    optimizer: torch.optim.Optimizer, n_steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to zero."""
    warmup = max(1, int(warmup_fraction * n_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def batch_indices(n_examples: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of example indices: seeded shuffled epochs, cut into ``batch_size``."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            epoch = list(range(n_examples))
            rng.shuffle(epoch)
            order.extend(epoch)
        yield order[:batch_size]
        del order[:batch_size]


@torch.no_grad()
def heldout_loss(loaded: LoadedModel, examples: Sequence[Example], config: TrainConfig) -> float:
    """Mean target-token cross-entropy of ``examples`` under the model as it is now."""
    encoded = encode_examples(
        loaded.tokenizer,
        examples,
        seq2seq=loaded.is_seq2seq,
        max_length=config.max_length,
        use_chat_template=config.use_chat_template,
    )
    total, count = 0.0, 0
    for start in range(0, len(encoded), config.batch_size):
        chunk = encoded[start : start + config.batch_size]
        batch = make_batch(chunk, loaded.model, packed=False).to(loaded.device)
        n_tok = len(batch.target_ids)
        total += float(mean_target_loss(loaded.model, batch)) * n_tok
        count += n_tok
    return total / max(count, 1)


def train_lora(
    loaded: LoadedModel,
    examples: Sequence[Example],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    task: TaskInfo | None = None,
    heldout: Sequence[Example] = (),
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    embedder: Embedder | None = None,
) -> TrainResult:
    """Train a LoRA on ``examples``, save it as a PEFT adapter folder with a card at ``out_dir``
    (and, given an ``embedder``, the data signature of its training inputs).

    The base model in ``loaded`` is returned to its original state afterwards (the LoRA layers
    are removed), so one loaded model can train many modules in a row.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, get_peft_model_state_dict
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    task = task or TaskInfo()
    config.validate()
    out = check_output_dir(out_dir, overwrite)
    if not examples:
        raise ConfigError("no training examples")

    model = loaded.model
    _check_targets(model, config.targets)
    n_steps = total_steps(config, len(examples))
    before = heldout_loss(loaded, heldout, config) if heldout else None

    task_type = "SEQ_2_SEQ_LM" if loaded.is_seq2seq else "CAUSAL_LM"
    cfg_dict = lora_config_dict(
        base_model=loaded.name,
        rank=config.rank,
        alpha=config.lora_alpha,
        target_modules=list(config.targets),
        task_type=task_type,
        dropout=config.dropout,
    )
    torch.manual_seed(config.seed)
    alpha_arg: Any = config.lora_alpha  # PEFT annotates int; float alphas are valid
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=alpha_arg,
        target_modules=list(config.targets),
        lora_dropout=config.dropout,
        bias="none",
        task_type=task_type,
    )
    peft_model = get_peft_model(model, peft_config)
    losses: list[float] = []
    started = time.perf_counter()
    try:
        encoded = encode_examples(
            loaded.tokenizer,
            examples,
            seq2seq=loaded.is_seq2seq,
            max_length=config.max_length,
            use_chat_template=config.use_chat_template,
        )
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = warmup_linear_schedule(optimizer, n_steps, config.warmup_fraction)
        batches = batch_indices(len(encoded), config.batch_size, config.seed)
        hf_model: Any = peft_model.get_base_model()
        peft_model.train()
        bar = tqdm(range(n_steps), desc="train", unit="step", disable=not progress)
        for step in bar:
            picked = [encoded[i] for i in next(batches)]
            batch = make_batch(picked, hf_model, packed=False).to(loaded.device)
            loss = mean_target_loss(hf_model, batch)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
            if on_step is not None:
                on_step(step, value)
        bar.close()
        peft_model.eval()
        after = heldout_loss(loaded, heldout, config) if heldout else None
        tensors = dict(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    finally:
        # Give the caller its plain base model back.
        restored: Any = peft_model.unload()
        loaded.model = restored
        loaded.model.eval()
    seconds = time.perf_counter() - started

    front_matter = training_front_matter(
        loaded, config, task, n_examples=len(examples), steps=n_steps,
        final_loss=tail_mean(losses), heldout=(before, after, len(heldout)),
    )
    card = render_card(front_matter, task.name or out.name, _card_body(front_matter, losses))
    extra_files = {"training_log.json": json.dumps({"losses": losses}).encode()}
    if embedder is not None:
        from registry.signatures import SIGNATURE_FILE, data_signature, signature_file_bytes

        signature = data_signature(embedder, [ex.input for ex in examples])
        extra_files[SIGNATURE_FILE] = signature_file_bytes(signature)
    write_adapter_folder(
        out,
        config=cfg_dict,
        tensors=tensors,
        card=card,
        save_dtype=config.save_dtype,
        overwrite=overwrite,
        extra_files=extra_files,
    )
    return TrainResult(
        out_dir=out,
        steps=n_steps,
        losses=losses,
        seconds=seconds,
        heldout_loss_before=before,
        heldout_loss_after=after,
        front_matter=front_matter,
    )


def _check_targets(model: torch.nn.Module, targets: Sequence[str]) -> None:
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear)}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(
            f"target module(s) {', '.join(missing)} not found among the model's linear layers "
            f"({', '.join(sorted(names)[:12])}...)"
        )


def training_front_matter(
    loaded: LoadedModel,
    config: TrainConfig,
    task: TaskInfo,
    *,
    n_examples: int,
    steps: int,
    final_loss: float | None,
    heldout: tuple[float | None, float | None, int],
) -> dict[str, Any]:
    """The YAML front matter of a trained module's card."""
    training = training_table(config, n_examples=n_examples, steps=steps, final_loss=final_loss)
    fm = hub_front_matter(
        loaded, library_name="peft", license=task.license or loaded.module_license,
        tags=task_tags(("loradex", "lora", "peft"), task), dataset=task.dataset,
    )
    # Flat task keys: the registry reads loradex.task_name, task_category, dataset, description.
    loradex_block: dict[str, Any] = {
        "kind": "lora",
        "origin": "trained",
        "version": __version__,
        **{
            key: value
            for key, value in {
                "task_name": task.name,
                "task_category": task.category,
                "dataset": task.dataset,
                "description": task.description,
            }.items()
            if value
        },
        "training": training,
    }
    if loaded.gguf_file:
        loradex_block["base_model_file"] = Path(loaded.gguf_file).name
    held = heldout_record(*heldout)
    if held is not None:
        loradex_block["heldout"] = held
    fm["loradex"] = loradex_block
    return fm


def _card_body(fm: dict[str, Any], losses: Sequence[float]) -> str:
    block = fm["loradex"]
    lines = [
        block.get("description") or "A LoRA module trained with loradex.",
        "",
        f"Base model: `{fm['base_model']}`. Load it with PEFT:",
        "",
        "```python",
        "from peft import PeftModel",
        "model = PeftModel.from_pretrained(base_model, 'path/to/this/folder')",
        "```",
        "",
        "## Training",
        "",
        settings_table(block["training"]),
    ]
    if "heldout" in block:
        lines += heldout_section(block["heldout"])
    if losses:
        lines += ["", f"Training loss: first {losses[0]:.4f}, last {losses[-1]:.4f}."]
    return "\n".join(lines)
