"""``kill -9`` of ``loradex serve`` mid-upload and mid-commit, then a restart and a GC.

The server is one process (``--workers 1``), so SIGKILL leaves nothing running. Mid-upload is
half an LFS body sent on a raw socket; mid-commit is a commit whose content is already in the
blob store while its transaction waits for the SQLite write lock, which the test holds. After
the restarts: no partial revision, the repo reads back byte for byte, the killed commit's repo
is reported pending re-indexing and re-indexed, the next GC (once the grace period is over)
leaves exactly the referenced blobs, and the client's retries then land.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import sqlalchemy as sa
from huggingface_hub import snapshot_download

from registry.db import make_engine
from registry.server.gc import GC_GRACE_SECONDS
from registry.server.indexing import PENDING_DIR
from registry.server.launch import LaunchedServer
from registry.store import RegistryStore
from tests.support.faults import restart, start_fault_hub
from tests.support.hub import MAX_UPLOAD, loradex, make_adapter

pytestmark = pytest.mark.slow


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill(server: LaunchedServer) -> None:
    server.process.kill()  # SIGKILL: no handler, no cleanup
    server.process.wait(timeout=10)


def _referenced_blobs(db_url: str) -> set[str]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(sa.text("SELECT sha256 FROM hub_blobs")))
    finally:
        engine.dispose()


def test_kill_9_mid_upload_and_mid_commit_leaves_no_partial_state(tmp_path: Path) -> None:
    db_file = tmp_path / "hub.db"
    hub = start_fault_hub(tmp_path, f"sqlite:///{db_file}")
    servers = [hub.launched]
    try:
        api = hub.api(hub.alice)
        api.create_repo("alice/killed")
        folder = make_adapter(tmp_path / "adapter", seed=7)
        first = api.upload_folder(repo_id="alice/killed", folder_path=folder)
        expected = {p.name: _sha256(p.read_bytes()) for p in folder.iterdir()}

        # 1. Killed mid-upload: half of an LFS body is on disk in a temporary file.
        upload = os.urandom(MAX_UPLOAD // 2)
        batch = httpx.post(
            f"{hub.url}/alice/killed.git/info/lfs/objects/batch",
            json={"operation": "upload",
                  "objects": [{"oid": _sha256(upload), "size": len(upload)}]},
            headers={"authorization": f"Bearer {hub.alice}"},
        ).json()
        href = urlparse(batch["objects"][0]["actions"]["upload"]["href"])
        with socket.create_connection((href.hostname, href.port), timeout=10) as sock:
            sock.sendall(
                f"PUT {href.path}?{href.query} HTTP/1.1\r\nHost: {href.netloc}\r\n"
                f"Content-Length: {len(upload)}\r\n\r\n".encode() + upload[: len(upload) // 2]
            )
            _wait_for(lambda: any(p.stat().st_size > 0 for p in hub.temp_files()), 10,
                      "the upload's temporary file")
            _kill(hub.launched)
        assert hub.temp_files(), "the killed upload left its temporary file (GC removes it)"

        # 2. Killed mid-commit: content stored, transaction waiting for the write lock.
        server = restart(hub, "after-upload-kill")
        servers.append(server)
        orphan = b"content of a commit killed in flight " + os.urandom(16)
        lines = [
            {"key": "header", "value": {"summary": "killed"}},
            {"key": "file", "value": {"path": "killed.txt", "encoding": "base64",
                                      "content": base64.b64encode(orphan).decode()}},
        ]
        errors: list[BaseException] = []

        def commit() -> None:
            try:
                httpx.post(
                    f"{server.url}/api/models/alice/killed/commit/main",
                    content="\n".join(json.dumps(line) for line in lines),
                    headers={"authorization": f"Bearer {hub.alice}",
                             "content-type": "application/x-ndjson"},
                    timeout=60,
                )
            except httpx.TransportError as exc:  # the server died under it
                errors.append(exc)

        locker = sqlite3.connect(db_file, isolation_level=None, timeout=30)
        try:
            locker.execute("BEGIN IMMEDIATE")
            sender = threading.Thread(target=commit, daemon=True)
            sender.start()
            orphan_path = hub.data_dir / "blobs" / _sha256(orphan)[:2] / _sha256(orphan)[2:4]
            _wait_for(lambda: (orphan_path / _sha256(orphan)).exists(), 20,
                      "the commit's content in the blob store")
            _wait_for(lambda: list((hub.data_dir / PENDING_DIR).glob("*.pending")), 10,
                      "the commit's pending marker")
            time.sleep(0.3)  # inside the commit: waiting on the lock for its transaction
            _kill(server)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        sender.join(timeout=30)
        assert len(errors) == 1, "the client saw the connection die"

        # 3. Restart: the repo is pending re-indexing, reported and re-indexed at start.
        server = restart(hub, "after-commit-kill")
        servers.append(server)
        assert server.log_path is not None
        start_log = server.log_path.read_text()
        assert "1 repo(s) pending re-indexing: alice/killed" in start_log, start_log
        assert "re-indexed 1 repo(s)" in start_log, start_log
        assert not list((hub.data_dir / PENDING_DIR).glob("*.pending"))
        reader = httpx.Client(base_url=server.url, timeout=30)
        # No partial revision: the head and the history are those before the kills.
        info = httpx.get(f"{server.url}/api/models/alice/killed").json()
        assert info["sha"] == first.oid
        commits = httpx.get(f"{server.url}/api/models/alice/killed/commits/main").json()
        assert commits[0]["id"] == first.oid and len(commits) == 2
        snapshot = Path(snapshot_download("alice/killed", endpoint=server.url, token=False,
                                          cache_dir=tmp_path / "cache1"))
        assert {p.name: _sha256(p.read_bytes()) for p in snapshot.iterdir()
                if p.name in expected} == expected
        store = RegistryStore(make_engine(hub.db_url))
        assert store.get_module("alice/killed", source="local").revision == first.oid

        # 4. The next GC once the grace period is over: exactly the referenced blobs are left.
        server.stop()
        aged = time.time() - GC_GRACE_SECONDS - 60
        for path in (hub.data_dir / "blobs").rglob("*"):
            if path.is_file():
                os.utime(path, (aged, aged))
        gc = loradex("--db", hub.db_url, "serve", "--data", str(hub.data_dir), "--gc-only")
        assert "removed 1 unreferenced blob(s)" in gc.stderr, gc.stderr  # the killed commit's
        assert hub.temp_files() == []  # the killed upload's temporary file
        assert {p.name for p in hub.blob_files()} == _referenced_blobs(hub.db_url)
        assert not (orphan_path / _sha256(orphan)).exists()

        # 5. Readable after the GC, and the client's retries land.
        server = restart(hub, "after-gc")
        servers.append(server)
        snapshot = Path(snapshot_download("alice/killed", endpoint=server.url, token=False,
                                          cache_dir=tmp_path / "cache2"))
        assert {p.name: _sha256(p.read_bytes()) for p in snapshot.iterdir()
                if p.name in expected} == expected
        from huggingface_hub import CommitOperationAdd, HfApi

        retry = HfApi(endpoint=server.url, token=hub.alice).create_commit(
            "alice/killed",
            [CommitOperationAdd("killed.txt", orphan), CommitOperationAdd("w.bin", upload)],
            commit_message="retried",
        )
        got = reader.get(f"{server.url}/alice/killed/resolve/{retry.oid}/w.bin")
        assert got.status_code == 200 and _sha256(got.content) == _sha256(upload)
        reader.close()
        _wait_for(lambda: store.get_module("alice/killed", source="local").revision == retry.oid,
                  10, "the registry to index the retried commit")
        store.engine.dispose()
        for launched in servers[1:]:
            assert launched.log_path is not None
            text = launched.log_path.read_text(errors="replace")
            assert "Traceback" not in text and "internal error" not in text, text
    finally:
        for launched in servers:
            launched.stop(timeout=10)
