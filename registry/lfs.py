"""Which files go to Git LFS: binary formats, and anything big.

One rule for every side: ``loradex add`` records it in a module's file list, and the built-in
Hub answers it to ``preupload`` and writes it into ``.gitattributes``, so a file is LFS in the
registry exactly when our server would have stored it through LFS.
"""

from __future__ import annotations

import fnmatch

__all__ = ["LFS_PATTERNS", "LFS_SIZE_THRESHOLD", "is_lfs_path"]

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
"""Files of this many bytes or more go to LFS whatever their name."""

LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.gguf",
    "*.onnx",
    "*.h5",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.zip",
    "*.tar",
    "*.gz",
    "*.tgz",
    "*.xz",
    "*.zst",
    "*.pkl",
    "*.pickle",
    "*.joblib",
    "*.arrow",
    "*.parquet",
    "*.tflite",
    "*.ot",
    "*.model",
)
"""File-name patterns of binary formats (``.gitattributes`` syntax, matched on the base name)."""


def is_lfs_path(path: str, size: int) -> bool:
    """True when a file of ``size`` bytes at ``path`` (``/``-separated) belongs in LFS."""
    if size >= LFS_SIZE_THRESHOLD:
        return True
    # Case-insensitive, as `loradex add` always matched suffixes: WEIGHTS.BIN is still binary.
    name = path.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in LFS_PATTERNS)
