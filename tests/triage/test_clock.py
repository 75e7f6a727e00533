"""The site's clock: naming the host's zone, showing times in a zone, and ``[site] timezone``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from triage.clock import host_zone_name, local, shown
from triage.config import load_settings
from triage.errors import ConfigError

ZONEINFO = Path("/usr/share/zoneinfo")


def test_shown_is_the_site_clock_with_the_zone_abbreviation() -> None:
    at = datetime(2026, 1, 15, 5, 5, 9, tzinfo=UTC)
    assert shown(at, ZoneInfo("Asia/Tokyo")) == "14:05 JST"
    assert shown(at, ZoneInfo("Asia/Tokyo"), date=True, seconds=True) == "2026-01-15 14:05:09 JST"
    assert shown(at, ZoneInfo("Europe/Berlin")) == "06:05 CET"
    assert shown(at.replace(month=7), ZoneInfo("Europe/Berlin")) == "07:05 CEST"  # summer time
    assert shown(at, ZoneInfo("America/New_York"), date=True) == "2026-01-15 00:05 EST"
    assert shown(at, ZoneInfo("Asia/Dubai")) == "09:05 +04"  # no abbreviation: the offset
    assert shown(at.replace(tzinfo=None), ZoneInfo("Asia/Tokyo")) == "14:05 JST"  # naive is UTC, as SQLite returns it
    assert shown(None, UTC) == "?"
    assert local(at, ZoneInfo("Asia/Tokyo")) == at and local(at, ZoneInfo("Asia/Tokyo")).hour == 14


def test_the_host_zone_is_named_from_tz_then_the_localtime_link_then_etc_timezone(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    localtime = etc / "localtime"
    assert host_zone_name({}, localtime) == "UTC"  # nothing names it
    (etc / "timezone").write_text("Europe/Berlin\n", encoding="utf-8")
    assert host_zone_name({}, localtime) == "Europe/Berlin"
    if (ZONEINFO / "Asia" / "Tokyo").exists():  # a zoneinfo tree to link into (tzdata alone has none)
        localtime.symlink_to(ZONEINFO / "Asia" / "Tokyo")
        assert host_zone_name({}, localtime) == "Asia/Tokyo"
    assert host_zone_name({"TZ": ":America/New_York"}, localtime) == "America/New_York"
    # A POSIX TZ string or an unknown name is no IANA name: the next source decides.
    assert host_zone_name({"TZ": "CET-1CEST"}, etc / "missing") == "Europe/Berlin"
    (etc / "timezone").write_text("Mars/Olympus\n", encoding="utf-8")
    assert host_zone_name({"TZ": "Nowhere/Else"}, etc / "localtime.copy") == "UTC"


def test_site_timezone_defaults_to_the_host_zone_and_a_bad_one_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    settings = load_settings(environ={})
    assert settings.site.timezone == "Asia/Tokyo" and settings.site.zone == ZoneInfo("Asia/Tokyo")
    path = tmp_path / "triage.toml"
    path.write_text('[site]\ntimezone = "Europe/Berlin"\n', encoding="utf-8")
    assert load_settings(path, environ={}).site.zone == ZoneInfo("Europe/Berlin")
    for bad in ("Mars/Olympus", "", "../../etc/passwd", "CET-1CEST"):
        path.write_text(f'[site]\ntimezone = "{bad}"\n', encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            load_settings(path, environ={})
        message = str(err.value)
        assert message.startswith("config: site.timezone: not an IANA time zone name"), message
        assert f"got {bad!r} (from {path})" in message and "\n" not in message
