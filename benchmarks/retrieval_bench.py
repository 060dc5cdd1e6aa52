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
import statistics
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


def recall(args: argparse.Namespace) -> dict[str, object]:
    from composer.data import load_examples
    from composer.library import built_spec, split_task
    from registry.adapter_files import inspect_adapter_folder
    from registry.embedders import load_embedder
    from registry.signatures import card_text, folder_signature

    embedder = load_embedder()
    library = ROOT / "library"
    spec = built_spec(UPSTREAM, library)
    tasks = sorted(p.parent.name for p in library.glob("*/adapter_config.json"))
    started = time.perf_counter()

    def signatures(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        data = folder_signature(folder)
        assert data is not None, folder
        card = embedder.embed([card_text(inspect_adapter_folder(folder))])[0]
        return data.centroid(), card

    own = {t: signatures(library / t) for t in tasks}
    gemma = {t: signatures(GEMMA / t) for t in sorted(
        p.parent.name for p in GEMMA.glob("*/adapter_config.json"))}
    heldout = {t: split_task(load_examples(UPSTREAM / f"{t}.jsonl"), spec.test_size,
                             spec.split_seed)[1] for t in tasks}
    others = sorted(p.stem for p in UPSTREAM.glob("*.jsonl") if p.stem not in set(tasks))
    rng = np.random.default_rng(0)
    made: list[np.ndarray] = []
    for task in others:
        inputs = [e.input for e in load_examples(UPSTREAM / f"{task}.jsonl")]
        vectors = embedder.embed(inputs[:400])
        for _ in range(args.per_task):
            pick = rng.choice(len(vectors), size=min(32, len(vectors)), replace=False)
            made.append(_unit(vectors[pick].mean(0)))
    signing = time.perf_counter() - started

    kinds = {"data": 0, "card": 1}
    pools = {
        "library (30)": lambda kind: [own[t][kind] for t in tasks],
        f"library + {len(made)} upstream-made + Gemma library, base filter":
            lambda kind: [own[t][kind] for t in tasks] + made,
        f"library + {len(made)} upstream-made + Gemma library, no filter":
            lambda kind: [own[t][kind] for t in tasks] + made + [g[kind] for g in gemma.values()],
    }
    rows = []
    query_seconds: list[float] = []
    for pool_name, build in pools.items():
        for kind_name, kind in kinds.items():
            matrix = np.stack(build(kind))
            hits = {1: 0, 5: 0, 20: 0}
            n = 0
            for seed in range(args.seeds):
                for i, task in enumerate(tasks):
                    few = random.Random(seed).sample(heldout[task], 5)
                    t0 = time.perf_counter()
                    query = _unit(embedder.embed([e.input for e in few]).mean(0))
                    scores = matrix @ query
                    query_seconds.append(time.perf_counter() - t0)
                    rank = int((scores > scores[i]).sum())
                    for k in hits:
                        hits[k] += rank < k
                    n += 1
            rows.append({"pool": pool_name, "pool_size": len(matrix), "signature": kind_name,
                         **{f"recall@{k}": round(v / n, 3) for k, v in hits.items()},
                         "queries": n})
    return {"embedder": embedder.name, "tasks": len(tasks), "others_tasks": others,
            "made_per_task": args.per_task, "signing_seconds": round(signing, 1),
            "query_seconds_p50": round(statistics.median(query_seconds), 4), "rows": rows}


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
                rows = index.rows(pool)
                pool_rows = time.perf_counter() - t0
                latencies = []
                for q in range(args.queries):
                    query = _unit(np.random.default_rng(q).normal(size=(5, embedder.dim)))
                    t0 = time.perf_counter()
                    hits = index.rank(query, rows=rows, limit=20)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("recall")
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--per-task", type=int, default=80,
                   help="modules made from each upstream task the library was not built on")
    s = sub.add_parser("scale")
    s.add_argument("--sizes", default="1000,10000",
                   type=lambda v: [int(x) for x in v.split(",")])
    s.add_argument("--db", action="append", choices=["sqlite", "postgresql"])
    s.add_argument("--queries", type=int, default=200)
    s.add_argument("--end-to-end", action="store_true",
                   help="also time `loradex search --like` in a fresh process at each size")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    if args.command == "scale" and not args.db:
        args.db = ["sqlite"]
    result = recall(args) if args.command == "recall" else scale(args)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), **result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
