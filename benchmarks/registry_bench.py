"""Registry benchmark: bulk indexing, search latency and CLI cold start, SQLite vs PostgreSQL.

Generates N realistic module rows (varied base models, ranks, target sets, tags, task text,
card text, files, some lineage), bulk-indexes them into a fresh database per backend, then
times a fixed mix of searches (filters only, free text, free text + filters,
compatible-with) through ``RegistryStore.search_page`` as ``loradex search`` calls it (count
up to 1000 + one page of 20 full modules), and finally ``loradex search`` from process start
to output. Prints one Markdown table.

    .venv/bin/python benchmarks/registry_bench.py --rows 100000

Never run as a test: it prints figures for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from loradex.cli.commands.registry_cmds import COUNT_LIMIT
from registry.db import make_engine
from registry.entities import LineageEdge, Module, ModuleFile, SearchQuery
from registry.schema import upgrade
from registry.store import RegistryStore

PG_ADMIN_URL = os.environ.get("LORADEX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

BASE_MODELS = [
    ("meta-llama/Llama-2-7b-hf", 18), ("meta-llama/Meta-Llama-3-8B", 14),
    ("mistralai/Mistral-7B-v0.1", 12), ("google/flan-t5-large", 8),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 10), ("HuggingFaceTB/SmolLM2-360M-Instruct", 6),
    ("Qwen/Qwen2.5-0.5B-Instruct", 9), ("Qwen/Qwen2.5-7B", 7), ("microsoft/phi-2", 5),
    ("EleutherAI/pythia-1b", 3), ("tiiuae/falcon-7b", 3), ("openai-community/gpt2", 5),
]
# A few modules record their base model the broken ways seen in the wild.
RAW_FORMS = [
    "{id}", "{id}", "{id}", "{id}", "https://huggingface.co/{id}",
    "/root/.cache/huggingface/hub/models--{dashed}/snapshots/{sha}", "/home/user/models/{id}/",
]
RANKS = [(4, 15), (8, 35), (16, 25), (32, 15), (64, 7), (128, 3)]
TARGET_SETS = [
    (("q_proj", "v_proj"), 40), (("k_proj", "o_proj", "q_proj", "v_proj"), 25),
    (("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"), 20),
    (("c_attn",), 5), (("q", "v"), 10),
]
CATEGORIES = ["grammar", "translation", "summarization", "classification", "sentiment",
              "question-answering", "code", "math", "reasoning", "dialogue", "extraction",
              "style-transfer", "paraphrase", "ner", "toxicity", "retrieval"]
LANGUAGES = ["en", "fr", "de", "es", "zh", "ja", "ru", "pt", "it", "ko", "ar", "hi"]
DOMAINS = ["legal", "medical", "finance", "news", "biology", "chemistry", "sports", "movies",
           "reviews", "tweets", "emails", "recipes", "poetry", "physics", "history", "law",
           "customer-support", "education", "science", "wikipedia"]
VERBS = ["rewrite", "translate", "summarize", "classify", "detect", "extract", "answer",
         "generate", "paraphrase", "correct", "simplify", "label", "explain", "convert"]
OBJECTS = ["sentences", "questions", "reviews", "headlines", "abstracts", "dialogues",
           "tweets", "contracts", "reports", "emails", "recipes", "stories", "equations",
           "programs", "tables", "entities", "arguments", "claims", "captions", "poems"]
STYLE = ["past tense", "passive voice", "formal tone", "plain english", "bullet points",
         "one sentence", "json", "sql", "python", "markdown", "yes or no", "five labels",
         "chain of thought", "short answers", "british spelling", "active voice"]
_FILLER_TEXT = """the a of to and in for with on by from this that model adapter trained data set
examples task evaluation accuracy loss epochs learning rate batch steps results improves base
prompts outputs inputs fine tuned low rank weights layers attention projection benchmark score
validation test split samples tokens context"""
FILLER = _FILLER_TEXT.split()
LICENSES = [("apache-2.0", 40), ("mit", 25), ("cc-by-4.0", 10), ("llama2", 10),
            ("openrail", 5), ("cc-by-nc-4.0", 5), ("other", 5)]


def _weighted(rng: random.Random, items: list[tuple[object, int]]) -> object:
    return rng.choices([i for i, _ in items], weights=[w for _, w in items])[0]


@dataclass(frozen=True)
class Corpus:
    """The generated modules plus what the searches are drawn from."""

    modules: list[Module]
    authors: list[str]


def generate(rows: int, seed: int) -> Corpus:
    """``rows`` plausible modules, deterministic for a seed."""
    rng = random.Random(seed)
    authors = [f"user{i:05d}" for i in range(max(50, rows // 20))]
    task_names = [
        f"{v}_{o}_{s.replace(' ', '_')}" for v in VERBS for o in OBJECTS for s in STYLE
    ]
    start = datetime(2023, 1, 1, tzinfo=UTC)
    modules = []
    for i in range(rows):
        base = str(_weighted(rng, BASE_MODELS))  # type: ignore[arg-type]
        raw = rng.choice(RAW_FORMS).format(
            id=base, dashed=base.replace("/", "--"), sha=f"{rng.getrandbits(160):040x}"
        )
        verb, obj, style = rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(STYLE)
        domain, lang, category = rng.choice(DOMAINS), rng.choice(LANGUAGES), rng.choice(CATEGORIES)
        task = f"{verb}_{obj}_{style.replace(' ', '_')}"
        if rng.random() < 0.3:
            task = rng.choice(task_names)
        author = rng.choice(authors)
        tags = {category, lang, domain, "lora", "peft"}
        tags.update(rng.sample(DOMAINS, rng.randint(0, 2)))
        created = start + timedelta(minutes=rng.randint(0, 60 * 24 * 900))
        description = f"{verb.capitalize()} {domain} {obj} in {style} ({lang})."
        card = " ".join(
            [f"# {task}", description,
             *(rng.choice(FILLER) for _ in range(rng.randint(40, 160)))]
        )
        targets = _weighted(rng, TARGET_SETS)  # type: ignore[arg-type]
        rank = int(_weighted(rng, RANKS))  # type: ignore[call-overload]
        lineage: tuple[LineageEdge, ...] = ()
        if i > 100 and rng.random() < 0.05:
            lineage = tuple(
                LineageEdge(f"{rng.choice(authors)}/m{rng.randrange(i)}",
                            f"{rng.getrandbits(160):040x}", round(rng.random(), 3))
                for _ in range(rng.randint(2, 5))
            )
        size = rank * 4096 * len(targets) * 4  # type: ignore[arg-type]
        modules.append(Module(
            repo_id=f"{author}/{task.replace('_', '-')}-{i}",
            revision=f"{rng.getrandbits(160):040x}",
            source="https://huggingface.co",
            base_model=base,
            base_model_raw=raw,
            rank=rank,
            alpha=float(rank * rng.choice((1, 2))),
            dropout=rng.choice((0.0, 0.05, 0.1)),
            target_modules=targets,  # type: ignore[arg-type]
            task_type="CAUSAL_LM",
            bias="none",
            num_parameters=size // 4,
            dtype=rng.choice(("float32", "float16", "bfloat16")),
            total_size=size + 2000,
            author=author,
            license=str(_weighted(rng, LICENSES)),  # type: ignore[arg-type]
            tags=tuple(sorted(tags)),
            task_name=task,
            task_category=category,
            dataset=f"{rng.choice(authors)}/{domain}-{obj}",
            language=lang,
            description=description,
            downloads=int(rng.paretovariate(1.1) * 10) - 10,
            likes=int(rng.paretovariate(1.5)) - 1,
            created_at=created,
            updated_at=created + timedelta(days=rng.randint(0, 200)),
            card_text=card,
            files=(
                ModuleFile("README.md", len(card), f"{rng.getrandbits(256):064x}", False),
                ModuleFile("adapter_config.json", 700, f"{rng.getrandbits(256):064x}", False),
                ModuleFile("adapter_model.safetensors", size, f"{rng.getrandbits(256):064x}",
                           True),
            ),
            lineage=lineage,
        ))
    return Corpus(modules=modules, authors=authors)


def search_mix(corpus: Corpus, count: int, seed: int) -> list[tuple[str, SearchQuery]]:
    """``count`` searches per kind: filters only, free text, text + filters, compatible-with."""
    rng = random.Random(seed + 1)
    bases = [b for b, _ in BASE_MODELS]
    words = [*VERBS, *OBJECTS, *DOMAINS, *(s.split()[0] for s in STYLE)]
    mix: list[tuple[str, SearchQuery]] = []
    filter_makers: list[Callable[[], SearchQuery]] = [
        lambda: SearchQuery(base_model=rng.choice(bases)),
        lambda: SearchQuery(base_model=rng.choice(bases), rank=rng.choice((8, 16))),
        lambda: SearchQuery(tags=(rng.choice(DOMAINS),), sort="likes"),
        lambda: SearchQuery(tags=(rng.choice(DOMAINS), rng.choice(LANGUAGES))),
        lambda: SearchQuery(targets=("o_proj",), min_rank=16, sort="updated"),
        lambda: SearchQuery(task=rng.choice(CATEGORIES), license="apache-2.0"),
        lambda: SearchQuery(author=rng.choice(corpus.authors)),
        lambda: SearchQuery(base_model=rng.choice(bases), targets=("q_proj", "v_proj"),
                            tags=(rng.choice(CATEGORIES),), max_rank=16, sort="rank"),
    ]
    for _ in range(count):
        mix.append(("filters only", rng.choice(filter_makers)()))
    for _ in range(count):
        n = rng.choice((1, 2, 2, 3))
        mix.append(("free text", SearchQuery(text=" ".join(rng.sample(words, n)))))
    for _ in range(count):
        mix.append(("free text + filters", SearchQuery(
            text=" ".join(rng.sample(words, rng.choice((1, 2)))),
            base_model=rng.choice(bases), min_rank=8)))
    for _ in range(count):
        mix.append(("compatible-with",
                    SearchQuery(compatible_with=rng.choice(corpus.modules).repo_id,
                                rank=rng.choice((None, 8)))))
    rng.shuffle(mix)
    return mix


@dataclass
class BackendResult:
    """Figures for one database."""

    name: str
    index_seconds: float
    index_cpu: float
    latencies: dict[str, list[float]]
    cpu: dict[str, list[float]]
    cold_start: list[float]
    cold_cpu: list[float]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _pg_url() -> Iterator[tuple[str, Callable[[], None]]]:
    import uuid
    from urllib.parse import quote

    import sqlalchemy as sa

    schema = f"ldx_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in PG_ADMIN_URL else "?"
    yield f"{PG_ADMIN_URL}{sep}options={quote(f'-csearch_path={schema}')}", drop


def run_backend(name: str, url: str, corpus: Corpus, mix: list[tuple[str, SearchQuery]],
                cold_runs: int) -> BackendResult:
    """Index the corpus into ``url``, run the search mix, time the CLI; return the figures."""
    upgrade(url)
    engine = make_engine(url)
    store = RegistryStore(engine)
    t0, c0 = time.perf_counter(), time.thread_time()
    store.bulk_upsert(corpus.modules)
    index_seconds, index_cpu = time.perf_counter() - t0, time.thread_time() - c0
    if name == "postgresql":
        with engine.begin() as conn:
            import sqlalchemy as sa

            conn.execute(sa.text("ANALYZE"))
    print(f"  {name}: indexed {len(corpus.modules)} rows in {index_seconds:.1f} s",
          file=sys.stderr)
    for _kind, query in mix[:20]:  # warm caches the way a running registry would be
        store.search_page(query, count_limit=COUNT_LIMIT)
    latencies: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for kind, query in mix:
        t, c = time.perf_counter(), time.thread_time()
        store.search_page(query, count_limit=COUNT_LIMIT)
        latencies.setdefault(kind, []).append((time.perf_counter() - t) * 1000)
        cpu.setdefault(kind, []).append((time.thread_time() - c) * 1000)
    engine.dispose()
    loradex = [sys.executable, "-m", "loradex", "--db", url, "search", "past tense",
               "--base-model", "meta-llama/Llama-2-7b-hf", "--limit", "5"]
    cold, cold_cpu = [], []
    for _ in range(cold_runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(loradex, capture_output=True, text=True)
        cold.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cold_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if proc.returncode != 0 or "of " not in proc.stdout:
            raise SystemExit(f"loradex search failed: {proc.stderr}")
    return BackendResult(name, index_seconds, index_cpu, latencies, cpu, cold[1:], cold_cpu[1:])


def main() -> None:
    """Parse arguments, run every backend, print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=100, help="per kind of search")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t = time.perf_counter()
    corpus = generate(args.rows, args.seed)
    mix = search_mix(corpus, args.searches, args.seed)
    print(f"generated {args.rows} modules in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_start = time.perf_counter() - t

    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'registry.db'}"
                results.append(run_backend("sqlite", url, corpus, mix, args.cold_runs))
        elif backend == "postgresql":
            for url, drop in _pg_url():
                try:
                    results.append(run_backend("postgresql", url, corpus, mix, args.cold_runs))
                finally:
                    drop()
        else:
            raise SystemExit(f"unknown backend {backend!r}")

    load = os.getloadavg()[0]
    print(f"\n{args.rows:,} modules, {args.searches} searches per kind, seed {args.seed}; "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}; 1-min load average at the end: {load:.1f}\n")
    print("Wall time is what a user waits; CPU time is this process's own work (for "
          "PostgreSQL the server's work is not in it), which the machine's load does not "
          "inflate.\n")
    names = [r.name for r in results]
    print("| measure | " + " | ".join(f"{n} wall | {n} CPU" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    print(f"| bulk index, {args.rows:,} rows (s) | " + " | ".join(
        f"{r.index_seconds:.1f} | {r.index_cpu:.1f}" for r in results) + " |")
    kinds = sorted(results[0].latencies)
    for kind in [*kinds, "all searches"]:
        cells = []
        for r in results:
            for series in (r.latencies, r.cpu):
                values = (
                    [v for vs in series.values() for v in vs] if kind == "all searches"
                    else series[kind]
                )
                cells.append(f"{_pct(values, 0.5):.1f} / {_pct(values, 0.95):.1f}")
        print(f"| {kind}: p50 / p95 (ms) | " + " | ".join(cells) + " |")
    print("| `loradex search` cold start, median (s) | " + " | ".join(
        f"{statistics.median(r.cold_start):.2f} | {statistics.median(r.cold_cpu):.2f}"
        for r in results) + " |")
    print(f"\n(`python -c pass` alone: {python_start:.2f} s wall.)")


if __name__ == "__main__":
    main()
