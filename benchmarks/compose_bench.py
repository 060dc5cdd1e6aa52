"""Composer speed, side by side in one run: the reference LoraHub against loradex's composer.

Parts (every figure is from this one process, same models, modules and examples):

seq2seq (a small T5-style model saved locally, N local rank-16 q/v modules):
  (a0) the reference itself, PyPI ``lorahub==0.1.0``: ``lorahub_learning`` end to end, and its
       search alone (its own loading/caching functions, then its NGOpt loop over ``get_score``);
  ours: ``composer.compose.compose`` after the model is loaded (same budget).

causal (the embedded SmolLM2-135M-Instruct, N rank-16 q/v modules, 5 examples):
  (a)  a faithful re-implementation of the reference step for causal models: rebuild the
       composed state dict in Python, ``set_peft_model_state_dict``, full-logit loss of the
       padded batch;
  (b)  our step: one matmul into the flat buffer behind the live LoRA, packed forward, LM head
       at target positions only;
  (c)  our batched generation: a whole CMA-ES population in one forward (per evaluation);
  (d)  the floor: the bare base model's forward of the same padded batch with full logits;
  plus full 40-evaluation composes ((a)-style vs ours), the composition overhead alone,
  bfloat16 vs float32 (speed and loss agreement) and torch.compile.

Run:  .venv/bin/python benchmarks/compose_bench.py [--candidates 20] [--budget 40]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from composer.batching import make_batch  # noqa: E402
from composer.candidates import read_candidate  # noqa: E402
from composer.compose import ComposeConfig, ComposeSession, compose  # noqa: E402
from composer.data import Example, encode_examples  # noqa: E402
from composer.methods import get_method  # noqa: E402
from composer.models import LoadedModel, ModelSpec, load_base_model  # noqa: E402
from composer.objectives import get_objective  # noqa: E402
from composer.search import SearchConfig  # noqa: E402

EXAMPLES = [
    Example(
        "Rewrite the sentence in the past tense, keeping every other word as it is: "
        "The children walk to school every morning and play football after lunch.",
        "The children walked to school every morning and played football after lunch.",
    ),
    Example(
        "Is the following statement true or false? Water boils at 100 degrees Celsius at "
        "sea level, and ice melts at 0 degrees. Answer with one word.",
        "True",
    ),
    Example(
        "Sort these words alphabetically and separate them by spaces: pear apple mango "
        "kiwi banana cherry.",
        "apple banana cherry kiwi mango pear",
    ),
    Example(
        "Translate into French: I would like a cup of coffee and a croissant, please.",
        "Je voudrais une tasse de café et un croissant, s'il vous plaît.",
    ),
    Example(
        "What is the sum of 17 and 25? Give only the number without any explanation.",
        "42",
    ),
]


def note(message: str, partial: dict[str, Any] | None = None) -> None:
    """Progress on stderr (stdout is the JSON result), with the figures measured so far."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    if partial:
        print(json.dumps(partial, default=float), file=sys.stderr, flush=True)


def timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_random_loras(
    model: torch.nn.Module, folder: Path, n: int, rank: int, targets: list[str], task_type: str,
    base_name: str,
) -> list[Path]:
    """Save ``n`` PEFT LoRA modules with random non-zero A and B (PEFT's own save)."""
    from peft import LoraConfig, get_peft_model

    paths = []
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                        init_lora_weights=False, task_type=task_type)
    peft_model = get_peft_model(model, config)
    params = [(name, p) for name, p in peft_model.named_parameters() if "lora_" in name]
    for i in range(n):
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for _name, p in params:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.02 / rank**0.5))
        out = folder / f"module{i:02d}"
        peft_model.save_pretrained(out)
        cfg = json.loads((out / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = base_name
        (out / "adapter_config.json").write_text(json.dumps(cfg))
        paths.append(out)
    peft_model.unload()
    return paths


# --------------------------------------------------------------------------- seq2seq: a0


def build_t5(folder: Path) -> Path:
    """A small T5-style model (random weights) and a T5-like BPE tokenizer, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<pad>", "</s>", "<unk>"],
                                  show_progress=False)
    corpus = [f"{e.input} {e.target}" for e in EXAMPLES] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(fast), d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                      num_decoder_layers=6, num_heads=8, pad_token_id=fast.pad_token_id,
                      eos_token_id=fast.eos_token_id, decoder_start_token_id=fast.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def bench_seq2seq(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    """(a0): the reference lorahub package against our composer on a local T5-style model."""
    import nevergrad as ng
    from lorahub.algorithm import (
        default_get_loss,
        default_l1_regularization,
        get_score,
        load_base_model_and_lora_modules,
        load_dataset,
        lorahub_learning,
    )
    from transformers import AutoModelForSeq2SeqLM

    base = build_t5(work / "t5-base")
    model = AutoModelForSeq2SeqLM.from_pretrained(base)
    mods = make_random_loras(model, work / "t5-mods", args.candidates, 16, ["q", "v"],
                             "SEQ_2_SEQ_LM", str(base))
    del model
    inputs = [e.input for e in EXAMPLES]
    outputs = [e.target for e in EXAMPLES]
    folders = [str(p) for p in mods]
    quiet = contextlib.redirect_stdout(io.StringIO())

    note("seq2seq: reference lorahub_learning end to end")
    # The reference end to end (loads the model and modules itself).
    start = time.perf_counter()
    with quiet:
        lorahub_learning(folders, inputs, outputs, args.budget, model_name_or_path=str(base),
                         seed=42)
    ref_total = time.perf_counter() - start

    # The reference's search alone: its loader, its dataset, its NGOpt loop over get_score.
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        peft_model, tokenizer, cache = load_base_model_and_lora_modules(folders, str(base))
        ref_load = time.perf_counter() - start
        dataset = load_dataset(inputs, outputs, tokenizer)
        score = lambda w: get_score(w, peft_model, cache, dataset, None,  # noqa: E731
                                    default_get_loss, default_l1_regularization)
        instrum = ng.p.Array(init=[0] * len(folders), upper=[1.5] * len(folders),
                             lower=[-1.5] * len(folders))
        optimizer = ng.optimizers.NGOpt(parametrization=instrum, budget=args.budget)
        start = time.perf_counter()
        optimizer.minimize(score, verbosity=0)
        ref_search = time.perf_counter() - start
        w0 = np.zeros(len(folders))
        ref_step = timeit(lambda: score(w0), args.repeats)

    note("seq2seq: ours")
    start = time.perf_counter()
    loaded = load_base_model(ModelSpec(name_or_path=str(base), device="cpu", dtype="float32"))
    our_load = time.perf_counter() - start
    cands = [read_candidate(p) for p in mods]
    config = ComposeConfig(search=SearchConfig(budget=args.budget, seed=0),
                           use_chat_template=False)
    start = time.perf_counter()
    result = compose(loaded, cands, EXAMPLES, config, progress=False)
    ours = time.perf_counter() - start
    objective = get_objective("lm")
    objective.prepare(loaded, EXAMPLES, use_chat_template=False)
    with ComposeSession(loaded, cands, get_method("lorahub")) as session:
        our_step = timeit(lambda: session.losses(objective, w0[None]), args.repeats)
    results["seq2seq"] = {
        "model": "T5-style, d_model 512, 6+6 layers, random init, saved locally",
        "candidates": len(folders),
        "budget": args.budget,
        "reference_lorahub_learning_total_s": ref_total,
        "reference_load_s": ref_load,
        "reference_search_s": ref_search,
        "reference_step_s": ref_step,
        "ours_load_s": our_load,
        "ours_compose_s": ours,
        "ours_step_s": our_step,
        "ours_best_loss": result.search.loss,
        "speedup_search": ref_search / ours,
        "speedup_step": ref_step / our_step,
    }


# --------------------------------------------------------------------------- causal: a-d


class ReferenceStyleCausal:
    """The reference step, re-implemented faithfully for a causal model.

    Per evaluation: rebuild the composed state dict key by key in Python, load it with
    ``set_peft_model_state_dict``, and take the loss of the padded batch from full logits.
    """

    def __init__(self, loaded: LoadedModel, mods: list[Path], examples: list[Example]) -> None:
        from peft import PeftModel, get_peft_model_state_dict

        self.model = PeftModel.from_pretrained(loaded.model, str(mods[0]))
        self.model.eval()
        self.cache = []
        for path in mods:
            # As the reference: load each module into the model and keep its state dict.
            self.model.load_adapter(str(path), adapter_name="tmp")
            sd = get_peft_model_state_dict(self.model, adapter_name="tmp")
            self.cache.append({k: v.clone() for k, v in sd.items()})
            self.model.delete_adapter("tmp")
        self.model.set_adapter("default")
        encoded = encode_examples(loaded.tokenizer, examples, seq2seq=False)
        width = max(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
        pad = loaded.tokenizer.pad_token_id
        ids = torch.full((len(encoded), width), pad)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), -100)
        for i, e in enumerate(encoded):
            seq = list(e.prompt_ids) + list(e.target_ids)
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(e.prompt_ids) : len(seq)] = torch.tensor(e.target_ids)
        self.batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        self.loaded = loaded

    def step(self, weights: np.ndarray) -> float:
        from peft import set_peft_model_state_dict

        keys = self.cache[0].keys()
        final: dict[str, torch.Tensor] = {}
        for i, sd in enumerate(self.cache):
            for key in keys:
                final[key] = weights[i] * sd[key] if i == 0 else final[key] + weights[i] * sd[key]
        set_peft_model_state_dict(self.model, final)
        with torch.no_grad():
            return float(self.model(**self.batch).loss)

    def close(self) -> None:
        self.loaded.model = self.model.unload()


def bench_causal(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    """(a)-(d) on the embedded SmolLM2."""
    import nevergrad as ng

    start = time.perf_counter()
    loaded = load_base_model(ModelSpec(dtype="float32", device="cpu"))
    load_s = time.perf_counter() - start
    mods = make_random_loras(loaded.model, work / "smol-mods", args.candidates, 16,
                             ["q_proj", "v_proj"], "CAUSAL_LM", loaded.name)
    cands = [read_candidate(p) for p in mods]
    n = len(cands)
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.5, 0.5, size=n)
    objective = get_objective("lm")
    objective.prepare(loaded, EXAMPLES, use_chat_template=True)
    batch = objective.batch
    encoded = encode_examples(loaded.tokenizer, EXAMPLES, seq2seq=False)
    padded = make_batch(encoded, loaded.model, packed=False)
    n_target = len(batch.target_ids)
    out: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (embedded GGUF, de-quantised to float32)",
        "load_s": load_s,
        "candidates": n,
        "examples": len(EXAMPLES),
        "tokens_packed": int(batch.input_ids.numel()),
        "tokens_padded": int(padded.input_ids.numel()),
        "target_tokens": n_target,
    }

    note("causal: model and modules ready; timing steps")
    # (d) the floor: bare base forward of the padded batch with full logits.
    attn = padded.attention_mask

    def floor() -> None:
        with torch.inference_mode():
            loaded.model(input_ids=padded.input_ids, attention_mask=attn, use_cache=False)

    # (b) our step, (c) batched, overhead of composing alone.
    population = args.population
    with ComposeSession(loaded, cands, get_method("lorahub"), max_groups=population) as session:
        wp = rng.uniform(-0.5, 0.5, size=(population, n))
        session.set_weights(w[None])
        ours_loss = float(session.losses(objective, w[None])[0])
        t_b = timeit(lambda: session.losses(objective, w[None]), args.repeats)
        t_d = timeit(floor, args.repeats)
        t_c = timeit(lambda: session.losses(objective, wp), max(2, args.repeats // 3))
        session.set_weights(w[None])
        wt = torch.from_numpy(np.asarray(w[None]))
        t_compose = timeit(lambda: session.bank.set_weights(wt), 50, warmup=3)
        batched = session.losses(objective, wp)
        sequential = np.array([session.losses(objective, row[None])[0] for row in wp])
        out["batched_vs_sequential_max_abs_diff"] = float(np.abs(batched - sequential).max())

    note("causal: full composes (ours)", {"b": t_b, "c_batch": t_c, "d": t_d,
                                          "compose": t_compose, **out})
    # Full compose, ours (sequential and batched), from the loaded model: includes stacking
    # the candidates, tokenising, 40 evaluations and the export.
    start = time.perf_counter()
    compose(loaded, cands, EXAMPLES,
            ComposeConfig(search=SearchConfig(budget=args.budget, seed=0)), progress=False)
    full_ours = time.perf_counter() - start
    full_ours_batched = None
    if not args.skip_full_batched:
        start = time.perf_counter()
        compose(loaded, cands, EXAMPLES,
                ComposeConfig(search=SearchConfig(budget=args.budget, seed=0),
                              batched_population=True), progress=False)
        full_ours_batched = time.perf_counter() - start

    note("causal: reference-style step and full compose")
    # (a) reference-style step and full compose with the same optimizer.
    ref = ReferenceStyleCausal(loaded, mods, EXAMPLES)
    ref_loss = ref.step(w)
    t_a = timeit(lambda: ref.step(w), args.repeats)
    param = ng.p.Array(init=np.zeros(n), lower=-1.5, upper=1.5)
    param.random_state = np.random.RandomState(0)
    opt = ng.optimizers.registry["OldCMA"](parametrization=param, budget=args.budget)
    start = time.perf_counter()
    for _ in range(args.budget):
        cand = opt.ask()
        opt.tell(cand, ref.step(cand.value) + 0.05 * float(np.abs(cand.value).sum()))
    full_ref = time.perf_counter() - start
    ref.close()

    out.update({
        "a_reference_step_s": t_a,
        "b_our_step_s": t_b,
        "c_batched_per_eval_s": t_c / population,
        "c_batched_population": population,
        "d_floor_full_logits_s": t_d,
        "compose_overhead_s": t_compose,
        "compose_overhead_share_of_step": t_compose / t_b,
        "loss_ours": ours_loss,
        "loss_reference_style": ref_loss,
        "full_compose_reference_style_s": full_ref,
        "full_compose_ours_s": full_ours,
        "full_compose_ours_batched_s": full_ours_batched,
        "full_speedup_vs_reference": full_ref / full_ours,
        "full_ours_vs_floor_x_budget": full_ours / (t_d * args.budget),
    })

    note("causal: bfloat16", out)
    # bfloat16 vs float32: speed and loss agreement of our step.
    if not args.skip_bf16:
        loaded.model.to(torch.bfloat16)
        loaded.dtype = torch.bfloat16
        with ComposeSession(loaded, cands, get_method("lorahub")) as session:
            bf_loss = float(session.losses(objective, w[None])[0])
            t_bf = timeit(lambda: session.losses(objective, w[None]), args.repeats)
        t_bf_floor = timeit(floor, args.repeats)
        loaded.model.to(torch.float32)
        loaded.dtype = torch.float32
        out.update({
            "bf16_our_step_s": t_bf,
            "bf16_floor_s": t_bf_floor,
            "bf16_loss": bf_loss,
            "bf16_loss_abs_diff": abs(bf_loss - ours_loss),
        })

    note("causal: torch.compile")
    # torch.compile of the backbone (compile time reported separately).
    if not args.skip_compile:
        backbone = loaded.model.model
        try:
            loaded.model.model = torch.compile(backbone, dynamic=False)
            with ComposeSession(loaded, cands, get_method("lorahub")) as session:
                start = time.perf_counter()
                c_loss = float(session.losses(objective, w[None])[0])
                out["compile_first_call_s"] = time.perf_counter() - start
                out["compile_our_step_s"] = timeit(lambda: session.losses(objective, w[None]),
                                                   args.repeats)
                out["compile_loss_abs_diff"] = abs(c_loss - ours_loss)
        except Exception as exc:  # report, do not hide: compile support varies by platform
            out["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            loaded.model.model = backbone
    results["causal"] = out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-seq2seq", action="store_true")
    parser.add_argument("--skip-causal", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--population", type=int, default=12,
                        help="weight vectors per batched forward in part (c)")
    parser.add_argument("--skip-full-batched", action="store_true",
                        help="skip the full batched-population compose (slow on a CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    with tempfile.TemporaryDirectory(prefix="compose-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_causal:
            bench_causal(args, work, results)
        if not args.skip_seq2seq:
            bench_seq2seq(args, work, results)
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
