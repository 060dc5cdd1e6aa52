"""Multiple-choice scoring speed, side by side in one run: each choice with its own copy of the
prompt against the choices of a question sharing one copy (``composer.batching.pack_causal``).

Both read the same options in packed rows of the same size limits; the only difference is the
order of the options. In question order, consecutive choices share their prompt, which is read
once; interleaved (choice 1 of every question, then choice 2, ...) no two neighbours share a
prompt, so every choice reads the whole prompt again, as scoring did before prompts were shared.
The scores of the two layouts must agree, and the picked choices must be the same.

Run:  .venv/bin/python benchmarks/choice_bench.py [--tasks date_understanding boolean_expressions]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from composer.data import (  # noqa: E402
    EncodedExample,
    encode_prompt,
    encode_target,
    load_examples,
    render_prompt,
)
from composer.inference import sequence_logprobs  # noqa: E402
from composer.models import LoadedModel, ModelSpec, load_base_model  # noqa: E402


def options_for(loaded: LoadedModel, path: Path, n: int) -> tuple[list[EncodedExample], list[int]]:
    """The (prompt, choice) sequences of the first ``n`` examples with choices, question order."""
    tok = loaded.tokenizer
    options: list[EncodedExample] = []
    owners: list[int] = []
    examples = [ex for ex in load_examples(path) if ex.choices][:n]
    for q, ex in enumerate(examples):
        assert ex.choices is not None
        prompt = tuple(encode_prompt(tok, render_prompt(tok, ex.input)))
        for choice in ex.choices:
            options.append(EncodedExample(prompt, tuple(encode_target(tok, choice, seq2seq=False))))
            owners.append(q)
    return options, owners


def interleaved(owners: list[int]) -> list[int]:
    """An order of the options in which no two neighbours belong to the same question."""
    rank: dict[int, int] = {}
    keyed = []
    for i, q in enumerate(owners):
        rank[q] = rank.get(q, -1) + 1
        keyed.append((rank[q], q, i))
    return [i for _, _, i in sorted(keyed)]


def picks(scores: list[float], owners: list[int]) -> list[int]:
    """Index of the best-scoring option of each question."""
    best: dict[int, int] = {}
    for i, q in enumerate(owners):
        if q not in best or scores[i] > scores[best[q]]:
            best[q] = i
    return [best[q] for q in sorted(best)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-dir", type=Path, default=ROOT.parent / "shared" / "data" / "bbh")
    parser.add_argument("--tasks", nargs="+", default=["date_understanding", "boolean_expressions"])
    parser.add_argument("--examples", type=int, default=48, help="questions per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_base_model(ModelSpec())
    loaded.model.eval()
    print(f"# Choice scoring: {loaded.name}, {loaded.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| task | questions | options | prompt tokens (mean) | per choice s | shared s | "
          "speed-up | max abs score diff | same picks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        options, owners = options_for(loaded, args.tasks_dir / f"{task}.jsonl", args.examples)
        order = interleaved(owners)
        shuffled = [options[i] for i in order]
        times: dict[str, list[float]] = {"separate": [], "shared": []}
        scores: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleave the two layouts, round by round
            start = time.perf_counter()
            got = sequence_logprobs(loaded, shuffled)
            times["separate"].append(time.perf_counter() - start)
            back = [0.0] * len(options)
            for i, score in zip(order, got, strict=True):
                back[i] = score
            scores["separate"] = back
            start = time.perf_counter()
            scores["shared"] = sequence_logprobs(loaded, options)
            times["shared"].append(time.perf_counter() - start)
        separate = statistics.median(times["separate"])
        shared = statistics.median(times["shared"])
        diff = max(abs(a - b) for a, b in zip(scores["separate"], scores["shared"], strict=True))
        same = picks(scores["separate"], owners) == picks(scores["shared"], owners)
        prompt_mean = statistics.mean(len(o.prompt_ids) for o in options)
        print(f"| {task} | {len(set(owners))} | {len(options)} | {prompt_mean:.0f} | "
              f"{separate:.2f} | {shared:.2f} | {separate / shared:.2f}x | {diff:.1e} | {same} |")


if __name__ == "__main__":
    main()
