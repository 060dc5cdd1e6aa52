"""Scoring a test split, side by side in one run: three passes over each prompt (greedy
generation, choice scoring, target loss) against one read (``composer.inference.read_examples``),
with each prompt read whole and with the prefix every prompt shares read once.

"separate" is how ``loradex eval`` and the study scored before: batched greedy generation with
left padding over prompts sorted by length (``generate_answers``), then the choices
(``choice_picks``) and the target loss (``sequence_logprobs``) in packed rows. "one read"
puts each prompt in one row of a left-padded batch with its choices and target after it, and
decodes the answers from that batch's KV cache. "shared" also reads the tokens every prompt
begins with (the 5 demonstrations, the chat template's system turn) once, and every row
attends to their KV cache. The answers and picks must be the same and the losses agree to
float rounding; the study's own scoring is the first two passes ("study s").

Prompts over the length limit (``--max-length``, 1,024 tokens by default) are cut differently
for an answer (room is left for the target) and for the choices, as they always were; such an
example's two prompts are two rows, and a cut prompt lost the shared beginning, so it is read
whole (causal_judgement with 5 demonstrations, 1,800 tokens).

Run:  .venv/bin/python benchmarks/read_bench.py [--examples 16] [--tasks date_understanding ...]
          [--max-length 4096] [--base-model .models/gemma-3-270m-q4_k_m.gguf]
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

from composer.data import Example, encode_examples, load_examples  # noqa: E402
from composer.inference import (  # noqa: E402
    choice_picks,
    generate_answers,
    read_examples,
    sequence_logprobs,
    shared_prefix,
)
from composer.models import LoadedModel, ModelSpec, load_base_model  # noqa: E402


def separately(
    loaded: LoadedModel, test: list[Example], demos: list[Example], max_length: int
) -> tuple[list[str], list[str | None], list[float], float, float]:
    """Answers, picks and target losses by the three passes; the time of the first two (the
    study's scoring) and of all three (eval's)."""
    start = time.perf_counter()
    encoded = encode_examples(loaded.tokenizer, test, seq2seq=False, max_length=max_length,
                              demonstrations=demos)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt_ids))
    longest = max(len(e.target_ids) for e in encoded)
    got = generate_answers(loaded, [encoded[i].prompt_ids for i in order],
                           max_new_tokens=longest + 8)
    answers = [""] * len(test)
    for i, answer in zip(order, got, strict=True):
        answers[i] = answer
    picks = choice_picks(loaded, test, demonstrations=demos, max_length=max_length)
    study = time.perf_counter() - start
    nll = [-x for x in sequence_logprobs(loaded, encoded)]
    return answers, picks, nll, study, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-dir", type=Path, default=ROOT.parent / "shared" / "data" / "bbh")
    parser.add_argument("--tasks", nargs="+",
                        default=["boolean_expressions", "date_understanding", "causal_judgement"])
    parser.add_argument("--examples", type=int, default=16, help="test examples per task")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--max-length", type=int, default=1024, help="prompt token limit")
    parser.add_argument("--base-model", default=None,
                        help="local folder, Hub id or .gguf file (default: the embedded SmolLM2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_base_model(ModelSpec(args.base_model))
    loaded.model.eval()
    warm = load_examples(args.tasks_dir / f"{args.tasks[0]}.jsonl")[:2]
    separately(loaded, warm, [], args.max_length)  # first calls pay one-off costs
    read_examples(loaded, warm, demonstrations=warm[:1])
    read_examples(loaded, warm, share_prefix=False)
    print(f"# Test-split scoring: {loaded.name}, {loaded.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, max length "
          f"{args.max_length}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| task | prompts | examples | prompt tokens (mean) | shared | cut | study s | eval s | "
          "one read s | shared s | vs eval | vs one read | same answers | same picks | "
          "max loss diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        examples = load_examples(args.tasks_dir / f"{task}.jsonl")
        demos, test = examples[:5], examples[5 : 5 + args.examples]
        for label, shots in (("zero-shot", []), ("5-shot", demos)):
            answers, picks, nll, study, full = separately(loaded, test, shots, args.max_length)
            seconds, reads = [], []
            for share in (False, True):
                start = time.perf_counter()
                reads.append(read_examples(loaded, test, demonstrations=shots,
                                           max_length=args.max_length, share_prefix=share))
                seconds.append(time.perf_counter() - start)
            whole, shared = seconds
            read = reads[1]
            encoded = encode_examples(loaded.tokenizer, test, seq2seq=False, demonstrations=shots,
                                      max_length=args.max_length)
            uncut = [e.prompt_ids for e, c in zip(encoded, read.prompt_cut, strict=True) if not c]
            full_prompts = encode_examples(loaded.tokenizer, test, seq2seq=False,
                                           demonstrations=shots)
            tokens = statistics.mean(len(e.prompt_ids) for e in full_prompts)
            same_answers = read.answers == answers == reads[0].answers
            same_picks = read.picks == picks == reads[0].picks
            diff = max(abs(a - b) for r in reads
                       for a, b in zip(nll, r.target_nll, strict=True))
            print(f"| {task} | {label} | {len(test)} | {tokens:.0f} | {shared_prefix(uncut)} | "
                  f"{sum(read.prompt_cut)} | {study:.1f} | {full:.1f} | {whole:.1f} | "
                  f"{shared:.1f} | {full / shared:.2f}x | {whole / shared:.2f}x | "
                  f"{same_answers} | {same_picks} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
