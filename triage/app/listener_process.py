"""A listener process of ``triage serve``: accepts associations on the shared
socket, writes instances to the store, and indexes them through the main
process (:mod:`triage.store.index_rpc`)."""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType

from pydicom import config as pydicom_config

from dicom_io.ingest import Ingestor
from dicom_io.listener import Listener, SharedSocket
from dicom_io.store import InstanceStore
from triage.clock import utcnow
from triage.config import Settings
from triage.logs import setup_logging
from triage.monitor.metrics import AnswerCounts
from triage.store.index_rpc import IndexClient
from triage.store.permissions import group_id

log = logging.getLogger(__name__)


def run_listener_process(
    settings: Settings, shared: SharedSocket, conn: Connection, ready: EventType, answers: AnswerCounts | None = None
) -> None:
    """Entry point of a listener process; returns on SIGTERM or when the main process is gone.

    ``answers``: this process's row of the server's C-STORE answer counters (``/metrics``).
    """
    setup_logging(settings.log_level)
    # The header is read for the index only; values pydicom would warn about are
    # still stored as received, and UIDs used in paths are checked by our own rules.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    stop = threading.Event()
    orphaned = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C reaches the whole process group: the main process decides, and
    # stops its listener processes with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = InstanceStore(settings.data_dir, min_free_bytes=settings.listener.min_free_mb * 2**20, group=group_id(settings.storage.group))

    def on_lost() -> None:  # the main process died: stop now, free the port for a restart
        orphaned.set()
        stop.set()

    index = IndexClient(conn, on_lost=on_lost)
    ingestor = Ingestor(
        store,
        index,
        clock=utcnow,
        max_instance_bytes=settings.listener.max_instance_mb * 2**20,
        on_answer=answers.count if answers is not None else None,
    )
    listener = Listener(settings.listener.options(), ingestor)
    listener.start(shared)
    ready.set()
    stop.wait()
    faulthandler.dump_traceback_later(20)  # a stop that hangs says where
    listener.stop(grace=0 if orphaned.is_set() else None)
    faulthandler.cancel_dump_traceback_later()
