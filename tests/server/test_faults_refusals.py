"""Refusals the client can read, and faults answered by what they are (issue 23, part 3).

Over HTTP against a real ``loradex serve`` (on SQLite: these refusals come before, or without,
the database): an LFS upload whose body
does not match the signed object, an LFS batch of 100,000 objects, a path with a control
character, a Range with spaces. In process: the status each typed error gets, and an indexing
that fails on a locked database and is retried.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from loradex.errors import (
    DatabaseConflict,
    DatabaseLocked,
    DatabaseUnavailable,
    DiskFull,
    InvalidAdapter,
    SchemaOutdated,
    StorageError,
)
from registry.db import make_engine
from registry.schema import ensure_schema
from registry.server.app import load_or_create_secret
from registry.server.blobstore import BlobStore
from registry.server.errors import RETRY_AFTER_SECONDS, http_error_for
from registry.server.indexing import RegistryIndexer
from registry.server.service import HubService
from registry.server.tokens import create_token
from registry.server.types import CommitOp, ServerConfig
from registry.server.uploads import MAX_BATCH_OBJECTS
from registry.store import RegistryStore
from tests.support.hub import MAX_UPLOAD, HubServer, make_adapter

# The refusals happen before, or without, the database: one backend is enough for them.
sqlite_hub = pytest.mark.parametrize("hub", ["sqlite"], indirect=True)


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _slowly(data: bytes, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """The body in chunks with a pause between them: the server answers (and, before the fix,
    closed the connection) while the client is still sending."""
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]
        time.sleep(0.002)


def _upload_url(hub: HubServer, repo: str, payload: bytes) -> str:
    batch = httpx.post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [
            {"oid": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
        ]},
        headers=_auth(hub.alice),
    )
    assert batch.status_code == 200, batch.text
    return str(batch.json()["objects"][0]["actions"]["upload"]["href"])


@sqlite_hub
@pytest.mark.parametrize(
    ("case", "send", "declared"),
    [
        ("truncated", lambda p: p[:-1000], True),  # Content-Length says what is sent
        ("trailing bytes", lambda p: p + b"x" * 1000, True),
        ("truncated, chunked", lambda p: p[:-1000], False),
        ("trailing bytes, chunked", lambda p: p + b"x" * 1000, False),
    ],
)
def test_lfs_upload_not_matching_its_object_is_a_400_the_client_reads(
    hub: HubServer, case: str, send: Any, declared: bool
) -> None:
    hub.api(hub.alice).create_repo("alice/mismatch", exist_ok=True)
    # just under the 2 MiB limit, and new for each case (a stored object is not uploaded)
    payload = case.encode() + bytes(range(256)) * (MAX_UPLOAD // 256 - 64)
    href = _upload_url(hub, "alice/mismatch", payload)
    body = send(payload)
    headers = {"content-length": str(len(body))} if declared else {}
    with httpx.Client(timeout=60) as client:  # a reset or broken pipe raises here
        answer = client.put(href, content=_slowly(body), headers=headers)
        assert answer.status_code == 400, (case, answer.status_code, answer.text)
        assert answer.headers["x-error-message"], case
        assert answer.json()["error"]
        # the same connection (or a new one) still serves the right bytes
        assert client.put(href, content=_slowly(payload)).status_code == 200
    assert hub.temp_files() == []
    oid = hashlib.sha256(payload).hexdigest()
    stored = [p for p in hub.blob_files() if p.name == oid]
    assert len(stored) == 1 and stored[0].read_bytes() == payload


@sqlite_hub
def test_refusal_before_the_body_is_read_is_still_read_by_the_client(hub: HubServer) -> None:
    """A 401 (bad token), like a 503 (database down), is decided before the body is read."""
    lines = [{"key": "header", "value": {"summary": "big"}},
             {"key": "file", "value": {"path": "big.txt", "encoding": "base64",
                                       "content": base64.b64encode(b"y" * MAX_UPLOAD).decode()}}]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    with httpx.Client(timeout=60) as client:
        answer = client.post(
            f"{hub.url}/api/models/alice/anything/commit/main",
            content=_slowly(body),
            headers={**_auth("not-a-token"), "content-type": "application/x-ndjson",
                     "content-length": str(len(body))},
        )
        assert answer.status_code == 401, answer.text
        assert answer.headers["x-error-message"]


@sqlite_hub
def test_lfs_batch_of_100000_objects_is_a_413_the_client_reads(hub: HubServer) -> None:
    hub.api(hub.alice).create_repo("alice/huge-batch", exist_ok=True)
    objects = [{"oid": hashlib.sha256(str(i).encode()).hexdigest(), "size": i}
               for i in range(100_000)]
    url = f"{hub.url}/alice/huge-batch.git/info/lfs/objects/batch"
    with httpx.Client(timeout=60) as client:
        body = json.dumps({"operation": "upload", "objects": objects}).encode()
        assert len(body) > 8 * 1024 * 1024  # past the JSON body limit: refused unread
        answer = client.post(url, content=_slowly(body, 256 * 1024),
                             headers={**_auth(hub.alice), "content-length": str(len(body))})
        assert answer.status_code == 413, answer.text
        assert "larger than" in answer.headers["x-error-message"]
        # under the body limit but over the object limit: refused by count, as git-lfs does
        few = json.dumps({"operation": "upload", "objects": objects[: MAX_BATCH_OBJECTS + 1]})
        answer = client.post(url, content=few, headers=_auth(hub.alice))
        assert answer.status_code == 413, answer.text
        assert f"at most {MAX_BATCH_OBJECTS}" in answer.headers["x-error-message"]
        exact = json.dumps({"operation": "upload", "objects": objects[:MAX_BATCH_OBJECTS]})
        assert client.post(url, content=exact, headers=_auth(hub.alice)).status_code == 200


@sqlite_hub
@pytest.mark.parametrize(
    "path", ["a\x7fb.txt", "del\x7f", "\x1b[31mred.txt", "tab\there.txt", "c1\x85.txt", "\x9b.txt"]
)
def test_commit_path_with_a_control_character_is_refused(hub: HubServer, path: str) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/control", exist_ok=True)
    before = api.model_info("alice/control").sha
    lines = [
        {"key": "header", "value": {"summary": "control"}},
        {"key": "file", "value": {"path": path, "encoding": "base64",
                                  "content": base64.b64encode(b"x").decode()}},
    ]
    answer = httpx.post(
        f"{hub.url}/api/models/alice/control/commit/main",
        content="\n".join(json.dumps(line) for line in lines),
        headers={**_auth(hub.alice), "content-type": "application/x-ndjson"},
    )
    assert answer.status_code == 400, answer.text
    assert "control characters" in answer.headers["x-error-message"]
    assert api.model_info("alice/control").sha == before


@sqlite_hub
def test_range_with_spaces_is_not_served_as_a_range(hub: HubServer) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/spaced-range", exist_ok=True)
    data = bytes(range(100))
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="d.bin",
                             repo_id="alice/spaced-range")
    url = f"{hub.url}/alice/spaced-range/resolve/{commit.oid}/d.bin"
    for spec in ("bytes = 0 - 5", "bytes=0 - 5", "bytes= 0-5", "bytes=0-5 ,7-8", "bytes=0x0-0x5"):
        answer = httpx.get(url, headers={"range": spec})
        assert answer.status_code == 416, (spec, answer.status_code)
        assert answer.headers["content-range"] == f"bytes */{len(data)}"
        assert "Range" in answer.headers["x-error-message"]
    answer = httpx.get(url, headers={"range": "bytes=0-5"})
    assert answer.status_code == 206 and answer.content == data[:6]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DatabaseUnavailable("down"), 503),
        (DatabaseLocked("busy"), 503),
        (SchemaOutdated("upgraded under the server"), 503),
        (DiskFull("no space"), 507),
        (DatabaseConflict("taken"), 409),
        (InvalidAdapter("bad config"), 400),
        (StorageError("permission denied"), None),  # the operator's problem: a logged 500
    ],
)
def test_typed_errors_get_the_status_of_what_they_are(error: Exception, status: int) -> None:
    answer = http_error_for(error)  # type: ignore[arg-type]
    assert (answer.status if answer else None) == status
    if status == 503:
        assert answer is not None and answer.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)


def test_indexing_that_fails_on_a_locked_database_is_retried(tmp_path: Path) -> None:
    db_file = tmp_path / "hub.db"
    url = f"sqlite:///{db_file}"
    ensure_schema(url)
    engine = make_engine(url)
    impatient = make_engine(url)  # the indexer's: waits 50 ms for a lock, not 30 s

    @event.listens_for(impatient, "connect")
    def _short_wait(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=50")

    config = ServerConfig(data_dir=tmp_path / "data", db_url=url)
    indexer = RegistryIndexer(impatient, config)
    service = HubService(engine, BlobStore(config.blobs_dir), config,
                         load_or_create_secret(config.data_dir), indexer)
    me = service.authenticate(f"Bearer {create_token(engine, 'alice', 'alice')}")
    service.create_repo(me, "alice", "locked", False, "http://x")
    folder = make_adapter(tmp_path / "adapter")
    ops = [CommitOp("file", p.name, content=p.read_bytes()) for p in sorted(folder.iterdir())]
    first = service.commit(me, "alice/locked", "main", {"summary": "v1"}, ops, "http://x")
    store = RegistryStore(engine)
    assert store.get_module("alice/locked", source="local").revision == first["commitOid"]
    assert indexer.pending() == []

    # v2 lands through a server process that dies before indexing it (no indexer here): the
    # marker left before its transaction is all that says the registry is behind.
    card = CommitOp("file", "README.md", content=b"---\nlicense: mit\n---\nv2\n")
    token = indexer.expect("alice/locked")
    dying = HubService(engine, service.blobs, config, load_or_create_secret(config.data_dir))
    second = dying.commit(me, "alice/locked", "main", {"summary": "v2"}, [card], "http://x")
    assert indexer.pending() == ["alice/locked"]
    head = indexer.head_commit("alice/locked")
    assert head.sha == second["commitOid"]
    locker = sqlite3.connect(db_file, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the database
        indexer(head, token)  # fails after its retries, logged, never raised
        assert indexer.pending() == ["alice/locked"]
        assert indexer.retry_pending() == (0, 1)  # still locked: still pending
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert store.get_module("alice/locked", source="local").revision == first["commitOid"]
    assert indexer.retry_pending() == (1, 0)
    assert store.get_module("alice/locked", source="local").revision == second["commitOid"]
    assert indexer.pending() == []
    engine.dispose()
    impatient.dispose()


def test_commit_on_a_database_locked_past_every_attempt_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.server import commits
    from registry.server.errors import HubHTTPError

    monkeypatch.setattr(commits, "COMMIT_ATTEMPTS", 3)  # 20 attempts x the backoff: 8 s
    db_file = tmp_path / "hub.db"
    url = f"sqlite:///{db_file}"
    ensure_schema(url)
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _short_wait(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout=20")

    config = ServerConfig(data_dir=tmp_path / "data", db_url=url)
    indexer = RegistryIndexer(engine, config)
    service = HubService(engine, BlobStore(config.blobs_dir), config,
                         load_or_create_secret(config.data_dir), indexer)
    me = service.authenticate(f"Bearer {create_token(engine, 'alice', 'alice')}")
    service.create_repo(me, "alice", "busy", False, "http://x")
    op = [CommitOp("file", "a.txt", content=b"a")]
    locker = sqlite3.connect(db_file, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        with pytest.raises(HubHTTPError) as refused:
            service.commit(me, "alice/busy", "main", {"summary": "a"}, op, "http://x")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert indexer.pending() == []  # nothing was committed: no re-indexing left to do
    landed = service.commit(me, "alice/busy", "main", {"summary": "a"}, op, "http://x")
    assert service.refs(me, "alice/busy")["branches"][0]["targetCommit"] == landed["commitOid"]
    engine.dispose()
