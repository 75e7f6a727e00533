"""Fixtures for the terminal worklist: a real SQLite index with studies, and the real app.

Studies, series, results and findings are inserted directly (the pipeline's
job); the app changes state only through the worklist service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.tui.support import PASSWORD, RecordingApp
from triage.config import ReaderSettings, Settings, load_settings
from triage.reading import identity, signing
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
    """The real app on the test index; ``blinded``/``display`` as the config would set them.

    The OS account running the tests may act as dr.ada and dr.bob ([readers]);
    dr.ada's signing password is :data:`tests.tui.support.PASSWORD`.
    """

    def make(user: str = "dr.ada", blinded: bool = False, display: str = "regions") -> RecordingApp:
        account = identity.os_account()
        readers = {name: ReaderSettings(os_accounts=[account]) for name in ("dr.ada", "dr.bob")}
        cfg = settings.model_copy(update={"worklist": settings.worklist.model_copy(update={"blinded": blinded}), "readers": readers})
        if "dr.ada" not in signing.password_set_at(engine):
            ada = identity.readers_of(readers)["dr.ada"]
            signing.set_password(engine, ada, PASSWORD, by=ada, by_account=account)
        return RecordingApp(WorklistService(engine, cfg), user, display=display, poll_interval=0.1)

    return make
