"""Data signatures for modules the composer trains: a sample of their training inputs, embedded.

``loradex train`` and ``loradex library build`` write ``loradex_signature.safetensors`` into
each module folder as they save it; :func:`sign_library` gives an already built library the
same file from the training split it was built on, without retraining.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from composer.data import Example, load_examples
from loradex.errors import ModuleNotFound
from registry.entities import Signature
from registry.signatures import SIGNATURE_FILE, data_signature, write_signature_file

if TYPE_CHECKING:
    from composer.library import LibrarySpec
    from registry.embedders import Embedder


def sign_folder(folder: Path, examples: Sequence[Example], embedder: Embedder) -> Signature:
    """Embed a sample of ``examples``' inputs and write the signature file into ``folder``."""
    signature = data_signature(embedder, [e.input for e in examples])
    write_signature_file(folder, signature)
    return signature


def sign_library(spec: LibrarySpec, embedder: Embedder, tasks: Sequence[str] = (), *,
                 overwrite: bool = False) -> list[Path]:
    """Write each built module's data signature from the training split it was built on.

    Modules that already have one are kept unless ``overwrite``; returns the folders signed.
    """
    from composer.library import split_task

    out = Path(spec.out_dir)
    folders = ([out / t for t in tasks] if tasks
               else sorted(p.parent for p in out.glob("*/adapter_config.json")))
    signed: list[Path] = []
    for folder in folders:
        if not (folder / "adapter_config.json").is_file():
            raise ModuleNotFound(f"{folder}: no built module there")
        if (folder / SIGNATURE_FILE).exists() and not overwrite:
            continue
        examples = load_examples(Path(spec.data_dir) / f"{folder.name}.jsonl")
        train, _test = split_task(examples, spec.test_size, spec.split_seed)
        sign_folder(folder, train, embedder)
        signed.append(folder)
    return signed
