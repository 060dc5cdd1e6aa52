"""Hydra vs plain LoRA: parameter count, and training time per step side by side in one run.

    .venv/bin/python benchmarks/hydra_bench.py [--heads 4] [--rank 8] [--rounds 8]

1. Parameters of a Hydra module (shared A of rank r, N heads, routers) against a LoRA of the
   same total rank N*r and a LoRA of rank r, on the base model's q/v projections.
2. One adapted layer alone (forward + backward on a batch of tokens): our HydraLinear against
   PEFT's LoRA layer at rank N*r and at rank r.
3. One full training step (forward, loss on target tokens, backward, AdamW) of the base model
   on the same batch of real upstream examples: Hydra (N heads, rank r, balance term on)
   against PEFT LoRA at rank N*r and at rank r. The variants run interleaved, round after
   round, so load from other processes hits them alike; the median per variant is reported.

Prints a markdown table for BENCHMARKS.md. Never run as a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

DATA = Path("/work/shared/data/upstream")
TASKS = (
    "linguistic_mappings__past_tense",
    "physics",
    "intent_recognition",
    "implicatures",
)


def lora_params(shapes: list[tuple[int, int]], rank: int) -> int:
    """Parameters of a LoRA of ``rank`` on layers of ``(in, out)`` shapes."""
    return sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)


def hydra_params(shapes: list[tuple[int, int]], rank: int, heads: int) -> tuple[int, int]:
    """(A + heads, router weight + bias) parameters of a Hydra module."""
    adapter = sum(rank * fan_in + heads * fan_out * rank for fan_in, fan_out in shapes)
    router = sum(heads * fan_in + heads for fan_in, _ in shapes)
    return adapter, router


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def interleaved(
    variants: dict[str, Callable[[], None]], rounds: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Run each variant once per round (rotating the order).

    Returns, per variant, wall seconds and process CPU seconds per call: on a machine shared
    with other jobs the wall time swings with their load, the CPU time much less.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            variants[name]()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def layer_bench(fan_in: int, fan_out: int, tokens: int, rank: int, heads: int, rounds: int):
    """Forward + backward of one adapted linear layer."""
    from peft import LoraConfig, get_peft_model

    from composer.hydra.runtime import attach_hydra, init_hydra_module
    from registry.hydra import HydraConfig

    torch.manual_seed(0)
    x = torch.randn(tokens, fan_in)

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(fan_in, fan_out, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    def peft_layer(r: int) -> nn.Module:
        model = get_peft_model(One(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"],
                                                 init_lora_weights=False))
        return model

    hydra_model = One().requires_grad_(False)
    config = HydraConfig("bench", ("proj",), rank=rank, alpha=2 * rank, num_heads=heads)
    module = init_hydra_module(hydra_model, config)
    for layer in module.layers.values():
        layer.lora_B.normal_()
    attach_hydra(hydra_model, module, trainable=True)
    models = {
        f"Hydra N={heads} r={rank}": hydra_model,
        f"PEFT LoRA r={heads * rank}": peft_layer(heads * rank),
        f"PEFT LoRA r={rank}": peft_layer(rank),
    }

    def step(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            out = model(x)
            out.square().mean().backward()

        return run

    return interleaved({k: step(m) for k, m in models.items()}, rounds, warmup=3)


def model_bench(loaded, rank: int, heads: int, rounds: int, batch_size: int, max_length: int):
    """One full training step per variant on the same batch."""
    from peft import LoraConfig, get_peft_model

    from composer.batching import make_batch, mean_target_loss
    from composer.data import encode_examples, load_examples
    from composer.hydra.runtime import attach_hydra, init_hydra_module
    from registry.hydra import HydraConfig

    per_task = max(1, batch_size // len(TASKS))
    examples = [ex for task in TASKS for ex in load_examples(DATA / f"{task}.jsonl")[:per_task]]
    encoded = encode_examples(
        loaded.tokenizer, examples[:batch_size], seq2seq=False, max_length=max_length
    )
    batch = make_batch(encoded, loaded.model, packed=False)
    n_tokens = int(batch.attention_mask.sum())

    base = loaded.model.requires_grad_(False)
    hydra_model = copy.deepcopy(base)
    config = HydraConfig(
        loaded.name, ("q_proj", "v_proj"), rank=rank, alpha=2 * rank, num_heads=heads
    )
    handle = attach_hydra(hydra_model, init_hydra_module(hydra_model, config), trainable=True)
    hydra_opt = torch.optim.AdamW(handle.parameters(), lr=1e-4)

    def hydra_step() -> None:
        with handle.recording():
            loss = mean_target_loss(hydra_model, batch)[0]
        loss = loss + 0.1 * handle.balance_loss(batch.attention_mask)
        hydra_opt.zero_grad(set_to_none=True)
        loss.backward()
        handle.clear_recorded()
        hydra_opt.step()

    def peft_step(r: int) -> Callable[[], None]:
        peft_model = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                       task_type="CAUSAL_LM"),
        )
        hf_model = peft_model.get_base_model()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def run() -> None:
            loss = mean_target_loss(hf_model, batch)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    variants = {
        f"Hydra N={heads} r={rank}": hydra_step,
        f"PEFT LoRA r={heads * rank}": peft_step(heads * rank),
        f"PEFT LoRA r={rank}": peft_step(rank),
    }
    return interleaved(variants, rounds, warmup=2), n_tokens, len(encoded)


def print_times(times: dict, reference: str, unit: str, divide: float) -> None:
    """A markdown table of median wall and CPU time per variant, and ratios to ``reference``."""
    print(f"| variant | wall {unit} | wall vs LoRA r=N·r | CPU {unit} | CPU vs LoRA r=N·r |")
    print("|---|---|---|---|---|")
    ref_wall = median_ms(times[reference]["wall"])
    ref_cpu = median_ms(times[reference]["cpu"])
    for name, t in times.items():
        wall, cpu = median_ms(t["wall"]), median_ms(t["cpu"])
        print(f"| {name} | {wall / divide:.3f} | {wall / ref_wall:.2f}x | {cpu / divide:.3f} | "
              f"{cpu / ref_cpu:.2f}x |")


def mixture_run(loaded, rank: int, steps: int, batch_size: int, max_length: int) -> None:
    """Hydra (heads='auto') vs LoRA r=N*r trained on the same mixture of upstream tasks."""
    import tempfile

    from composer.data import load_examples, split_holdout
    from composer.hydra.training import HydraTrainConfig, train_hydra
    from composer.train import TrainConfig, train_lora

    work = Path(tempfile.mkdtemp(prefix="hydra-mix-"))
    train_files, train_all, heldout = [], [], []
    for task in TASKS:
        train, held = split_holdout(load_examples(DATA / f"{task}.jsonl"), 0.05, seed=0)
        path = work / f"{task}.jsonl"
        path.write_text("".join(
            json.dumps({"input": ex.input, "target": ex.target}) + "\n" for ex in train
        ))
        train_files.append(path)
        train_all.extend(train)
        heldout.extend(held[:8])
    hydra_cfg = HydraTrainConfig(heads="auto", rank=rank, steps=steps, batch_size=batch_size,
                                 max_length=max_length, lr=1e-3)
    hydra = train_hydra(loaded, train_files, work / "hydra", hydra_cfg, heldout=heldout,
                        progress=False)
    n = hydra.num_heads
    lora_cfg = TrainConfig(rank=n * rank, steps=steps, batch_size=batch_size,
                           max_length=max_length, lr=1e-3)
    lora = train_lora(loaded, train_all, work / "lora", lora_cfg, heldout=heldout,
                      progress=False)
    assert hydra.head_selection is not None
    print(f"\n## Trained on the mixture of {len(TASKS)} upstream tasks "
          f"({len(train_all)} examples), {steps} steps of {batch_size}, lr 1e-3\n")
    print(f"heads='auto' chose N = {n} (k = {list(hydra.head_selection.k)}, inertia "
          f"{[round(v, 1) for v in hydra.head_selection.inertia]})\n")
    print("| module | trainable params | held-out loss before | after | seconds | "
          "head usage (top-1 share) |")
    print("|---|---|---|---|---|---|")
    hydra_params_n = sum(p.numel() for p in load_hydra_module(work / "hydra"))
    print(f"| Hydra N={n} r={rank} | {hydra_params_n:,} | {hydra.heldout_loss_before:.4f} | "
          f"{hydra.heldout_loss_after:.4f} | {hydra.seconds:.0f} | "
          f"{[round(p, 3) for p in hydra.head_usage.top1_share]} |")
    print(f"| LoRA r={n * rank} | {lora_params_in(work / 'lora'):,} | "
          f"{lora.heldout_loss_before:.4f} | {lora.heldout_loss_after:.4f} | "
          f"{lora.seconds:.0f} | |")


def load_hydra_module(folder: Path) -> list[torch.Tensor]:
    from composer.hydra.format import load_hydra

    return list(load_hydra(folder).state_dict().values())


def lora_params_in(folder: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(folder / "adapter_model.safetensors")).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--layer-rounds", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--mixture-steps", type=int, default=0,
                        help="also train Hydra (auto N) and LoRA r=N*r on an upstream mixture")
    parser.add_argument("--only-mixture", action="store_true", help="skip the timing parts")
    parser.add_argument("--json", type=Path, default=None, help="also write raw figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from composer.models import load_base_model

    loaded = load_base_model()
    model = loaded.model
    shapes = [
        (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "v_proj")
    ]
    n, r = args.heads, args.rank
    adapter, router = hydra_params(shapes, r, n)
    print(f"# Hydra benchmark: {loaded.name}, q_proj+v_proj ({len(shapes)} layers), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("## Parameters\n")
    print("| module | parameters | vs LoRA r=N·r | adapter MFLOP / token (forward) |")
    print("|---|---|---|---|")
    lora_nr = lora_params(shapes, n * r)
    # Multiply-adds x 2 of the adapter path only (the base layer is the same for all).
    hydra_flops = sum(2 * (r * i + n * i + n * r * o) for i, o in shapes)
    rows = [
        (f"Hydra N={n}, r={r} (A + heads)", adapter, None),
        (f"Hydra N={n}, r={r} (A + heads + routers)", adapter + router, hydra_flops),
        (f"LoRA r={n * r} (same total rank)", lora_nr, 2 * lora_nr),
        (f"LoRA r={r}", lora_params(shapes, r), 2 * lora_params(shapes, r)),
    ]
    for label, count, flops in rows:
        mflops = "" if flops is None else f"{flops / 1e6:.2f}"
        print(f"| {label} | {count:,} | {count / lora_nr:.3f} | {mflops} |")

    if args.mixture_steps:
        mixture_run(loaded, r, args.mixture_steps, args.batch_size, args.max_length)
    if args.only_mixture:
        return
    fan_in, fan_out = shapes[0]
    tokens = 512
    layer_times = layer_bench(fan_in, fan_out, tokens, r, n, args.layer_rounds)
    print(f"\n## One layer [{fan_in} -> {fan_out}], {tokens} tokens, forward + backward "
          f"(median of {args.layer_rounds}, interleaved)\n")
    print_times(layer_times, f"PEFT LoRA r={n * r}", "ms", 1.0)

    step_times, n_tokens, n_examples = model_bench(
        loaded, r, n, args.rounds, args.batch_size, args.max_length
    )
    print(f"\n## Full training step, {n_examples} upstream examples ({n_tokens} tokens), "
          f"median of {args.rounds} interleaved rounds\n")
    print_times(step_times, f"PEFT LoRA r={n * r}", "s", 1000.0)
    if args.json:
        params = {label: count for label, count, _ in rows}
        raw = {"params": params, "layer": layer_times, "step": step_times}
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
