"""What hostile or pathological requests cost the Hub server, side by side with the old code.

Two parts, one run:

1. In-process, the same inputs through the server's tree functions and through the plain
   versions they replaced (kept below, verbatim in logic; tests/server/test_commit_ops.py
   checks the new code against them too): a commit deleting N folders
   (``apply_commit_ops``) and ``paths-info`` for N paths (``paths_info_entries``). Both must
   give the same result; the script checks it.
2. Over HTTP, against a real ``loradex serve`` (SQLite, one worker): the requests that used to
   take seconds to minutes or answer 500, with their status, time and response size.

    python benchmarks/hostile_bench.py [--files 20000] [--paths 40000] [--plain-limit 5000]

``--plain-limit`` caps N for the plain versions, which are quadratic (at 20,000 folders the plain
deletion takes ~20 s, and plain paths-info for 40,000 paths over minutes).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from registry.server.commits import apply_commit_ops  # noqa: E402
from registry.server.launch import LaunchedServer, start_server  # noqa: E402
from registry.server.reads import paths_info_entries  # noqa: E402
from registry.server.types import CommitOp, TreeFile, tree_oid  # noqa: E402

# ----------------------------------------------------------------- the plain versions


def plain_apply_ops(
    tree: dict[str, TreeFile], prepared: Sequence[tuple[CommitOp, TreeFile | None]]
) -> dict[str, TreeFile]:
    """The commit loop before bisection: every deleted folder scans the whole tree."""
    for op, new_file in prepared:
        if new_file is not None:
            tree[op.path] = new_file
        elif op.kind == "deletedFile":
            if tree.pop(op.path, None) is None:
                raise LookupError(op.path)
        else:
            prefix = op.path.rstrip("/") + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise LookupError(op.path)
            for p in doomed:
                del tree[p]
    return tree


def plain_paths_info(files: Sequence[TreeFile], wanted: Sequence[str]) -> list[dict[str, Any]]:
    """paths-info before the folder index: every path that is not a file scans the tree."""
    by_path = {f.path: f for f in files}
    result: list[dict[str, Any]] = []
    for path in dict.fromkeys(wanted):
        if path in by_path:
            result.append(by_path[path].tree_json())
            continue
        children = [f for f in files if f.path.startswith(path + "/")]
        if children:
            result.append(
                {"type": "directory", "oid": tree_oid(children), "size": 0, "path": path}
            )
    return result


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def tree_of(n: int) -> dict[str, TreeFile]:
    """n folders of one file each, as a repo of many small datasets would have."""
    return {
        f"d{i:06d}/f.txt": TreeFile(f"d{i:06d}/f.txt", f"{i:064x}", 1, False, f"{i:040x}")
        for i in range(n)
    }


def in_process(args: argparse.Namespace) -> list[str]:
    rows = ["| case | N | plain | now | speed-up | same result |", "|---|---|---|---|---|---|"]
    for n in sorted({min(1000, args.plain_limit), args.plain_limit}):
        ops = [(CommitOp("deletedFolder", f"d{i:06d}"), None) for i in range(n)]
        new, t_new = timed(lambda n=n, ops=ops: apply_commit_ops(tree_of(n), ops))
        old, t_old = timed(lambda n=n, ops=ops: plain_apply_ops(tree_of(n), ops))
        rows.append(f"| commit deleting N folders (of N) | {n:,} | {t_old:.2f} s | "
                    f"{t_new:.3f} s | {t_old / t_new:.0f}x | {old == new} |")
    files = sorted(tree_of(args.files).values(), key=lambda f: f.path)
    for n in sorted({min(1000, args.plain_limit), args.plain_limit}):
        wanted = [f"d{i:06d}" for i in range(n)]  # folders: the slow case
        new_info, t_new = timed(lambda wanted=wanted: paths_info_entries(files, wanted))
        old_info, t_old = timed(lambda wanted=wanted: plain_paths_info(files, wanted))
        rows.append(f"| paths-info, N folders of a {args.files:,}-file tree | {n:,} | "
                    f"{t_old:.2f} s | {t_new:.3f} s | {t_old / t_new:.0f}x | "
                    f"{old_info == new_info} |")
    return rows


# ----------------------------------------------------------------- over HTTP


def start_hub(work: Path) -> tuple[LaunchedServer, str]:
    """``loradex serve`` on a fresh SQLite database, and a write token of alice's."""
    db = f"sqlite:///{work / 'hub.db'}"
    token = subprocess.run(
        [sys.executable, "-m", "loradex", "--db", db, "token", "create", "alice"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return start_server(db, work / "data"), token


def over_http(args: argparse.Namespace, work: Path) -> list[str]:
    server, token = start_hub(work)
    url = server.url
    auth = {"authorization": f"Bearer {token}"}
    rows = ["| request | status | time | response |", "|---|---|---|---|"]
    client = httpx.Client(base_url=url, timeout=900)

    def commit(repo: str, lines: list[dict[str, Any]]) -> httpx.Response:
        body = "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "b"}},
                                                  *lines])
        return client.post(f"/api/models/{repo}/commit/main", content=body,
                           headers={**auth, "content-type": "application/x-ndjson"})

    def add(path: str, data: bytes = b"x") -> dict[str, Any]:
        content = base64.b64encode(data).decode()
        return {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}}

    def row(what: str, fn: Callable[[], httpx.Response]) -> None:
        response, seconds = timed(fn)
        rows.append(f"| {what} | {response.status_code} | {seconds:.2f} s | "
                    f"{len(response.content):,} bytes |")

    try:
        for name in ("many", "deep", "bomb"):
            client.post("/api/repos/create", headers=auth, json={"name": name})
        n = args.files
        row(f"commit adding {n:,} files in {n:,} folders",
            lambda: commit("alice/many", [add(f"d{i:06d}/f.txt") for i in range(n)]))
        form = "&".join(f"paths=d{i % n:06d}" for i in range(args.paths))
        row(f"paths-info of {args.paths:,} folder paths",
            lambda: client.post("/api/models/alice/many/paths-info/main", content=form,
                                headers={"content-type": "application/x-www-form-urlencoded"}))
        row(f"commit deleting those {n:,} folders",
            lambda: commit("alice/many", [{"key": "deletedFolder", "value": {"path": f"d{i:06d}"}}
                                          for i in range(n)]))
        deep = "/".join(["a"] * 63)
        row("commit of 5,000 files 63 folders deep (the deepest accepted)",
            lambda: commit("alice/deep", [add(f"{deep}/f{i}") for i in range(5000)]))
        row("recursive tree listing of it",
            lambda: client.get("/api/models/alice/deep/tree/main", params={"recursive": "true"}))
        row("commit of a file 64 folders deep",
            lambda: commit("alice/deep", [add("a/" * 64 + "f")]))
        bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdef", "bcdefg",
                                                                        strict=True))
        row("commit of a 9^7-node YAML alias bomb card (README.md)",
            lambda: commit("alice/bomb", [add("README.md", f"---\n{bomb}---\n".encode())]))
        row("model info of that repo", lambda: client.get("/api/models/alice/bomb"))
        row("commit line nested 100,000 levels deep",
            lambda: client.post("/api/models/alice/bomb/commit/main", content=b"[" * 100_000,
                                headers={**auth, "content-type": "application/x-ndjson"}))
        row("listing with 5,000 filter values",
            lambda: client.get("/api/models?" + "&".join(["filter=x"] * 5000)))
    finally:
        client.close()
        server.stop(timeout=30)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20_000, help="files (and folders) in the big repo")
    p.add_argument("--paths", type=int, default=40_000, help="paths asked in one paths-info")
    p.add_argument("--plain-limit", type=int, default=5_000,
                   help="largest N run through the plain (quadratic) versions")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("\nIn-process, same inputs, plain versions against the server's:\n")
    print("\n".join(in_process(args)))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loradex-hostile-bench-"))
    print(f"\nOver HTTP against loradex serve (SQLite, 1 worker, {work}):\n")
    print("\n".join(over_http(args, work)))


if __name__ == "__main__":
    main()
