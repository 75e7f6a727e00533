"""Time as the index stores it: timezone-aware UTC (sqlmodel's UTCDateTime
refuses naive values and returns aware UTC on SQLite and PostgreSQL alike)."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
