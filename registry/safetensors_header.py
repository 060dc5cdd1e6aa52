"""The safetensors header, read and checked without loading a tensor.

A safetensors file is 8 bytes of little-endian header length, a JSON header (tensor name ->
``{"dtype", "shape", "data_offsets"}``, plus an optional ``"__metadata__"`` of strings), then
the data buffer. The header is read with ``struct`` + ``json`` from the first bytes (a file on
disk, or a Hub range request), and every tensor's span is checked against the buffer, so a
truncated or hostile file is refused with an :class:`~loradex.errors.InvalidAdapter` naming it.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from loradex.documents import MalformedDocument, parse_json
from loradex.errors import InvalidAdapter

__all__ = ["DTYPE_NAMES", "DTYPE_SIZES", "MAX_HEADER_BYTES", "read_safetensors_header"]

# Bytes per element of every safetensors dtype loradex accepts.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
# How a registry entry names a tensor dtype (torch's names where they exist).
DTYPE_NAMES: dict[str, str] = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
}
# A LoRA adapter's header is a few KB; 100 MB means a corrupt or hostile file.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(
    source: str | os.PathLike[str] | bytes,
    *,
    file_size: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Parse and validate a safetensors header from a path, or from the first bytes of a file.

    Reads only ``8 + header length`` bytes (never the tensors). ``file_size`` is the size of
    the whole file when ``source`` holds only its beginning (a Hub range request); without it,
    ``bytes`` are taken to be the whole file. Returns the header JSON object (tensor name ->
    ``{"dtype", "shape", "data_offsets"}``, plus ``"__metadata__"`` when present).
    Raises :class:`InvalidAdapter` naming the file for anything inconsistent.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<safetensors bytes>"
        data = bytes(source)
        size = len(data) if file_size is None else file_size
        prefix_len, header_bytes = _split_header(data, size, label)
    else:
        path = Path(source)
        label = name or str(path)
        try:
            size = path.stat().st_size if file_size is None else file_size
            with path.open("rb") as fh:
                prefix_len, header_bytes = _read_header_bytes(fh, size, label)
        except FileNotFoundError as exc:
            raise InvalidAdapter(f"{label}: file not found") from exc
        except IsADirectoryError as exc:
            raise InvalidAdapter(f"{label}: is a folder, not a safetensors file") from exc
    return _validate_header(header_bytes, prefix_len, size, label)


def _header_length(first8: bytes, size: int, label: str) -> int:
    if len(first8) < 8 or size < 8:
        raise InvalidAdapter(f"{label}: truncated safetensors file ({size} bytes, no header)")
    (length,) = struct.unpack("<Q", first8[:8])
    if length < 2 or length > MAX_HEADER_BYTES:
        raise InvalidAdapter(f"{label}: implausible safetensors header length {length}")
    if 8 + length > size:
        raise InvalidAdapter(
            f"{label}: truncated safetensors file (header of {length} bytes, file of {size})"
        )
    return length


def _read_header_bytes(fh: BinaryIO, size: int, label: str) -> tuple[int, bytes]:
    length = _header_length(fh.read(8), size, label)
    header = fh.read(length)
    if len(header) != length:
        raise InvalidAdapter(f"{label}: truncated safetensors header")
    return 8 + length, header


def _split_header(data: bytes, size: int, label: str) -> tuple[int, bytes]:
    length = _header_length(data[:8], size, label)
    if len(data) < 8 + length:
        raise InvalidAdapter(
            f"{label}: only {len(data)} bytes given, the header needs {8 + length}"
        )
    return 8 + length, data[8 : 8 + length]


def _validate_header(raw: bytes, data_start: int, size: int, label: str) -> dict[str, Any]:
    try:
        header = parse_json(raw)
    except MalformedDocument as exc:
        raise InvalidAdapter(f"{label}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{label}: safetensors header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise InvalidAdapter(f"{label}: __metadata__ must map strings to strings")
    data_size = size - data_start
    spans: list[tuple[int, int, str]] = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise InvalidAdapter(f"{label}: entry {tensor!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise InvalidAdapter(f"{label}: tensor {tensor!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidAdapter(f"{label}: tensor {tensor!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise InvalidAdapter(
                f"{label}: tensor {tensor!r} has invalid data_offsets {offsets!r}"
            )
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise InvalidAdapter(
                f"{label}: tensor {tensor!r} spans {offsets[1] - offsets[0]} bytes, "
                f"but {dtype}{shape} needs {expected}"
            )
        if offsets[1] > data_size:
            raise InvalidAdapter(
                f"{label}: truncated safetensors file (tensor {tensor!r} ends at byte "
                f"{data_start + offsets[1]}, file has {size})"
            )
        spans.append((offsets[0], offsets[1], tensor))
    spans.sort()
    position = 0
    for begin, end, tensor in spans:
        if begin != position:
            problem = "overlaps the previous one" if begin < position else "leaves a gap"
            raise InvalidAdapter(f"{label}: tensor {tensor!r} {problem} in the data buffer")
        position = end
    if position != data_size:
        raise InvalidAdapter(
            f"{label}: data buffer is {data_size} bytes but the tensors cover {position}"
        )
    return header
