"""Times in query strings: epoch milliseconds or ISO 8601, as every route reads them."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import HTTPException


def parse_time(value: str | None, default: int) -> int:
    """Epoch milliseconds or ISO 8601 (``Z`` or an offset; naive means UTC) to epoch ms."""
    if value is None or value == "":
        return default
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"time {value!r}: expected epoch milliseconds or ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)
