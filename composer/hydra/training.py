"""Train a Hydra module from one or several JSONL task files (the HydraLoRA paper's method).

The shared A, the N heads and the routers are trained together on the target-token loss plus
a load-balancing term on the routers' gates, so that heads do not collapse onto one. With
``heads="auto"`` N is chosen first from the training inputs (:mod:`composer.hydra.heads`).
Data, prompts, batching and the loss are the composer's own (:mod:`composer.data`,
:mod:`composer.batching`), so a Hydra module sees exactly the prompts a LoRA would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from composer.adapter_io import SAVE_DTYPES, check_output_dir
from composer.batching import TargetBatch, make_batch, mean_target_loss
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
from composer.data import EncodedExample, Example, encode_examples, load_examples
from composer.hydra.format import write_hydra_folder
from composer.hydra.heads import HeadCountChoice, choose_num_heads
from composer.hydra.runtime import HeadUsage, HydraHandle, attach_hydra, init_hydra_module
from composer.inference import mean_loss
from composer.models import LoadedModel
from composer.train import (
    TaskInfo,
    TrainSettings,
    batch_indices,
    total_steps,
    validate_schedule,
    warmup_linear_schedule,
)
from loradex import __version__
from loradex.errors import ConfigError, InvalidDataFile
from loradex.files import file_sha256
from registry.hydra import HydraConfig

BALANCE_KINDS = ("switch", "kl", "none")


@dataclass(frozen=True)
class HydraTrainConfig(TrainSettings):
    """Settings of one Hydra training run (defaults work for the embedded SmolLM2)."""

    rank: int = field(default=8, metadata={"help": "rank r of the shared A"})
    heads: int | Literal["auto"] = field(
        default="auto", metadata={"help": "number of B heads N, or 'auto' (k-means elbow)"}
    )
    max_heads: int = field(default=8, metadata={"help": "largest N tried by heads='auto'"})
    router_temperature: float = field(default=1.0, metadata={"help": "router softmax T"})
    balance: str = field(
        default="switch", metadata={"help": "load-balancing term: switch, kl or none"}
    )
    balance_coef: float = field(default=0.1, metadata={"help": "weight of the balance term"})
    usage_examples: int = field(
        default=64, metadata={"help": "training examples the final head usage is measured on"}
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible settings (call before loading anything)."""
        if self.heads != "auto" and (
            not isinstance(self.heads, int) or isinstance(self.heads, bool) or self.heads < 1
        ):
            raise ConfigError(f"heads must be 'auto' or a positive integer, got {self.heads!r}")
        if self.max_heads < 1:
            raise ConfigError(f"max heads must be >= 1, got {self.max_heads}")
        if self.router_temperature <= 0:
            raise ConfigError(f"router temperature must be > 0, got {self.router_temperature}")
        if self.balance not in BALANCE_KINDS:
            raise ConfigError(
                f"unknown balance term {self.balance!r} (choose {', '.join(BALANCE_KINDS)})"
            )
        if self.balance_coef < 0:
            raise ConfigError(f"balance coefficient must be >= 0, got {self.balance_coef}")
        validate_schedule(self)
        if self.usage_examples < 1:
            raise ConfigError(f"usage examples must be >= 1, got {self.usage_examples}")


@dataclass
class HydraTrainResult:
    """What a Hydra training run produced."""

    out_dir: Path | None
    num_heads: int
    head_selection: HeadCountChoice | None
    steps: int
    losses: list[float]
    balance_losses: list[float]
    head_usage: HeadUsage
    seconds: float  # the training steps only
    heldout_loss_before: float | None = None
    heldout_loss_after: float | None = None
    front_matter: dict[str, Any] = field(default_factory=dict)


def load_datasets(paths: Sequence[str | Path]) -> list[tuple[Path, list[Example]]]:
    """Read every JSONL task file (composer's strict loader); errors name the file and line."""
    if not paths:
        raise InvalidDataFile("no training data file given")
    return [(Path(p), load_examples(p)) for p in paths]


def train_hydra(
    loaded: LoadedModel,
    datasets: Sequence[str | Path],
    out_dir: str | Path | None,
    config: HydraTrainConfig | None = None,
    *,
    task: TaskInfo | None = None,
    heldout: Sequence[Example] = (),
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> HydraTrainResult:
    """Train a Hydra module on the mixture of ``datasets``; save it at ``out_dir`` (if given).

    The base model in ``loaded`` is left exactly as it was (the wrappers are detached).
    """
    from tqdm.auto import tqdm

    config = config or HydraTrainConfig()
    task = task or TaskInfo()
    config.validate()
    out = check_output_dir(out_dir, overwrite) if out_dir is not None else None
    files = load_datasets(datasets)
    examples = [ex for _, exs in files for ex in exs]

    selection: HeadCountChoice | None = None
    if config.heads == "auto":
        selection = choose_num_heads(
            [ex.input for ex in examples], range(1, config.max_heads + 1), seed=config.seed
        )
        num_heads = selection.chosen
        selection_record: dict[str, Any] = selection.to_json_dict()
    else:
        num_heads = int(config.heads)
        selection_record = {"method": "fixed", "chosen": num_heads}

    hydra_config = HydraConfig(
        base_model=loaded.name,
        target_modules=tuple(sorted(config.targets)),
        rank=config.rank,
        alpha=config.lora_alpha,
        num_heads=num_heads,
        router_temperature=config.router_temperature,
        task={
            **{k: v for k, v in asdict(task).items() if v not in (None, ())},
            "datasets": [p.name for p, _ in files],
            "dataset_sha256": {p.name: file_sha256(p) for p, _ in files},
            "examples_per_dataset": {p.name: len(exs) for p, exs in files},
        },
        head_selection=selection_record,
    )
    model = loaded.model
    encode = _encoder(loaded, config)
    encoded = encode(examples)
    n_steps = total_steps(config, len(examples))
    before = (mean_loss(loaded, encode(heldout), config.batch_size, packed=False)
              if heldout else None)

    module = init_hydra_module(model, hydra_config, seed=config.seed)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    handle = attach_hydra(model, module, trainable=True)
    losses: list[float] = []
    balance_losses: list[float] = []
    started = time.perf_counter()
    try:
        params = handle.parameters()
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = warmup_linear_schedule(optimizer, n_steps, config.warmup_fraction)
        batches = batch_indices(len(encoded), config.batch_size, config.seed)
        model.train()
        bar = tqdm(range(n_steps), desc="train hydra", unit="step", disable=not progress)
        for step in bar:
            picked = [encoded[i] for i in next(batches)]
            batch = make_batch(picked, model, packed=False).to(loaded.device)
            with handle.recording():
                task_loss = mean_target_loss(model, batch)[0]
            balance = _balance(handle, batch, config)
            loss = task_loss + config.balance_coef * balance
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            handle.clear_recorded()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(task_loss.detach()))
            balance_losses.append(float(balance.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", balance=f"{balance_losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, losses[-1])
        bar.close()
        model.eval()
        seconds = time.perf_counter() - started
        usage_sample = encoded[: config.usage_examples]
        usage = measure_head_usage(handle, loaded, usage_sample, config.batch_size)
        after = (mean_loss(loaded, encode(heldout), config.batch_size, packed=False)
                 if heldout else None)
        trained = handle.to_module(hydra_config)
    finally:
        handle.detach()
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, False))
        model.eval()

    front_matter = hydra_front_matter(
        loaded,
        hydra_config,
        config,
        task,
        steps=n_steps,
        n_examples=len(examples),
        usage=usage,
        final_loss=tail_mean(losses),
        heldout=(before, after, len(heldout)),
    )
    if out is not None:
        card = render_card(
            front_matter, task.name or out.name, _card_body(front_matter, selection, usage)
        )
        log = {"losses": losses, "balance_losses": balance_losses}
        write_hydra_folder(
            trained,
            out,
            card=card,
            extra_files={"training_log.json": json.dumps(log).encode()},
            save_dtype=SAVE_DTYPES[config.save_dtype],
        )
    return HydraTrainResult(
        out_dir=out,
        num_heads=num_heads,
        head_selection=selection,
        steps=n_steps,
        losses=losses,
        balance_losses=balance_losses,
        head_usage=usage,
        seconds=seconds,
        heldout_loss_before=before,
        heldout_loss_after=after,
        front_matter=front_matter,
    )


@torch.no_grad()
def measure_head_usage(
    handle: HydraHandle,
    loaded: LoadedModel,
    encoded: Sequence[EncodedExample],
    batch_size: int = 8,
) -> HeadUsage:
    """Per-head token shares of the attached module over ``encoded`` (padding excluded)."""
    masks: list[torch.Tensor | None] = []
    handle.clear_recorded()
    with handle.recording():
        for start in range(0, len(encoded), batch_size):
            batch = make_batch(encoded[start : start + batch_size], loaded.model, packed=False)
            batch = batch.to(loaded.device)
            mean_target_loss(loaded.model, batch)
            masks.append(batch.attention_mask)
    usage = handle.head_usage(masks)
    handle.clear_recorded()
    return usage


def _balance(handle: HydraHandle, batch: TargetBatch, config: HydraTrainConfig) -> torch.Tensor:
    if config.balance == "none" or config.balance_coef == 0:
        return torch.zeros((), device=batch.input_ids.device)
    return handle.balance_loss(batch.attention_mask, kind=config.balance)


def _encoder(
    loaded: LoadedModel, config: HydraTrainConfig
) -> Callable[[Sequence[Example]], list[EncodedExample]]:
    def encode(examples: Sequence[Example]) -> list[EncodedExample]:
        return encode_examples(
            loaded.tokenizer,
            examples,
            seq2seq=loaded.is_seq2seq,
            max_length=config.max_length,
            use_chat_template=config.use_chat_template,
        )

    return encode


def hydra_front_matter(
    loaded: LoadedModel,
    hydra_config: HydraConfig,
    config: HydraTrainConfig,
    task: TaskInfo,
    *,
    steps: int,
    n_examples: int,
    usage: HeadUsage,
    final_loss: float | None,
    heldout: tuple[float | None, float | None, int],
) -> dict[str, Any]:
    """The YAML front matter of a trained Hydra module's card.

    ``library_name: loradex`` because stock PEFT cannot load a router; the registry reads
    ``loradex.kind: hydra`` and ``loradex.num_heads``.
    """
    training = training_table(config, n_examples=n_examples, steps=steps,
                              final_loss=final_loss, listed_last=("heads",))
    # The card's `datasets` are Hub dataset ids; local training files are listed in the loradex
    # block (task.datasets, with their sha256) instead.
    front = hub_front_matter(
        loaded, library_name="loradex", license=task.license or "apache-2.0",
        tags=task_tags(("loradex", "hydra-lora", "lora"), task), dataset=task.dataset,
    )
    block: dict[str, Any] = {
        "kind": "hydra",
        "num_heads": hydra_config.num_heads,
        "version": __version__,
        "task": {k: v for k, v in asdict(task).items() if v not in (None, ())},
        "training_files": dict(hydra_config.task.get("examples_per_dataset", {})),
        "training": training,
        "head_selection": dict(hydra_config.head_selection),
        "head_usage": usage.to_json_dict(),
    }
    held = heldout_record(*heldout)
    if held is not None:
        block["heldout"] = held
    front["loradex"] = block
    return front


def _card_body(
    front: dict[str, Any], selection: HeadCountChoice | None, usage: HeadUsage
) -> str:
    block = front["loradex"]
    n = block["num_heads"]
    lines = [
        block["task"].get("description")
        or f"A Hydra module (shared A, {n} B heads, a router) trained with loradex.",
        "",
        f"Base model: `{front['base_model']}`. Format: `docs/hydra-format.md` of loradex "
        "(`hydra_config.json` + `hydra_model.safetensors`). Load it with:",
        "",
        "```python",
        "from composer.hydra.format import load_hydra",
        "from composer.hydra.runtime import attach_hydra",
        "handle = attach_hydra(base_model, load_hydra('path/to/this/folder'))",
        "```",
        "",
        "## Training",
        "",
        settings_table(block["training"]),
        "",
        "## Number of heads",
        "",
    ]
    if selection is None:
        lines.append(f"Fixed by the user: N = {n}.")
    else:
        lines += [
            f"Chosen automatically: N = {selection.chosen}, from TF-IDF features of the "
            f"{selection.num_texts} training inputs, k-means for k = {selection.k[0]}.."
            f"{selection.k[-1]} and the elbow of the inertia curve (the point farthest below "
            "the chord).",
            "",
            "| k | inertia | distance below chord |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {inertia:.4f} | {dist:.4f} |"
            for k, inertia, dist in zip(
                selection.k, selection.inertia, selection.elbow_distance, strict=True
            )
        ]
    lines += [
        "",
        "## Head usage",
        "",
        "Share of (non-padding) training tokens whose largest gate is each head, and the mean "
        "gate, averaged over the wrapped layers:",
        "",
        "| head | top-1 share | mean gate |",
        "|---|---|---|",
    ]
    lines += [
        f"| {j} | {share:.3f} | {gate:.3f} |"
        for j, (share, gate) in enumerate(zip(usage.top1_share, usage.mean_gate, strict=True))
    ]
    lines.append(f"\nNormalised entropy of the top-1 shares: {usage.normalized_entropy:.3f}.")
    if "heldout" in block:
        lines += heldout_section(block["heldout"])
    return "\n".join(lines)
