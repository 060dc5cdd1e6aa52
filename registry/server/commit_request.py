"""The NDJSON body of ``POST /api/models/{id}/commit/{rev}``: a header line, then one op a line."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from loradex.documents import MalformedDocument, parse_json
from registry.server.blobstore import is_sha256
from registry.server.errors import HubHTTPError, bad_request
from registry.server.types import CommitOp
from registry.server.validation import check_path, reject_nul


def parse_commit_body(body: bytes, max_file_size: int) -> tuple[dict[str, Any], list[CommitOp]]:
    """Parse an NDJSON commit body into (header, ops); every defect is a 400 naming the line."""
    header: dict[str, Any] | None = None
    ops: list[CommitOp] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = parse_json(line)
        except MalformedDocument as exc:
            raise bad_request(f"commit line {number}: not valid JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise bad_request(f"commit line {number}: expected {{'key': ..., 'value': {{...}}}}")
        reject_nul(item)
        key, value = item.get("key"), item["value"]
        if key == "header":
            if header is not None or ops:
                raise bad_request(f"commit line {number}: the header must come first, once")
            header = value
            continue
        if header is None:
            raise bad_request("commit: the first line must be the header")
        path = value.get("path")
        if key in ("deletedFolder",) and isinstance(path, str):
            path = path.rstrip("/")
        path = check_path(path)
        if key == "file":
            content = _file_content(value, path, number, max_file_size)
            ops.append(CommitOp("file", path, content=content))
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if (
                value.get("algo", "sha256") != "sha256"
                or not isinstance(oid, str)
                or not is_sha256(oid)
            ):
                raise bad_request(f"commit line {number}: lfsFile needs a sha256 oid")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise bad_request(f"commit line {number}: invalid size")
            ops.append(CommitOp("lfsFile", path, sha256=oid, size=size))
        elif key in ("deletedFile", "deletedFolder"):
            ops.append(CommitOp(key, path))
        else:
            raise bad_request(f"commit line {number}: unsupported operation {key!r}")
    if header is None:
        raise bad_request("commit: empty body (expected an NDJSON header line)")
    return header, ops


def _file_content(value: dict[str, Any], path: str, number: int, max_file_size: int) -> bytes:
    """The decoded base64 content of a ``file`` line (413 past the upload limit)."""
    if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
        raise bad_request(f"commit line {number}: file content must be base64 text")
    try:
        content = base64.b64decode(value["content"], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"commit line {number}: invalid base64 for {path!r}") from None
    if len(content) > max_file_size:
        raise HubHTTPError(413, f"{path!r} exceeds the upload limit of {max_file_size} bytes")
    return content
