"""Task signatures: small sets of vectors that say what a module does.

Two kinds, both made by an :mod:`registry.embedders` embedder and stored with its name:

- a **data** signature: embeddings of a sample of the module's training inputs, written at
  training time into the module folder as ``loradex_signature.safetensors`` (one float16
  tensor ``inputs`` of shape (n, dim); the embedder, kind and format version in the
  safetensors metadata) and published with the module;
- a **card** signature: one embedding of what the card says the module is for (task name and
  description, tags, datasets, repo name), for the modules without data (most on the Hub).

The file is small and bounded (``MAX_FILE_BYTES``, ``MAX_VECTORS``, ``MAX_DIM``): a file
outside the limits or of the wrong shape is an :class:`InvalidSignature` naming the file:
``add``, ``sync`` and the server index the module without it (one warning line), ``publish``
refuses to upload it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loradex.errors import InvalidAdapter
from loradex.files import atomic_write
from registry.entities import Signature
from registry.safetensors_header import read_safetensors_header

if TYPE_CHECKING:
    import numpy as np

    from registry.embedders import Embedder
    from registry.entities import Module

SIGNATURE_FILE = "loradex_signature.safetensors"
SIGNATURE_FORMAT = "loradex-signature"
SIGNATURE_VERSION = "1"
TENSOR_NAME = "inputs"
DATA = "data"
CARD = "card"
KINDS = (DATA, CARD)
# 32 examples x 384 dims x 2 bytes is 24 KiB; the limits leave room, but not for abuse.
MAX_VECTORS = 256
MAX_DIM = 4096
MAX_FILE_BYTES = 4 * 1024 * 1024
# Training inputs embedded into a data signature, at most.
DEFAULT_SAMPLE = 32
# Characters of an input embedded (the embedder truncates tokens further).
_MAX_TEXT_CHARS = 2000


class InvalidSignature(InvalidAdapter):
    """A signature file that is malformed, oversized or of the wrong shape."""


def signature_from_array(kind: str, embedder: str, vectors: np.ndarray) -> Signature:
    """A :class:`Signature` from a (count, dim) array, checked against the limits."""
    import numpy as np

    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1:
        raise InvalidSignature(f"signature vectors must be (count, dim), not {array.shape}")
    _check_shape(array.shape[0], array.shape[1], "signature")
    if kind not in KINDS:
        raise InvalidSignature(f"signature kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not np.isfinite(array).all():
        raise InvalidSignature("signature vectors hold NaN or infinite values")
    return Signature(kind=kind, embedder=embedder, dim=int(array.shape[1]),
                     count=int(array.shape[0]), vectors=array.astype("<f2").tobytes())


def _check_shape(count: int, dim: int, label: str) -> None:
    if not 1 <= count <= MAX_VECTORS:
        raise InvalidSignature(f"{label}: {count} vectors, expected 1 to {MAX_VECTORS}")
    if not 1 <= dim <= MAX_DIM:
        raise InvalidSignature(f"{label}: vectors of width {dim}, expected 1 to {MAX_DIM}")


def sample_inputs(inputs: Sequence[str], limit: int = DEFAULT_SAMPLE) -> list[str]:
    """Up to ``limit`` inputs, spread evenly over the list (deterministic), cut to a length."""
    if len(inputs) <= limit:
        chosen = list(inputs)
    else:
        step = len(inputs) / limit
        chosen = [inputs[math.floor(i * step)] for i in range(limit)]
    return [text[:_MAX_TEXT_CHARS] for text in chosen]


def data_signature(embedder: Embedder, inputs: Sequence[str],
                   limit: int = DEFAULT_SAMPLE) -> Signature:
    """Embed a sample of a module's training inputs."""
    texts = sample_inputs([t for t in inputs if t.strip()], limit)
    if not texts:
        raise InvalidSignature("no training inputs to make a data signature from")
    return signature_from_array(DATA, embedder.name, embedder.embed(texts))


def card_text(module: Module) -> str:
    """What a module's card says it does, as one text: task, description, tags, data, name."""
    name = module.repo_id.split("/", 1)[-1].replace("_", " ").replace("-", " ")
    parts = [
        (module.task_name or "").replace("_", " "),
        module.task_category or "",
        module.description or "",
        (module.dataset or "").replace("_", " "),
        ", ".join(t for t in module.tags if ":" not in t),
        name,
    ]
    return ". ".join(p.strip() for p in parts if p and p.strip())[:_MAX_TEXT_CHARS]


def card_signatures(embedder: Embedder, modules: Sequence[Module]) -> list[Signature]:
    """One card signature per module, embedded in one batch."""
    vectors = embedder.embed([card_text(m) for m in modules])
    return [signature_from_array(CARD, embedder.name, vectors[i:i + 1])
            for i in range(len(modules))]


def signature_file_bytes(signature: Signature) -> bytes:
    """The content of ``loradex_signature.safetensors`` for ``signature``: the same bytes for
    the same signature in every process (safetensors' own writer orders the metadata by a
    per-process hash, so two runs of a library build wrote different files)."""
    array = signature.array().astype("<f2")
    metadata = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION,
                "kind": signature.kind, "embedder": signature.embedder}
    header = {
        "__metadata__": metadata,
        TENSOR_NAME: {"dtype": "F16", "shape": list(array.shape),
                      "data_offsets": [0, array.nbytes]},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads its header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + array.tobytes()


def write_signature_file(folder: Path, signature: Signature) -> Path:
    """Write ``loradex_signature.safetensors`` into ``folder`` atomically."""
    target = Path(folder) / SIGNATURE_FILE
    data = signature_file_bytes(signature)
    atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target


def read_signature_file(source: Path | bytes, label: str | None = None) -> Signature:
    """A signature from a file's path or bytes; :class:`InvalidSignature` naming it if bad.

    Checks size, header, metadata, dtype, shape and values before decoding anything.
    """
    if isinstance(source, bytes):
        data, name = source, label or SIGNATURE_FILE
    else:
        name = label or str(source)
        try:
            size = source.stat().st_size
            if size > MAX_FILE_BYTES:
                raise InvalidSignature(f"{name}: {size} bytes, over the {MAX_FILE_BYTES} limit")
            data = source.read_bytes()
        except OSError as exc:
            raise InvalidSignature(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidSignature(f"{name}: {len(data)} bytes, over the {MAX_FILE_BYTES} limit")
    try:  # the one safetensors header reader, bounds and offsets checked
        header = dict(read_safetensors_header(data, name=name))
    except InvalidAdapter as exc:
        raise InvalidSignature(str(exc)) from None
    start = 8 + struct.unpack("<Q", data[:8])[0]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or meta.get("format") != SIGNATURE_FORMAT:
        raise InvalidSignature(f"{name}: not a loradex signature (metadata format is not "
                               f"{SIGNATURE_FORMAT!r})")
    if str(meta.get("version")) != SIGNATURE_VERSION:
        raise InvalidSignature(f"{name}: signature format version {meta.get('version')!r}, "
                               f"this loradex reads {SIGNATURE_VERSION}")
    embedder = meta.get("embedder")
    if not isinstance(embedder, str) or not embedder.strip() or len(embedder) > 200:
        raise InvalidSignature(f"{name}: no embedder name in the metadata")
    kind = meta.get("kind", DATA)
    if set(header) != {TENSOR_NAME}:
        raise InvalidSignature(f"{name}: expected one tensor {TENSOR_NAME!r}, found "
                               f"{sorted(header)[:5]}")
    info = header[TENSOR_NAME]
    if not isinstance(info, dict) or info.get("dtype") not in ("F16", "F32"):
        raise InvalidSignature(f"{name}: tensor {TENSOR_NAME!r} must be F16 or F32")
    shape = info.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)):
        raise InvalidSignature(f"{name}: tensor {TENSOR_NAME!r} must be 2-D (count, dim)")
    _check_shape(shape[0], shape[1], name)
    offsets = info.get("data_offsets")
    width = 2 if info["dtype"] == "F16" else 4
    expected = shape[0] * shape[1] * width
    if (not isinstance(offsets, list) or len(offsets) != 2 or offsets[0] != 0
            or offsets[1] != expected or start + expected != len(data)):
        raise InvalidSignature(f"{name}: tensor data does not match its shape {shape}")
    import numpy as np

    array = np.frombuffer(data, dtype="<f2" if width == 2 else "<f4", count=shape[0] * shape[1],
                          offset=start).reshape(shape)
    try:
        return signature_from_array(kind, embedder, array)
    except InvalidSignature as exc:
        raise InvalidSignature(f"{name}: {exc}") from None


def folder_signature(folder: Path) -> Signature | None:
    """The data signature a module folder carries, None when it has none; InvalidSignature
    naming the file when it is bad."""
    path = Path(folder) / SIGNATURE_FILE
    if not path.exists():
        return None
    signature = read_signature_file(path)
    if signature.kind != DATA:
        raise InvalidSignature(f"{path}: a {signature.kind!r} signature; a module folder "
                               "carries a 'data' one")
    return signature


def sign_modules(modules: Sequence[Module], embedder: Embedder | None,
                 data: Sequence[Signature | None] | None = None) -> list[Module]:
    """``modules`` with their signatures: the data signature given for each (default: the
    ones they carry), and a card signature from ``embedder`` (if any), in one batch."""
    from dataclasses import replace

    kept = ([tuple(s for s in m.signatures if s.kind == DATA) for m in modules] if data is None
            else [(d,) if d is not None else () for d in data])
    cards: list[tuple[Signature, ...]] = (
        [(c,) for c in card_signatures(embedder, modules)] if embedder is not None and modules
        else [()] * len(modules))
    return [replace(m, signatures=(*d, *c)) for m, d, c in zip(modules, kept, cards, strict=True)]


def sign_folder_module(module: Module, folder: Path,
                       embedder: Embedder | None) -> tuple[Module, str | None]:
    """``module`` (read from ``folder``) with its folder's data signature and a card
    signature; a bad signature file leaves it out and is returned as a warning line."""
    warning = None
    try:
        data = folder_signature(folder)
    except InvalidSignature as exc:
        warning = f"{exc}; indexed without its data signature"
        data = None
    return sign_modules([module], embedder, [data])[0], warning
