"""Web pages benchmark: the search page and the module page at N modules, beside /api/models.

Builds one server database per backend holding N hosted repos (a commit, a branch and three
files each, written straight into the Hub tables) and the N registry modules describing
them (``benchmarks.registry_bench.generate``: varied base models, ranks, tags, task text,
cards, 5 % composed with parents), starts ``loradex serve`` on it (one worker), and times,
in one run and interleaved, three kinds of request:

- ``search page``: ``/models`` with the web form's filters (base model, rank, task, tag,
  author, licence, sort) and free text, one page of 20;
- ``module page``: ``/{namespace}/{name}`` of a random module (card, files, history,
  family, compatible modules; composed ones draw their two charts);
- ``API listing``: ``/api/models`` with the Hub client's parameters (search, author, filter,
  sort), one page of 20: the API's own listing, as a reference.

Times are wall-clock per request, measured by the client over one kept-alive loopback
connection, one request at a time (server time plus well under a millisecond of loopback).
Writes ``benchmarks/results/web_<date>.json`` and prints a Markdown table.

    .venv/bin/python benchmarks/web_bench.py --rows 100000

Never run as a test: it prints figures for BENCHMARKS.md and docs/benchmarks/web.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import sqlalchemy as sa

from benchmarks.registry_bench import BASE_MODELS, CATEGORIES, DOMAINS, LICENSES, VERBS, generate
from benchmarks.registry_bench import _pg_url as pg_schema_url
from registry.db import make_engine
from registry.entities import Module
from registry.hub_models import SqlHubBlob, SqlHubCommit, SqlHubRef, SqlHubRepo, SqlHubTreeEntry
from registry.schema import upgrade
from registry.server.blobstore import BlobStore, git_blob_sha1
from registry.server.launch import start_server
from registry.store import RegistryStore

SOURCE = "local"  # what `loradex serve` without --public-url indexes its repos as
RESULTS = Path(__file__).parent / "results"
CHUNK = 5000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _card(module: Module) -> str:
    front: dict[str, Any] = {"base_model": module.base_model, "license": module.license,
                             "tags": list(module.tags)}
    if module.lineage:
        front["loradex"] = {
            "composition": {"method": "lorahub", "loss_zero_weights": 2.4,
                            "loss_curve": [round(2.4 - 0.05 * i, 4) for i in range(40)]},
            "lineage": [{"repo_id": e.parent_repo_id, "weight": e.weight}
                        for e in module.lineage],
        }
    return json.dumps(front)


def fill_hub_tables(url: str, modules: list[Module], blobs: BlobStore) -> None:
    """One repo, commit, branch and three tree entries per module, in bulk."""
    files = {
        "README.md": b"---\nlicense: mit\n---\n# A module\n\n" + b"Some card text. " * 200,
        "adapter_config.json": b'{"peft_type": "LORA", "r": 8}' + b" " * 600,
        "adapter_model.safetensors": os.urandom(64 * 1024),
    }
    entries = []
    for path, data in files.items():
        sha = blobs.put_bytes(data)
        entries.append((path, sha, len(data), path.endswith(".safetensors"), git_blob_sha1(data)))
    now = datetime(2026, 1, 1)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(SqlHubBlob.__table__),
                     [{"sha256": sha, "size": size, "created_at": now}
                      for _, sha, size, _, _ in entries])
    for start in range(0, len(modules), CHUNK):
        chunk = modules[start : start + CHUNK]
        ids = range(start + 1, start + len(chunk) + 1)
        with engine.begin() as conn:
            conn.execute(sa.insert(SqlHubRepo.__table__), [
                {"id": i, "uid": f"{i:024x}", "namespace": m.repo_id.split("/")[0],
                 "name": m.repo_id.split("/")[1], "full_id": m.repo_id,
                 "full_id_lower": m.repo_id.lower(), "private": False,
                 "created_at": m.created_at.replace(tzinfo=None),  # type: ignore[union-attr]
                 "last_modified": m.updated_at.replace(tzinfo=None)}  # type: ignore[union-attr]
                for i, m in zip(ids, chunk, strict=True)])
            conn.execute(sa.insert(SqlHubCommit.__table__), [
                {"id": i, "repo_id": i, "sha": m.revision, "parent_id": None,
                 "title": "Upload folder", "message": "", "author": m.repo_id.split("/")[0],
                 "created_at": m.updated_at.replace(tzinfo=None),  # type: ignore[union-attr]
                 "card_data": _card(m), "tags": json.dumps(list(m.tags)),
                 "tags_index": "\n" + "\n".join(m.tags) + "\n", "library_name": "peft",
                 "pipeline_tag": None}
                for i, m in zip(ids, chunk, strict=True)])
            conn.execute(sa.insert(SqlHubRef.__table__), [
                {"id": i, "repo_id": i, "name": "main", "commit_id": i} for i in ids])
            conn.execute(sa.insert(SqlHubTreeEntry.__table__), [
                {"commit_id": i, "path": path, "blob_sha256": sha, "size": size,
                 "is_lfs": lfs, "git_oid": oid}
                for i in ids for path, sha, size, lfs, oid in entries])
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("hub_repos", "hub_commits", "hub_refs"):
                # Explicit ids were inserted: move each sequence past them.
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))"))
            conn.execute(sa.text("ANALYZE"))
    engine.dispose()


def page_requests(modules: list[Module], count: int, seed: int) -> list[tuple[str, str, str]]:
    """``count`` requests of each kind, (kind, path, search page shape or ""), shuffled
    together."""
    rng = random.Random(seed)
    bases = [b for b, _ in BASE_MODELS]
    authors = sorted({m.repo_id.split("/")[0] for m in modules})
    words = [*VERBS, *DOMAINS]
    makers: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("base model", lambda: {"base_model": rng.choice(bases)}),
        ("base model + rank",
         lambda: {"base_model": rng.choice(bases), "rank": rng.choice((8, 16))}),
        ("tag, by likes", lambda: {"tag": rng.choice(DOMAINS), "sort": "likes"}),
        ("task + licence",
         lambda: {"task": rng.choice(CATEGORIES), "license": str(rng.choice(LICENSES)[0])}),
        ("author", lambda: {"author": rng.choice(authors)}),
        ("kind, by updated", lambda: {"kind": "lora", "sort": "updated"}),
        ("one word", lambda: {"q": rng.choice(words)}),
        ("two words + base model",
         lambda: {"q": " ".join(rng.sample(words, 2)), "base_model": rng.choice(bases)}),
    ]
    api_makers: list[Callable[[], dict[str, Any]]] = [
        lambda: {"search": rng.choice(words)},
        lambda: {"author": rng.choice(authors)},
        lambda: {"filter": rng.choice(DOMAINS)},
        lambda: {"sort": "lastModified"},
        lambda: {},
    ]
    composed = [m for m in modules if m.lineage]
    requests = []
    for _ in range(count):
        shape, make = rng.choice(makers)
        requests.append(("search page", "/models?" + urlencode(make()), shape))
        module = rng.choice(composed) if rng.random() < 0.2 else rng.choice(modules)
        requests.append(("module page", "/" + quote(module.repo_id), ""))
        requests.append(("API listing", "/api/models?" + urlencode(
            {**rng.choice(api_makers)(), "limit": 20}), ""))
    rng.shuffle(requests)
    return requests


@contextmanager
def backend_url(name: str, tmp: Path) -> Iterator[str]:
    """A fresh database of ``name`` (dropped afterwards)."""
    if name == "sqlite":
        yield f"sqlite:///{tmp / 'web.db'}"
        return
    url_and_drop = pg_schema_url()
    url, drop = next(url_and_drop)
    try:
        yield url
    finally:
        drop()


def run_backend(name: str, modules: list[Module], count: int, seed: int) -> dict[str, Any]:
    """Load the modules into a fresh ``name`` database, serve it, time the requests."""
    with tempfile.TemporaryDirectory() as tmp_name, backend_url(name, Path(tmp_name)) as url:
        tmp = Path(tmp_name)
        upgrade(url)
        t = time.perf_counter()
        store = RegistryStore(make_engine(url))
        store.bulk_upsert(modules)
        store.engine.dispose()
        fill_hub_tables(url, modules, BlobStore(tmp / "data" / "blobs"))
        load_seconds = time.perf_counter() - t
        print(f"  {name}: loaded {len(modules)} modules in {load_seconds:.0f} s", file=sys.stderr)
        requests = page_requests(modules, count, seed)
        times: dict[str, list[float]] = {}
        by_shape: dict[str, list[float]] = {}
        with start_server(url, tmp / "data", workers=1, log_level="warning",
                          log_path=tmp / "server.log", timeout=120) as server, \
                httpx.Client(base_url=server.url, timeout=60) as client:
            for _, path, _ in requests[:30]:  # warm the caches as a running server's are
                client.get(path)
            for kind, path, shape in requests:
                t = time.perf_counter()
                answer = client.get(path)
                elapsed = (time.perf_counter() - t) * 1000
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: {path} answered {answer.status_code}: "
                                     f"{answer.text[:300]}")
                times.setdefault(kind, []).append(elapsed)
                if shape:
                    by_shape.setdefault(shape, []).append(elapsed)
        return {
            "load_seconds": round(load_seconds, 1),
            "pages": {kind: _summary(v) for kind, v in sorted(times.items())},
            # The search page's query shapes apart: which ones make its p95.
            "search page shapes": {shape: _summary(v) for shape, v in sorted(by_shape.items())},
        }


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(_percentile(values, 0.95), 1), "max_ms": round(max(values), 1)}


def main() -> None:
    """Parse arguments, run every backend, write the results file, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="per kind of request")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    t = time.perf_counter()
    modules = [replace(m, source=SOURCE) for m in generate(args.rows, args.seed).modules]
    print(f"generated {args.rows} modules in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    load_before = os.getloadavg()
    results = {name: run_backend(name, modules, args.requests, args.seed)
               for name in args.backends.split(",")}
    report = {
        "benchmark": "web_bench",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/web_bench.py", *sys.argv[1:]]),
        "rows": args.rows,
        "requests_per_kind": args.requests,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "targets_ms_p95": {"search page": 100, "module page": 50},
        "backends": results,
        "corpus_sha256": hashlib.sha256(
            "\n".join(m.repo_id for m in modules).encode()).hexdigest()[:16],
    }
    out = args.out or RESULTS / f"web_{datetime.now(UTC).date().isoformat()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| request ({args.rows:,} modules) | " + " | ".join(
        f"{b} p50 / p95 ms" for b in results) + " |")
    print("|---|" + "---|" * len(results))
    for kind in ("search page", "module page", "API listing"):
        cells = [f"{r['pages'][kind]['p50_ms']} / {r['pages'][kind]['p95_ms']}"
                 for r in results.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    shapes = next(iter(results.values()))["search page shapes"]
    for shape in shapes:
        cells = [f"{r['search page shapes'][shape]['p50_ms']} / "
                 f"{r['search page shapes'][shape]['p95_ms']}" for r in results.values()]
        print(f"| search page: {shape} | " + " | ".join(cells) + " |")
    print(f"load average before/after: {report['load_average_before']} / "
          f"{report['load_average_after']}; written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
