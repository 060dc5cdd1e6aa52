"""How a commit's operations change a tree: the bisecting implementation against a plain one."""

from __future__ import annotations

import random

import pytest

from registry.server.errors import HubHTTPError
from registry.server.service import CommitOp, TreeFile, apply_commit_ops


def _file(path: str, n: int = 0) -> TreeFile:
    return TreeFile(path, f"{n:064x}", n, False, f"{n:040x}")


def _reference(tree: dict[str, TreeFile], ops: list[tuple[CommitOp, TreeFile | None]]) -> dict:
    """The obvious O(ops x tree) version the server used to run."""
    tree = dict(tree)
    for op, new in ops:
        if new is not None:
            tree[op.path] = new
        elif op.kind == "deletedFile":
            if tree.pop(op.path, None) is None:
                raise LookupError(op.path)
        else:
            doomed = [p for p in tree if p.startswith(op.path.rstrip("/") + "/")]
            if not doomed:
                raise LookupError(op.path)
            for p in doomed:
                del tree[p]
    return tree


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
        expected = _reference(tree, ops)
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
