"""The library manifest: concurrent builders' updates add up instead of overwriting."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from composer.library import _update_manifest, load_manifest


def test_concurrent_manifest_updates_all_land(tmp_path: Path) -> None:
    settings = {"test_size": 50}

    def build(worker: int) -> None:
        for i in range(10):
            _update_manifest(tmp_path, settings, f"task{worker}_{i}", {"steps": i})

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(build, range(4)))
    manifest = load_manifest(tmp_path)
    assert len(manifest["modules"]) == 40 and manifest["settings"] == settings
