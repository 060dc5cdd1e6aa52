"""Files written through temporary files get the modes a plain write would give them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from composer.adapter_io import write_adapter_folder
from loradex.files import apply_default_permissions, current_umask


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
