"""Retrieval by task signature: own-module recall, and the index at scale (issue 22, items 1, 5).

    .venv/bin/python benchmarks/retrieval_bench.py recall --seeds 5
    .venv/bin/python benchmarks/retrieval_bench.py scale --sizes 1000,10000,100000 \\
        --db sqlite --db postgresql

``recall``: for each library task, 5 examples drawn from its held-out split (5 seeds) are the
query; Recall@1/5/20 of the task's own module, by data signature and by card signature,
among the library alone and among the library plus distractors: the Gemma 3 270M library
(same tasks, another base: shown with and without the base-model filter a real query
applies) and "modules" made from the upstream tasks the library was not trained on (each a
random 32 of a task's inputs, like a data signature; their centroids are averaged from one
embedding of each input, which equals embedding each sample apart up to float16 storage).

``scale``: synthetic unit-norm signatures for N modules, stored through the real store on
SQLite and PostgreSQL; index load time and memory, query latency p50/p95 (200 queries, the
whole registry as the pool), and the one-time embedding of 5 examples reported apart.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make the repo's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

UPSTREAM = ROOT.parent / "shared" / "data" / "upstream"
GEMMA = ROOT / "benchmarks" / "libraries" / "gemma-3-270m"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def _embed_cached(embedder: object, texts: list[str], cache: dict[str, np.ndarray]) -> np.ndarray:
    missing = [t for t in dict.fromkeys(texts) if t not in cache]
    if missing:
        for text, vector in zip(missing, embedder.embed(missing), strict=True):  # type: ignore[attr-defined]
            cache[text] = vector
    return np.stack([cache[t] for t in texts])


def recall(args: argparse.Namespace) -> dict[str, object]:
    from composer.data import load_examples
    from composer.library import built_spec, split_task
    from registry.adapter_files import inspect_adapter_folder
    from registry.embedders import load_embedder
    from registry.retrieval import SignatureIndex
    from registry.signatures import CARD, DATA, card_text, folder_signature

    embedder = load_embedder()
    library = ROOT / "library"
    spec = built_spec(UPSTREAM, library)
    tasks = sorted(p.parent.name for p in library.glob("*/adapter_config.json"))
    cache_file = args.cache
    cache: dict[str, np.ndarray] = {}
    if cache_file and cache_file.is_file():
        stored = np.load(cache_file, allow_pickle=False)
        cache = dict(zip(stored["texts"].tolist(), stored["vectors"], strict=True))
    started = time.perf_counter()

    def signatures(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        data = folder_signature(folder)
        assert data is not None, folder
        card = _embed_cached(embedder, [card_text(inspect_adapter_folder(folder))], cache)[0]
        return data.centroid(), card

    own = {t: signatures(library / t) for t in tasks}
    gemma = [signatures(GEMMA / t) for t in sorted(
        p.parent.name for p in GEMMA.glob("*/adapter_config.json"))]
    heldout = {t: split_task(load_examples(UPSTREAM / f"{t}.jsonl"), spec.test_size,
                             spec.split_seed)[1] for t in tasks}
    others = sorted(p.stem for p in UPSTREAM.glob("*.jsonl") if p.stem not in set(tasks))
    rng = np.random.default_rng(0)
    made_data: list[np.ndarray] = []
    made_card: list[np.ndarray] = []
    for task in others:
        inputs = [e.input[:2000] for e in load_examples(UPSTREAM / f"{task}.jsonl")][:400]
        vectors = _embed_cached(embedder, inputs, cache)
        # The card such a module would carry (as the library's say what task they learned).
        card = _embed_cached(embedder, [
            f"{task.replace('_', ' ')}. LoRA module for the BIG-bench task {task}. bigbench"],
            cache)[0]
        for _ in range(args.per_task):
            pick = rng.choice(len(vectors), size=min(32, len(vectors)), replace=False)
            made_data.append(_unit(vectors[pick].mean(0)))
            made_card.append(card)
    queries = {(seed, task): _unit(_embed_cached(
        embedder, [e.input[:2000] for e in random.Random(seed).sample(heldout[task], 5)],
        cache).mean(0)) for seed in range(args.seeds) for task in tasks}
    signing = time.perf_counter() - started
    if cache_file:
        np.savez(cache_file, texts=np.array(list(cache)), vectors=np.stack(list(cache.values())))

    d, c = 0, 1
    pools: dict[str, tuple[list[np.ndarray], list[str], bool]] = {}  # vectors, kinds, plain
    lib_data, lib_card = [own[t][d] for t in tasks], [own[t][c] for t in tasks]
    n_made = len(made_data)
    pools["data: library (30)"] = (lib_data, [DATA] * 30, True)
    pools["card: library (30)"] = (lib_card, [CARD] * 30, True)
    pools[f"data: library + {n_made} made"] = (lib_data + made_data, [DATA] * (30 + n_made), True)
    pools[f"card: library + {n_made} made"] = (lib_card + made_card, [CARD] * (30 + n_made), True)
    pools[f"data: library + {n_made} made + 30 Gemma twins, no base filter"] = (
        lib_data + made_data + [g[d] for g in gemma], [DATA] * (60 + n_made), True)
    # Mixed, as on a real Hub: half the library and half the made modules carry only a card
    # (odd library tasks; the second half of the made ones), the rest a data signature.
    half = n_made // 2
    mixed_vectors = [own[t][c] if i % 2 else own[t][d] for i, t in enumerate(tasks)]
    mixed_vectors += made_data[:half] + made_card[half:]
    mixed_kinds = [CARD if i % 2 else DATA for i in range(30)] + [DATA] * half + [CARD] * (
        n_made - half)
    pools[f"mixed: library + {n_made} made, half card-only, per-kind standardised"] = (
        mixed_vectors, mixed_kinds, True)
    pools[f"mixed: library + {n_made} made, half card-only, raw cosine"] = (
        mixed_vectors, mixed_kinds, False)
    rows = []
    for name, (vectors, kinds, plain) in pools.items():
        hits = {1: 0, 5: 0, 20: 0}
        n = 0
        for (_seed, task), query in queries.items():
            i = tasks.index(task)
            # Plain: the shipped ranking; else every module on one raw cosine scale.
            index = SignatureIndex("bench", [("", str(j)) for j in range(len(vectors))],
                                   kinds if plain else [DATA] * len(vectors), np.stack(vectors))
            hits_now = index.rank(query)
            ranked = [h.repo_id for h in hits_now]
            # Ties count against the own module: an exact twin is not a hit.
            score = {h.repo_id: h.score for h in hits_now}
            rank = ranked.index(str(i))
            rank += sum(1 for r in ranked[rank + 1:] if score[r] == score[str(i)])
            for k in hits:
                hits[k] += rank < k
            n += 1
        rows.append({"pool": name, "pool_size": len(index.keys),
                     **{f"recall@{k}": round(v / n, 3) for k, v in hits.items()},
                     "queries": n})
        print(json.dumps(rows[-1]), flush=True)
    return {"embedder": embedder.name, "tasks": len(tasks), "others_tasks": others,
            "made_per_task": args.per_task, "embedding_seconds": round(signing, 1),
            "rows": rows}


def _store(kind: str, tmp: Path) -> tuple[str, object]:
    from registry.schema import upgrade
    from registry.store import RegistryStore

    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
        upgrade(url)
        return url, RegistryStore.from_url(url)
    from tests.support.pg import make_pg_schema_url

    url, _schema = make_pg_schema_url()
    upgrade(url)
    return url, RegistryStore.from_url(url)


def _search_like_seconds(url: str, tmp: Path) -> float:
    """Wall time of ``loradex search --like`` in a fresh process (median of 3): start-up,
    embedder load, the examples' embedding, index load and query together."""
    import subprocess

    few = tmp / "few.jsonl"
    few.write_text("".join(json.dumps({"input": f"example {i} of a task", "target": "x"}) + "\n"
                           for i in range(5)))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "loradex", "--db", url, "search", "--like",
                        str(few), "--base-model", "org/base", "--limit", "5"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return round(sorted(times)[1], 2)


def scale(args: argparse.Namespace) -> dict[str, object]:
    from registry.embedders import load_embedder
    from registry.entities import Module, SearchQuery
    from registry.retrieval import SignatureIndex
    from registry.signatures import DATA, signature_from_array

    embedder = load_embedder()
    t0 = time.perf_counter()
    embedder.embed([f"example input number {i} about a task" for i in range(5)])
    embed_seconds = time.perf_counter() - t0
    rows = []
    for db in args.db:
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                _url, store = _store(db, Path(tmp))
                rng = np.random.default_rng(size)

                def modules(size: int = size, rng: np.random.Generator = rng):  # type: ignore[no-untyped-def]
                    for i in range(size):
                        vectors = _unit(rng.normal(size=(4, embedder.dim)).astype(np.float32))
                        yield Module(repo_id=f"synthetic/m{i:06d}", base_model="org/base",
                                     rank=8, target_modules=("q_proj", "v_proj"),
                                     signatures=(signature_from_array(DATA, embedder.name,
                                                                      vectors),))

                t0 = time.perf_counter()
                store.bulk_upsert(modules())  # type: ignore[attr-defined]
                write = time.perf_counter() - t0
                t0 = time.perf_counter()
                index = SignatureIndex.from_store(store, embedder.name)  # type: ignore[arg-type]
                pool = store.matching_keys(SearchQuery(base_model="org/base"))  # type: ignore[attr-defined]
                load = time.perf_counter() - t0
                t0 = time.perf_counter()
                pool_index = index.rows(pool)
                pool_rows = time.perf_counter() - t0
                latencies = []
                for q in range(args.queries):
                    query = _unit(np.random.default_rng(q).normal(size=(5, embedder.dim)))
                    t0 = time.perf_counter()
                    hits = index.rank(query, rows=pool_index, limit=20)
                    latencies.append(time.perf_counter() - t0)
                assert len(hits) == 20
                store.engine.dispose()  # type: ignore[attr-defined]
                end_to_end = _search_like_seconds(_url, Path(tmp)) if args.end_to_end else None
                latencies.sort()
                rows.append({
                    "db": db, "modules": size, "write_seconds": round(write, 1),
                    "index_load_seconds": round(load, 2),
                    "pool_rows_seconds": round(pool_rows, 3),
                    "index_mb": round(index.nbytes / 1e6, 1),
                    "query_ms_p50": round(1000 * latencies[len(latencies) // 2], 2),
                    "query_ms_p95": round(1000 * latencies[int(len(latencies) * 0.95)], 2),
                    "search_like_cli_seconds": end_to_end,
                })
                print(json.dumps(rows[-1]), flush=True)
    return {"embedder": embedder.name, "embed_5_examples_seconds": round(embed_seconds, 3),
            "rows": rows}


def _metric(row: dict[str, object], has_choices: bool) -> float:
    value = row.get("choice_accuracy") if has_choices else row.get("exact_match")
    return float(value)  # type: ignore[arg-type]


def composed(args: argparse.Namespace) -> dict[str, object]:
    """Side by side: each study results file's systems, averaged over the seeds every file has
    for a task (each file's paired tests are in its own ``bbh_study.py --report-only``)."""
    from benchmarks.study.stats import summarize

    files = {label: json.loads(Path(path).read_text()) for label, path in args.results}
    tables = []
    for task in args.tasks:
        seeds = sorted(set.intersection(*(
            {s for s, cell in r["tasks"].get(task, {}).items() if cell.get("systems")}
            for r in files.values())), key=int)
        seeds = seeds[: args.max_seeds] if args.max_seeds else seeds
        rows = []
        for label, results in files.items():
            cells = [results["tasks"][task][s] for s in seeds]
            names = [n for n in cells[0]["systems"] if all(n in c["systems"] for c in cells)]
            for name in names:
                values = [_metric(c["systems"][name], c["has_choices"]) for c in cells]
                spread = summarize(values) if values else None
                rows.append({"file": label, "system": name,
                             "mean": round(spread.mean, 3) if spread else None,
                             "sd": round(spread.std, 3) if spread else None,
                             "per_seed": [round(v, 3) for v in values]})
        tables.append({"task": task, "seeds": [int(s) for s in seeds], "rows": rows,
                       "metric": "MC accuracy" if files[next(iter(files))]["tasks"][task][
                           seeds[0]]["has_choices"] else "exact match"} if seeds else
                      {"task": task, "seeds": [], "rows": []})
        for table in tables[-1:]:
            print(f"\n{table['task']} ({table.get('metric', '-')}, seeds {table['seeds']})")
            for row in table["rows"]:
                print(f"  {row['file']:<14} {row['system']:<28} {row['mean']}  ± {row['sd']}  "
                      f"{row['per_seed']}")
    return {"files": {label: str(path) for label, path in args.results}, "tables": tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("recall")
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--per-task", type=int, default=80,
                   help="modules made from each upstream task the library was not built on")
    r.add_argument("--cache", type=Path, default=None,
                   help="an .npz of text embeddings to reuse between runs")
    s = sub.add_parser("scale")
    s.add_argument("--sizes", default="1000,10000",
                   type=lambda v: [int(x) for x in v.split(",")])
    s.add_argument("--db", action="append", choices=["sqlite", "postgresql"])
    s.add_argument("--queries", type=int, default=200)
    s.add_argument("--end-to-end", action="store_true",
                   help="also time `loradex search --like` in a fresh process at each size")
    c = sub.add_parser("composed", help="study results files side by side")
    c.add_argument("--results", nargs=2, action="append", metavar=("LABEL", "FILE"),
                   required=True)
    c.add_argument("--tasks", type=lambda v: v.split(","), required=True)
    c.add_argument("--max-seeds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    if args.command == "scale" and not args.db:
        args.db = ["sqlite"]
    run = {"recall": recall, "scale": scale, "composed": composed}[args.command]
    result = run(args)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
