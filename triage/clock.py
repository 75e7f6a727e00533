"""Time as the index stores it: timezone-aware UTC (sqlmodel's UTCDateTime
refuses naive values and returns aware UTC on SQLite and PostgreSQL alike),
and as a person reads it: on the site's clock, with the zone's abbreviation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` as aware UTC: a naive value is taken as UTC (what the index stores, read back by SQLite)."""
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


# --- the site's zone: what people read ---------------------------------------------------------
# Times are stored and computed in UTC; a person reads them in the site's zone (``[site] timezone``),
# with the zone's abbreviation so that nobody has to guess which clock a time is on.

_ZONEINFO_DIRS = ("/usr/share/zoneinfo/", "/usr/lib/zoneinfo/", "/usr/share/lib/zoneinfo/", "/etc/zoneinfo/")


def zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone this host knows (``None`` when it is one)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: empty, absolute or ".." paths
        return "not an IANA time zone name such as 'Europe/Berlin' or 'UTC'"
    return None


def host_zone_name(environ: Mapping[str, str] | None = None, localtime: Path = Path("/etc/localtime")) -> str:
    """The IANA name of the host's local zone, for ``[site] timezone``'s default.

    Tried in turn, the first valid IANA name wins: ``$TZ`` (as the C library reads it,
    ``:Europe/Berlin`` too), the target of the ``/etc/localtime`` symlink below a zoneinfo
    directory (systemd's and every distribution's way), and ``/etc/timezone`` (Debian's file).
    ``datetime.now().astimezone().tzinfo`` is not used: it is a fixed offset with no rules, so
    it would show summer times with the winter offset. When none names a zone, ``"UTC"``:
    a site whose host cannot say should set ``[site] timezone``.
    """
    environ = os.environ if environ is None else environ
    candidates = [environ.get("TZ", "").removeprefix(":")]
    try:
        # One level only: the link the administrator (or timedatectl) set names the zone; the zone
        # file it points at may itself be a link to another zone's name (Europe/Oslo -> Europe/Berlin).
        target = os.path.normpath(os.path.join(localtime.parent, os.readlink(localtime)))
    except OSError:  # not a link (a copied file), or no /etc/localtime
        target = ""
    candidates += [target[len(d) :] for d in _ZONEINFO_DIRS if target.startswith(d)]
    try:
        candidates.append((localtime.parent / "timezone").read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        pass
    for name in candidates:
        if name and not name.startswith("/") and zone_problem(name) is None:
            return name
    return "UTC"


def local(value: datetime, zone: tzinfo) -> datetime:
    """``value`` (aware, or naive UTC as the index returns it on SQLite) on the site's clock."""
    return as_utc(value).astimezone(zone)


def shown(value: datetime | None, zone: tzinfo, *, date: bool = False, seconds: bool = False) -> str:
    """A time as a person reads it: ``"14:05 CET"`` (``date``: ``"2026-12-06 14:05 CET"``).

    The abbreviation is the zone's at that moment (CET in winter, CEST in summer); zones
    without one show their offset as the time zone database names it (``"+04"``).
    ``None`` is ``"?"``.
    """
    if value is None:
        return "?"
    at = local(value, zone)
    clock = f"{at:%H:%M:%S}" if seconds else f"{at:%H:%M}"
    return f"{at:%Y-%m-%d} {clock} {at.tzname()}" if date else f"{clock} {at.tzname()}"
