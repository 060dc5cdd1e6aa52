"""How a commit's operations change a tree: the bisecting implementation against a plain one.

The plain one is the O(ops x tree) loop the server used to run, kept in
``benchmarks/hostile_bench.py`` where it is also the baseline of the timings.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from registry.server.commits import apply_commit_ops
from registry.server.errors import HubHTTPError
from registry.server.types import CommitOp, TreeFile


def _load_bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "hostile_bench.py"
    spec = importlib.util.spec_from_file_location("hostile_bench", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_bench"] = module
    spec.loader.exec_module(module)
    return module


_reference = _load_bench().plain_apply_ops


def _file(path: str, n: int = 0) -> TreeFile:
    return TreeFile(path, f"{n:064x}", n, False, f"{n:040x}")


@pytest.mark.parametrize("seed", range(40))
def testapply_commit_ops_matches_the_plain_version(seed: int) -> None:
    rnd = random.Random(seed)
    names = ["a", "a-b", "a.b", "ab", "b", "a/b", "a/c", "a/b/c", "a/b/d", "a/b-c", "c/d/e"]

    def path() -> str:
        return rnd.choice(names) + rnd.choice(["", "/x.txt", "/y/z.bin"])

    tree = {p: _file(p, i) for i, p in enumerate(sorted({path() for _ in range(12)}))}
    ops: list[tuple[CommitOp, TreeFile | None]] = []
    for i in range(rnd.randrange(1, 10)):
        kind = rnd.choice(["file", "deletedFile", "deletedFolder"])
        target = rnd.choice([*tree, path()]) if kind == "deletedFile" else path()
        if kind == "deletedFolder":
            target = rnd.choice(["a", "a/b", "c", "a/", "b", "zz"])
        ops.append((CommitOp(kind, target), _file(target, 100 + i) if kind == "file" else None))
    try:
        expected = _reference(dict(tree), ops)
    except LookupError as exc:
        with pytest.raises(HubHTTPError) as info:
            apply_commit_ops(dict(tree), ops)
        assert info.value.status == 404 and str(exc.args[0]) in info.value.message
    else:
        assert apply_commit_ops(dict(tree), ops) == expected


def test_deleting_a_folder_keeps_its_look_alike_neighbours() -> None:
    tree = {p: _file(p) for p in ["a/x", "a/y/z", "a-b/x", "a.b", "ab/x", "a"]}
    after = apply_commit_ops(tree, [(CommitOp("deletedFolder", "a/"), None)])
    assert sorted(after) == ["a", "a-b/x", "a.b", "ab/x"]
