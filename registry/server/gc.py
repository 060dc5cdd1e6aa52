"""Garbage collection of blob files no commit references (``loradex serve --gc-only``)."""

from __future__ import annotations

import time

from sqlalchemy import Engine, select

from registry.hub_models import SqlHubBlob
from registry.server.blobstore import BlobStore
from registry.server.uploads import UPLOAD_URL_TTL

GC_GRACE_SECONDS = 2 * UPLOAD_URL_TTL


def collect_garbage(
    engine: Engine, blobs: BlobStore, older_than: float = GC_GRACE_SECONDS
) -> tuple[int, int]:
    """Delete blob files no commit references and nobody used for ``older_than`` seconds.

    They come from commits that failed after their content was stored, and from LFS
    uploads never committed. The grace period (longer than an upload URL lives) spares
    anything an in-flight upload or commit may still reference. Returns (files, bytes).
    """
    cutoff = time.time() - older_than
    with engine.connect() as conn:
        referenced = set(conn.scalars(select(SqlHubBlob.sha256)))
    removed = freed = 0
    for sha, path in blobs.iter_blobs():
        if sha in referenced:
            continue
        try:
            stat = path.stat()
            if stat.st_mtime >= cutoff:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        freed += stat.st_size
    blobs.remove_stale_temp_files(older_than)
    return removed, freed
