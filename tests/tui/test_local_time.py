"""The terminal worklist shows times on the site's clock (``[site] timezone``), with the zone's abbreviation."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from tests.tui.support import SIZE, RecordingApp, add_study
from triage.clock import as_utc
from triage.config import Settings, load_settings
from triage.reading.service import WorklistService
from tui.screens.study import StudyScreen
from tui.table import WorklistTable

TOKYO = timedelta(hours=9)  # JST, no summer time


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The conftest's settings, at a site in Tokyo (make_app and engine build on this one)."""
    return load_settings(overrides={"data_dir": str(tmp_path / "data"), "site.timezone": "Asia/Tokyo"}, environ={})


def _tokyo(expires: datetime | None) -> str:
    assert expires is not None
    return f"{as_utc(expires) + TOKYO:%H:%M} JST"


def _screen_text(app: RecordingApp) -> str:
    parts = []
    for widget in app.screen.query(Static):
        content: Any = widget.content
        parts.append(content.plain if hasattr(content, "plain") else str(content))
    return "\n".join(parts)


def test_claims_are_shown_in_the_site_zone(make_app, engine) -> None:
    first, second = add_study(engine), add_study(engine)
    app = make_app()
    service: WorklistService = app.service

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            # From the list: the notification says until when, on the site's clock.
            app.screen.query_one(WorklistTable).select_uid(second.uid)
            await pilot.press("c")
            await pilot.pause()
            until = _tokyo(service.open(second.uid, "dr.ada").study.claim_expires)
            assert any(m.endswith(f"until {until}") for _, m in app.notices), app.notices
            # On the study screen: the claim line and the notification.
            app.open_study(first.uid)
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)
            await pilot.press("c")
            await pilot.pause()
            until = _tokyo(service.open(first.uid, "dr.ada").study.claim_expires)
            assert f"claimed by you until {until}" in _screen_text(app)
            assert ("information", f"Claimed until {until}") in app.notices
            assert "UTC" not in _screen_text(app)

    asyncio.run(scenario())
