"""Opaque listing cursors: the sort key and id of the last item of a page, base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from loradex.documents import parse_json
from registry.server.errors import bad_request


def encode_cursor(key: datetime | None, last_id: str) -> str:
    """The cursor of the page after the item with sort key ``key`` and id ``last_id``."""
    raw = json.dumps([key.isoformat() if key else None, last_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, keyed: bool) -> tuple[Any, str]:
    """(sort key or None, last id) of a cursor; 400 for anything this server did not send."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, last_id = parse_json(raw)
        if not isinstance(last_id, str) or "\0" in last_id:
            raise ValueError("id")
        if keyed:
            if not isinstance(key, str) or "\0" in key:
                raise ValueError("key")
            return datetime.fromisoformat(key), last_id
        return None, last_id
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise bad_request("invalid cursor: use the Link header the server sent") from None
