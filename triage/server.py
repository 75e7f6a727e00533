"""``triage serve``: the listener, the index writer and the completeness monitor,
wired together on one settings object.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from dicom_io.ingest import Ingestor
from dicom_io.listener import Listener
from dicom_io.store import InstanceStore
from triage.completeness import CompletenessMonitor
from triage.config import Settings
from triage.db import make_engine
from triage.index import SqlIndex
from triage.recovery import recover

log = logging.getLogger(__name__)


class TriageServer:
    """Everything ``triage serve`` runs, startable and stoppable from tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.db_url)
        self.store = InstanceStore(settings.data_dir, min_free_bytes=settings.listener.min_free_mb * 2**20)
        self.index = SqlIndex(self.engine)
        self.ingestor = Ingestor(self.store, self.index)
        self.listener = Listener(settings.listener, self.ingestor)
        self.monitor = CompletenessMonitor(self.engine, settings.completeness)

    @property
    def port(self) -> int:
        return self.listener.port

    def start(self) -> None:
        report = recover(self.store, self.index, self.engine)
        log.info(
            "data in %s, index %s; %d series still receiving",
            self.settings.data_dir, self.engine.url.render_as_string(hide_password=True), report.series_receiving,
        )  # fmt: skip
        self.index.start()
        self.monitor.start()
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()
        self.monitor.stop()
        self.index.close()
        self.engine.dispose()


def serve(settings: Settings, ready: threading.Event | None = None) -> int:
    """Run until SIGINT or SIGTERM, then shut down cleanly; returns the exit code."""
    server = TriageServer(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received, finishing in-flight stores", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
