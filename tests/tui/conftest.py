"""Fixtures for the terminal worklist: a real SQLite index with studies, and the real app.

Studies, series, results and findings are inserted directly (the pipeline's
job); the app changes state only through the worklist service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.tui.support import RecordingApp
from triage.config import Settings, load_settings
from triage.reading.service import WorklistService
from triage.store.db import make_engine


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(overrides={"data_dir": str(tmp_path / "data")}, environ={})


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def make_app(engine: Engine, settings: Settings) -> Callable[..., RecordingApp]:
    """The real app on the test index; ``blinded``/``display`` as the config would set them."""

    def make(user: str = "dr.ada", blinded: bool = False, display: str = "regions") -> RecordingApp:
        cfg = settings.model_copy(update={"worklist": settings.worklist.model_copy(update={"blinded": blinded})})
        return RecordingApp(WorklistService(engine, cfg), user, display=display, poll_interval=0.1)

    return make
