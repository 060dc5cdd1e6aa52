"""Garbage collection of blob files no commit references (in process, real database)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from registry.db import make_engine
from registry.schema import ensure_schema
from registry.server.app import load_or_create_secret
from registry.server.blobstore import BlobStore
from registry.server.errors import HubHTTPError
from registry.server.service import HubService
from registry.server.tokens import create_token
from registry.server.types import CommitOp, ServerConfig
from tests.support.hub import loradex


def test_unreferenced_blobs_are_collected_after_the_grace_period(
    db_url: str, tmp_path: Path
) -> None:
    ensure_schema(db_url)
    engine = make_engine(db_url)
    config = ServerConfig(data_dir=tmp_path / "data", db_url=db_url)
    service = HubService(
        engine, BlobStore(config.blobs_dir), config, load_or_create_secret(config.data_dir)
    )
    me = service.authenticate(f"Bearer {create_token(engine, 'gc', 'gc')}")
    service.create_repo(me, "gc", "repo", False, "http://x")
    first = service.commit(
        me,
        "gc/repo",
        "main",
        {"summary": "a"},
        [CommitOp("file", "a.txt", content=b"kept")],
        "http://x",
    )
    service.commit(
        me,
        "gc/repo",
        "main",
        {"summary": "b"},
        [CommitOp("file", "a.txt", content=b"kept too")],
        "http://x",
    )
    with pytest.raises(HubHTTPError) as exc:  # stale parent: refused after its content was stored
        service.commit(
            me,
            "gc/repo",
            "main",
            {"summary": "c", "parentCommit": first["commitOid"]},
            [CommitOp("file", "b.txt", content=b"orphan")],
            "http://x",
        )
    assert exc.value.status == 412
    abandoned = service.blobs.put_bytes(b"uploaded, never committed")
    orphan = hashlib.sha256(b"orphan").hexdigest()
    assert service.blobs.size_of(orphan) == len(b"orphan")

    assert service.collect_garbage() == (0, 0)  # everything is recent
    past = time.time() - 3 * 3600
    for _, path in service.blobs.iter_blobs():
        os.utime(path, (past, past))
    removed, freed = service.collect_garbage()
    assert (removed, freed) == (2, len(b"orphan") + len(b"uploaded, never committed"))
    assert service.blobs.size_of(orphan) is None and service.blobs.size_of(abandoned) is None
    # every revision, old ones included, still has its bytes
    old = service.resolve_file(None, "gc/repo", first["commitOid"], "a.txt")
    assert old.blob_path.read_bytes() == b"kept"
    assert (
        service.resolve_file(None, "gc/repo", "main", "a.txt").blob_path.read_bytes() == b"kept too"
    )
    engine.dispose()

    result = loradex("--db", db_url, "serve", "--data", str(tmp_path / "data"), "--gc-only")
    assert result.stderr.strip() == "removed 0 unreferenced blob(s), 0 bytes"
