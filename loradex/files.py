"""Files on disk: atomic writes, and the sha256 of a file's bytes.

A file or a whole folder appears under its real name complete, or not at all: content goes to
a temporary sibling first and is ``os.replace``-d into place, so a crash never leaves half a
file or half an adapter folder under the real name. ``tempfile`` creates files
0600 and folders 0700, and ``os.replace`` keeps those modes; what we write gets the modes a
plain ``open``/``mkdir`` would have given it instead (0666/0777 minus the umask), as
huggingface_hub does for its downloads, so others on a shared machine can read it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from loradex.errors import DiskFull, StorageError


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks (never the whole file in memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@functools.cache
def current_umask() -> int:
    """The process umask (read once: setting it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_default_permissions(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a plain write would."""
    mask = current_umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``target``, then ``os.replace`` it there."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        apply_default_permissions(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_folder(out: Path, fill: Callable[[Path], object]) -> Path:
    """Call ``fill(tmp)`` on a temporary sibling folder of ``out``, then put it at ``out``
    (replacing what was there). The caller decides whether replacing is allowed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        apply_default_permissions(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        os.replace(tmp, out)
        return out
    # Two renames, then the slow delete: deleting the old folder first would leave half of it
    # (and no new one) if the process were stopped during the delete.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def storage_error(exc: OSError) -> StorageError:
    """The typed error for an ``OSError`` from reading or writing a file: one line that names
    the file and what to do (no space, permission, a missing folder)."""
    name = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left on the device writing {name}: free some space and retry")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"permission denied: {name} ({reason})")
    if exc.errno == errno.ENOENT:
        return StorageError(f"no such file or folder: {name}")
    return StorageError(f"{name}: {reason}")
