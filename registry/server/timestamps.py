"""Time as the database stores it (naive UTC) and as the client parses it (ISO 8601, ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC now (the database stores naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso_z(value: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a trailing ``Z`` (the client parses only that)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
