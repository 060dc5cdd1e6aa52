"""Adapter folders as bytes: read on one machine, shipped in a unit or a worker spec (through
Ray's object store), written back whole on another. The driver writes a result folder with
:func:`write_folder` (a temporary sibling, then a rename), so a stopped run never leaves half a
module under its real name."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loradex.errors import ModuleNotFound
from loradex.files import replace_folder

FolderFiles = dict[str, bytes]  # path relative to the folder -> content


def read_folder(folder: Path) -> FolderFiles:
    """Every file under ``folder`` (relative paths, sorted), for shipping."""
    if not folder.is_dir():
        raise ModuleNotFound(f"{folder}: no such folder")
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fill_folder(folder: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` into the (new or empty) ``folder``."""
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def write_folder(out: Path, files: Mapping[str, bytes]) -> Path:
    """Put ``files`` at ``out`` atomically (replacing a folder there)."""
    return replace_folder(out, lambda tmp: fill_folder(tmp, files))


@dataclass(frozen=True)
class LibraryShipment:
    """How a folder of module folders reaches the workers: its bytes in the worker spec (Ray's
    object store carries it to each node once) or, ``shared``, its path on a file system every
    node mounts at the same place."""

    path: Path = field(metadata={"help": "the library folder on the driver"})
    files: dict[str, FolderFiles] | None = field(
        default=None, metadata={"help": "module name -> its files; None: a shared path"})

    @classmethod
    def pack(cls, path: Path, names: Iterable[str], *, shared: bool = False) -> LibraryShipment:
        """The modules ``names`` of the library at ``path``, as bytes unless ``shared``."""
        if shared:
            return cls(path=path)
        return cls(path=path, files={name: read_folder(path / name) for name in names})

    def unpack(self) -> Path:
        """A library folder on this machine holding the shipped modules."""
        if self.files is None:
            if not self.path.is_dir():
                raise ModuleNotFound(f"library {self.path}: not on this node's shared path")
            return self.path
        root = Path(tempfile.mkdtemp(prefix="loradex-library-"))
        atexit.register(shutil.rmtree, root, True)
        for name, files in self.files.items():
            fill_folder(root / name, files)
        return root
