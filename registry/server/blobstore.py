"""Content-addressed blob store on disk: ``ROOT/ab/cd/<sha256>``.

Every write goes to a temporary file in ``ROOT/tmp``, is fsynced, checked against the expected
sha256 and size, and only then ``os.replace``-d under its final name, so a crash or an aborted
upload never leaves a partial blob under a real name. Identical content is stored once.
An ``OSError`` while writing (no space left, an I/O error) drops the temporary file and leaves
as loradex's typed :class:`~loradex.errors.StorageError` (``DiskFull`` for ENOSPC), which the
server answers 507 (or 500 for other storage errors).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from loradex.files import storage_error

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
STALE_TEMP_SECONDS = 3600


class BlobMismatch(ValueError):
    """The bytes received do not match the sha256 or the size the client announced."""


class BlobTooLarge(ValueError):
    """More bytes arrived than the configured upload limit (or the announced size)."""


def is_sha256(value: str) -> bool:
    """True for a lowercase 64-hex-digit string."""
    return bool(_SHA256_RE.match(value))


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as ``oid`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer text stored in git in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


class BlobWriter:
    """A blob being written: feed chunks, then :meth:`commit` (verify + rename) or :meth:`abort`."""

    def __init__(self, store: BlobStore, max_size: int) -> None:
        self._store = store
        self._max_size = max_size
        try:
            fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        except OSError as exc:
            raise storage_error(exc) from exc
        self._file = os.fdopen(fd, "wb")
        self._tmp_path = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        """Append a chunk; raises :class:`BlobTooLarge` past the limit."""
        self.size += len(chunk)
        if self.size > self._max_size:
            raise BlobTooLarge(f"upload exceeds {self._max_size} bytes")
        self._hash.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:  # no space left: drop what was written, say so
            self.abort()
            raise storage_error(exc) from exc

    def commit(self, expected_sha256: str | None = None, expected_size: int | None = None) -> str:
        """Verify, fsync and move the blob into place; return its sha256."""
        digest = self._hash.hexdigest()
        try:
            if expected_size is not None and self.size != expected_size:
                raise BlobMismatch(f"received {self.size} bytes, expected {expected_size}")
            if expected_sha256 is not None and digest != expected_sha256:
                raise BlobMismatch(
                    f"sha256 of the received bytes is {digest}, expected {expected_sha256}"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._closed = True
            final = self._store.path_for(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp_path, final)
            _fsync_dir(final.parent)
            return digest
        except OSError as exc:
            self.abort()
            raise storage_error(exc) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if not self._closed:
            self._closed = True
            # Closing flushes the buffer, which fails again on a full disk: the file goes anyway.
            with contextlib.suppress(OSError):
                self._file.close()
        self._tmp_path.unlink(missing_ok=True)


class BlobStore:
    """Blob files under ``root``, named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it exists)."""
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def size_of(self, sha256: str) -> int | None:
        """The stored size of a blob, or None when it is not stored."""
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def writer(self, max_size: int) -> BlobWriter:
        """Start writing a blob of at most ``max_size`` bytes."""
        return BlobWriter(self, max_size)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` (skipped when already present); return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if self.size_of(digest) == len(data):
            self.touch(digest)
            return digest
        writer = self.writer(len(data))
        writer.write(data)
        return writer.commit(digest, len(data))

    def touch(self, sha256: str) -> None:
        """Mark a blob as in use now: garbage collection spares recently used blobs."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path_for(sha256))

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        """Every stored blob as (sha256, path); temporary files excluded."""
        for path in self.root.glob("??/??/*"):
            if is_sha256(path.name) and path.is_file():
                yield path.name, path

    def remove_stale_temp_files(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files left by a crashed process; return how many."""
        cutoff = time.time() - older_than
        removed = 0
        for tmp in self.tmp_dir.glob("upload-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory entry (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
