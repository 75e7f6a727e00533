"""Time as the index stores it: timezone-aware UTC (sqlmodel's UTCDateTime
refuses naive values and returns aware UTC on SQLite and PostgreSQL alike)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as aware UTC: a naive value is taken as UTC (what the index stores, read back by SQLite)."""
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)
