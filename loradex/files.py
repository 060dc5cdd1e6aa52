"""File permissions for what is written through temporary files.

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` folders 0700, and ``os.replace`` keeps
those modes; an adapter folder written that way could not be read by anyone else on a shared
machine. Everything we write atomically gets the modes a plain ``open``/``mkdir`` would have
given it instead (0666/0777 minus the umask), as huggingface_hub does for its downloads.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


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
