"""A full disk: the blob store on a 4 MiB tmpfs of its own, filled up under a running server.

Uploads through huggingface_hub are refused with 507 (an LFS PUT and a regular file in a
commit alike), nothing is half-written (no temporary file, no partial blob, no new revision,
the space used unchanged), reads keep working, and once space is freed the same uploads land.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from tests.support.faults import start_fault_hub

pytestmark = pytest.mark.slow

FS_SIZE = 4 * 1024 * 1024


@pytest.fixture
def small_blob_store(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/hub-data/blobs`` on a tmpfs of ``FS_SIZE`` bytes, unmounted afterwards."""
    blobs = tmp_path / "hub-data" / "blobs"
    blobs.mkdir(parents=True)
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command to give the blob store a filesystem of its own")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(blobs)],
        capture_output=True, text=True, timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the blob store: {mounted.stderr.strip()}")
    try:
        yield blobs
    finally:
        if subprocess.run(["umount", str(blobs)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(blobs)], capture_output=True, timeout=30)


def _answer(exc: BaseException) -> tuple[int, str] | None:
    """(status, X-Error-Message) behind a huggingface_hub error (LFS upload errors come
    wrapped in a RuntimeError)."""
    while exc is not None:
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            return exc.response.status_code, exc.response.headers.get("x-error-message", "")
        exc = exc.__cause__  # type: ignore[assignment]
    return None


def _used(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def test_full_blob_store_refuses_uploads_with_507_and_recovers(
    small_blob_store: Path, tmp_path: Path
) -> None:
    hub = start_fault_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        api = hub.api(hub.alice)
        api.create_repo("alice/full")
        kept = os.urandom(1024 * 1024)
        first = api.create_commit("alice/full", [
            CommitOperationAdd("kept.safetensors", kept),
            CommitOperationAdd("kept.txt", b"small and regular\n"),
        ], commit_message="before the disk fills")

        # Fill the filesystem to within 100 KiB with a file of someone else's.
        ballast = small_blob_store / "ballast"
        stat = os.statvfs(small_blob_store)
        ballast.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 100 * 1024))
        used = _used(small_blob_store)
        blobs_before = sorted(p.name for p in hub.blob_files() if p.name != "ballast")

        lfs_file = os.urandom(1024 * 1024)  # an LFS upload (PUT of a signed URL)
        regular = os.urandom(300 * 1024).hex().encode()  # 600 KB, base64 inside the commit
        for ops in ([CommitOperationAdd("w.safetensors", lfs_file)],
                    [CommitOperationAdd("notes.txt", regular)]):
            with pytest.raises((HfHubHTTPError, RuntimeError)) as refused:
                api.create_commit("alice/full", ops, commit_message="while the disk is full")
            answer = _answer(refused.value)
            assert answer is not None and answer[0] == 507, refused.value
            assert "no space left" in answer[1], answer
            # nothing half-written: no temporary file, no new blob, the space used unchanged
            assert hub.temp_files() == []
            assert sorted(p.name for p in hub.blob_files() if p.name != "ballast") == blobs_before
            assert _used(small_blob_store) == used
        assert api.model_info("alice/full").sha == first.oid  # no new revision

        # Reads keep working on a full disk.
        path = hf_hub_download("alice/full", "kept.safetensors", endpoint=hub.url, token=False,
                               cache_dir=tmp_path / "cache")
        assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(kept).digest()
        assert set(api.list_repo_files("alice/full")) == {".gitattributes", "kept.safetensors",
                                                          "kept.txt"}

        # Space freed: the same uploads land.
        ballast.unlink()
        landed = api.create_commit("alice/full", [
            CommitOperationAdd("w.safetensors", lfs_file),
            CommitOperationAdd("notes.txt", regular),
        ], commit_message="after space was freed")
        for name, data in (("w.safetensors", lfs_file), ("notes.txt", regular)):
            path = hf_hub_download("alice/full", name, revision=landed.oid, endpoint=hub.url,
                                   token=False, cache_dir=tmp_path / "cache")
            assert Path(path).read_bytes() == data
        log = hub.log_path.read_text(errors="replace")
        assert "507 on PUT /api/lfs-upload/" in log and "507 on POST /api/models/" in log, log
        assert hub.internal_errors() == []
    finally:
        hub.launched.stop(timeout=10)
