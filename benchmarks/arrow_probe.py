"""Would a data-free weight-space signal help retrieval? (issue 22, the optional Arrow item)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/arrow_probe.py \\
        --out benchmarks/results/retrieval_arrow_2026-12-07.json

Arrow routing (Ostapenko et al., 2024, "Towards Modular LLMs by Building and Reusing a Library
of LoRAs") gives each LoRA module, per adapted layer, a prototype: the top right singular
vector ``v`` of its update ``dW = B A`` (the input direction it amplifies most). A token whose
hidden state ``x`` (the input of that layer) lines up with ``v`` is one the module acts on. As
a retrieval signal for a few-shot task: run the base model once over the examples, and score
each module by how its prototypes line up with the examples' token states.

This probe measures it the way ``retrieval_bench.py recall`` measures the signatures: for each
of the library's 30 tasks, 5 examples from its held-out split (the same 5 seeds and draws),
Recall@1/5/20 of the task's own module among the 30, against the card and data signatures on
the same queries. Variants:

- ``tokens``: the examples' input text alone, or the whole chat-template prompt;
- ``score``: ``cos``, the mean over tokens and layers of ``|cos(v, x)|``; ``route``, Arrow's
  own routing: per token and layer a softmax over the modules of ``|v . x|``, averaged (the
  share of routing each module would get).

Prototypes are sign-free (``|.|``), as in Arrow. Only modules on the base the states come from
can be scored, so distractor pools of other bases or data-only modules do not apply here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "data" / "upstream"
LIBRARY = ROOT / "library"
TARGETS = ("q_proj", "v_proj")


def prototypes(folder: Path, n_layers: int) -> torch.Tensor:
    """Per layer and target, the unit top right singular vector of ``B A``: (layers, targets, d)."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    rows = []
    for layer in range(n_layers):
        per_target = []
        for target in TARGETS:
            stem = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            a = tensors[f"{stem}.lora_A.weight"].double()  # (r, d_in)
            b = tensors[f"{stem}.lora_B.weight"].double()  # (d_out, r)
            # dW = B A = Q (R A): the right singular vectors of R A are those of dW.
            _q, r = torch.linalg.qr(b)
            _u, _s, vh = torch.linalg.svd(r @ a, full_matrices=False)
            per_target.append(vh[0].float())
        rows.append(torch.stack(per_target))
    return torch.stack(rows)


def layer_states(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The input of every layer's q_proj (= v_proj's) for each token: (layers, tokens, d)."""
    captured: list[torch.Tensor] = []
    hooks = [layer.self_attn.q_proj.register_forward_pre_hook(
        lambda _m, args: captured.append(args[0][0].detach()))
        for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(captured)


def scores(protos: torch.Tensor, states: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """Per module, the ``cos`` and ``route`` scores of one query (its examples' states), over
    all layers and over every fourth layer (a quarter of the prototypes to store)."""
    # protos: (modules, layers, targets, d); each state: (layers, tokens, d).
    x = torch.cat(states, dim=1)  # (layers, all tokens, d)
    dots = torch.einsum("mltd,lnd->mltn", protos, x).abs()  # (modules, layers, targets, tokens)
    cos = dots / x.norm(dim=-1).clamp_min(1e-12)[None, :, None, :]
    route = torch.softmax(dots, dim=0)
    out = {"cos": cos.mean(dim=(1, 2, 3)).numpy(), "route": route.mean(dim=(1, 2, 3)).numpy()}
    out["route, every 4th layer"] = route[:, ::4].mean(dim=(1, 2, 3)).numpy()
    return out


def zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / max(float(values.std()), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from composer.data import load_examples, prompt_ids
    from composer.library import built_spec, split_task
    from composer.models import load_base_model
    from registry.adapter_files import inspect_adapter_folder
    from registry.embedders import load_embedder
    from registry.signatures import card_text, folder_signature

    started = time.perf_counter()
    loaded = load_base_model()
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    n_layers = len(model.model.layers)
    tasks = sorted(p.parent.name for p in LIBRARY.glob("*/adapter_config.json"))
    protos = torch.stack([prototypes(LIBRARY / t, n_layers) for t in tasks])
    spec = built_spec(UPSTREAM, LIBRARY)
    heldout = {t: split_task(load_examples(UPSTREAM / f"{t}.jsonl"), spec.test_size,
                             spec.split_seed)[1] for t in tasks}
    embedder = load_embedder()
    data_sig = np.stack([folder_signature(LIBRARY / t).centroid() for t in tasks])  # type: ignore[union-attr]
    card_sig = np.stack(embedder.embed([card_text(inspect_adapter_folder(LIBRARY / t))
                                        for t in tasks]))
    setup = time.perf_counter() - started

    ranks: dict[str, list[int]] = {}
    forward_seconds = 0.0
    for seed in range(args.seeds):
        for task in tasks:
            draw = random.Random(seed).sample(heldout[task], 5)  # the recall bench's draw
            query = np.asarray(embedder.embed([e.input[:2000] for e in draw])).mean(0)
            query /= np.linalg.norm(query)
            per_variant = {"data signature": data_sig @ query, "card signature": card_sig @ query}
            tick = time.perf_counter()
            for tokens in ("input", "prompt"):
                states = []
                for example in draw:
                    text = example.input[:2000]
                    ids = (tokenizer(text, add_special_tokens=False)["input_ids"]
                           if tokens == "input" else list(prompt_ids(tokenizer, text)))
                    states.append(layer_states(model, ids))
                for kind, values in scores(protos, states).items():
                    per_variant[f"arrow {kind}, {tokens} tokens"] = values
            forward_seconds += time.perf_counter() - tick
            # A module with a card and weights: both signals, each standardised over the pool.
            per_variant["card + arrow route (input tokens), z-sum"] = zscore(
                per_variant["card signature"]) + zscore(per_variant["arrow route, input tokens"])
            own = tasks.index(task)
            for name, values in per_variant.items():
                # Ties count against the own module, as in the recall bench.
                ranks.setdefault(name, []).append(int((values >= values[own]).sum()) - 1)
        print(f"seed {seed} done", flush=True)

    rows = []
    for name, found in ranks.items():
        found_arr = np.asarray(found)
        rows.append({"signal": name, "pool_size": len(tasks),
                     **{f"recall@{k}": round(float((found_arr < k).mean()), 3) for k in (1, 5, 20)},
                     "mean_rank": round(float(found_arr.mean()) + 1, 2), "queries": len(found)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"tasks": tasks, "seeds": args.seeds, "setup_seconds": round(setup, 1),
              "forward_seconds": round(forward_seconds, 1), "rows": rows,
              "per_task_rank": {name: dict(zip([f"{s}:{t}" for s in range(args.seeds)
                                                for t in tasks], found, strict=True))
                                for name, found in ranks.items()}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
