"""Files written through temporary files get the modes a plain write would give them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from composer.adapter_io import write_adapter_folder
from loradex.files import apply_default_permissions, atomic_write, current_umask, replace_folder


def test_temporary_files_and_folders_get_the_umask_modes(tmp_path: Path) -> None:
    fd, name = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "inner").mkdir(mode=0o700)
    (folder / "inner" / "f").write_text("x")
    os.chmod(folder / "inner" / "f", 0o600)
    assert Path(name).stat().st_mode & 0o777 == 0o600  # what tempfile gives
    apply_default_permissions(Path(name))
    apply_default_permissions(folder)
    mask = current_umask()
    assert Path(name).stat().st_mode & 0o777 == 0o666 & ~mask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (folder / "inner").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (folder / "inner" / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_adapter_folders_are_readable_by_others_as_umask_allows(tmp_path: Path) -> None:
    out = write_adapter_folder(
        tmp_path / "adapter",
        config={"peft_type": "LORA", "r": 1},
        tensors={"w": torch.zeros(2, 2)},
        card="card\n",
    )
    mask = current_umask()
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
    assert (out / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_replace_folder_swaps_whole_folders_and_keeps_the_old_one_on_failure(
    tmp_path: Path,
) -> None:
    out = tmp_path / "adapter"

    def fill(version: str) -> Callable[[Path], None]:
        def write(folder: Path) -> None:
            (folder / "sub").mkdir()
            (folder / "sub" / "weights").write_text(version)
        return write

    replace_folder(out, fill("v1"))
    assert (out / "sub" / "weights").read_text() == "v1"

    def broken(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("stopped while writing")

    with pytest.raises(RuntimeError):
        replace_folder(out, broken)
    assert (out / "sub" / "weights").read_text() == "v1" and not (out / "half").exists()
    replace_folder(out, fill("v2"))
    assert (out / "sub" / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporaries left


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def broken(tmp: Path) -> None:
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]
