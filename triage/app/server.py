"""``triage serve``: the listener, the index writer, the completeness monitor,
the scoring worker and the results sender, wired together on one settings object.

With ``listener.processes`` > 1 (the default on a multi-core machine) the main
process binds the port and runs the index writer and the completeness monitor,
and listener processes accept associations from the shared socket; a listener
process that dies is started again. With 1, everything runs in this process
(what most tests use).
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType

from dicom_io.ingest import Ingestor
from dicom_io.listener import Listener, SharedSocket, bind
from dicom_io.store import InstanceStore
from triage.app.health import Monitoring
from triage.app.listener_process import run_listener_process
from triage.clock import utcnow
from triage.config import Settings
from triage.errors import TriageError
from triage.flow.completeness import CompletenessMonitor
from triage.flow.pipeline import ScoringWorker
from triage.outbox.service import OutboxSender, on_recorded_hook
from triage.store import audit
from triage.store.db import make_engine
from triage.store.index import SqlIndex
from triage.store.index_rpc import serve_index
from triage.store.permissions import group_id, prepare_data_dir
from triage.store.recovery import recover
from triage.store.retention import Retention, RetentionSweeper

log = logging.getLogger(__name__)

_START_TIMEOUT = 60.0  # seconds for a listener process to import and start listening


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection


class TriageServer:
    """Everything ``triage serve`` runs, startable and stoppable from tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        group = group_id(settings.storage.group)
        prepare_data_dir(settings.data_dir, settings.db_url, group)
        self.engine = make_engine(settings.db_url)
        # The audit chain's key, checked now: a missing or wrong key file stops the server here, in one line.
        audit_key = audit.prepare_key(self.engine, settings.audit.key_file)
        audit.bind_key(self.engine, audit_key)
        # Every role has the database, so every role anchors the chain's head (triage.store.audit_anchor).
        self.anchorer = audit.Anchorer(
            self.engine, audit_key, settings.audit.anchor_path(settings.data_dir), settings.audit.anchor_interval_s
        )
        self.store = InstanceStore(settings.data_dir, min_free_bytes=settings.listener.min_free_mb * 2**20, group=group)
        self.index = SqlIndex(self.engine, data_dir=settings.data_dir)
        # Retention deletes the pixels of signed, delivered studies: in the roles that hold the data volume.
        self.retention: RetentionSweeper | None = (
            RetentionSweeper(Retention(self.engine, self.store, settings))
            if settings.retention.enabled and settings.role in ("all", "listener")
            else None
        )
        self.processes = settings.listener.process_count
        # Roles (scale-out): a listener receives, indexes and decides completeness;
        # a worker scores jobs (and sends results); "all" does everything.
        self.receives = settings.role in ("all", "listener")
        scores = settings.role in ("all", "worker") and settings.pipeline.enabled
        # Results to the PACS: sent by the roles that score (a worker, or "all"), also when this one
        # does not score (a report signed in the worklist goes out too); nothing to send without destinations.
        sends = settings.role in ("all", "worker") and bool(settings.results.destinations)
        self.outbox: OutboxSender | None = OutboxSender(self.engine, settings) if sends else None
        # Scoring: torch and the detectors load in start(), not here. A scored study's results
        # are queued for the PACS as its last series is recorded.
        # /healthz, /metrics, systemd readiness and watchdog (triage.app.health): built before the parts it
        # observes (the listeners count their answers into it, the worker's results feed its histograms).
        self.monitoring = Monitoring(self.engine, settings, listener_rows=self.processes if self.receives else 0)
        self.scoring: ScoringWorker | None = (
            ScoringWorker(
                self.engine,
                settings,
                on_recorded=self.monitoring.observing(on_recorded_hook(self.engine, settings, self.outbox.wake if self.outbox else None)),
            )
            if scores
            else None
        )
        self.monitor = CompletenessMonitor(self.engine, settings.completeness, on_complete=self.scoring.wake if self.scoring else None)
        self.listener: Listener | None = None
        self._socket: socket.socket | None = None
        self._children: list[_Child] = []
        self._mp = multiprocessing.get_context("spawn")  # no fork of a threaded process

    @property
    def port(self) -> int:
        if not self.receives:
            raise TriageError("a worker-role server does not listen")
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        assert self.listener is not None, "server not started"
        return self.listener.port

    def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Recover, index, listen, then score; ``stopping`` says a stop was asked for meanwhile.

        A SIGTERM that lands while the server starts must not start new work: scoring
        (and sending) begin only if no stop was asked for by then, so the stop that
        follows has no series in flight to wait for.
        """
        self._start(stopping)
        self.monitoring.start(self)  # last: READY=1 to systemd, and /healthz, once everything runs

    def _start(self, stopping: Callable[[], bool]) -> None:
        self.anchorer.start()
        if not self.receives:
            log.info("worker role: scoring jobs from %s", self.engine.url.render_as_string(hide_password=True))
            self._start_scoring(stopping)
            return
        report = recover(self.store, self.index, self.engine)
        log.info(
            "data in %s, index %s; %d series still receiving",
            self.settings.data_dir,
            self.engine.url.render_as_string(hide_password=True),
            report.series_receiving,
        )
        self.index.start()
        self.monitor.start()
        if self.retention is not None:
            self.retention.start()  # its first pass finishes any purge a crash interrupted
        if self.processes == 1:
            self.listener = Listener(
                self.settings.listener.options(),
                Ingestor(
                    self.store,
                    self.index,
                    clock=utcnow,
                    max_instance_bytes=self.settings.listener.max_instance_mb * 2**20,
                    on_answer=self.monitoring.on_answer(0),
                ),
            )
            self.listener.start()
            self._start_scoring(stopping)
            return
        self._socket = bind(self.settings.listener.host, self.settings.listener.port)
        self._loads = self._mp.Array("i", self.processes, lock=False)
        for slot in range(self.processes):
            self._children.append(self._spawn(slot))
        self._start_scoring(stopping)
        log.info(
            "listening as %s on %s:%d with %d listener processes%s",
            self.settings.listener.ae_title,
            self.settings.listener.host,
            self.port,
            self.processes,
            " (TLS)" if self.settings.listener.tls.enabled else "",
        )

    def _start_scoring(self, stopping: Callable[[], bool]) -> None:
        # After the listener: PACS can send while torch and the detectors load
        # (seconds); jobs wait in the DB meanwhile.
        if stopping():
            log.info("stop asked for while starting: scoring and sending not started (jobs wait in the DB)")
            return
        if self.outbox is not None:
            self.outbox.start()  # results left pending by an earlier run go out now
        if self.scoring is not None:
            self.scoring.start(stopping)  # checks again once the detectors are loaded (seconds)

    def _spawn(self, slot: int) -> _Child:
        assert self._socket is not None, "the shared socket is bound before listener processes start"
        parent_conn, child_conn = self._mp.Pipe()
        ready = self._mp.Event()
        process = self._mp.Process(
            target=run_listener_process,
            args=(self.settings, SharedSocket(self._socket, self._loads, slot), child_conn, ready, self.monitoring.answers_for(slot)),
            name=f"listener-{slot + 1}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        serve_index(parent_conn, self.index)
        deadline = time.monotonic() + _START_TIMEOUT
        while not ready.wait(0.1):
            if not process.is_alive() or time.monotonic() > deadline:
                process.kill()
                raise TriageError(f"listener process failed to start (exit code {process.exitcode})")
        return _Child(process, parent_conn)

    def check_listeners(self) -> None:
        """Start again any listener process that died (called from the serve loop)."""
        for i, child in enumerate(self._children):
            if not child.process.is_alive():
                log.error("%s died (exit code %s); starting it again", child.process.name, child.process.exitcode)
                child.conn.close()
                self._loads[i] = 0
                self._children[i] = self._spawn(i)

    def listener_problem(self) -> str | None:
        """Why this server's listener is not accepting associations, or None (for /healthz)."""
        if self.listener is not None:
            return None if self.listener.accepting else "the listener is not accepting associations"
        if self._socket is None or self._socket.fileno() < 0:
            return "the listener is not started"
        dead = [c.process.name for c in self._children if not c.process.is_alive()]
        return f"listener process {', '.join(dead)} is not running" if dead else None

    def associations_open(self) -> int:
        """DICOM connections being served, across the listener processes (for /metrics)."""
        if self.listener is not None:
            return self.listener.active_associations
        return sum(self._loads) if self._socket is not None else 0

    def stop(self) -> None:
        self.monitoring.stop()  # first: STOPPING=1, and no watchdog ping or probe meets a half-stopped server
        if self.listener is not None:
            self.listener.stop()
        for child in self._children:
            if child.process.is_alive():
                child.process.terminate()  # SIGTERM: finish in-flight stores, then exit
        grace = self.settings.listener.shutdown_grace + 30
        for child in self._children:
            child.process.join(grace)
            if child.process.is_alive():
                log.error("%s did not stop in time; killing it", child.process.name)
                child.process.kill()
                child.process.join()
            child.conn.close()
        self._children = []
        if self._socket is not None:
            self._socket.close()
        if self.receives:
            self.monitor.stop()
        if self.scoring is not None:
            self.scoring.stop()  # the series in flight finish and are recorded
        if self.outbox is not None:
            self.outbox.stop()  # after scoring, which queues; what is not sent stays pending in the DB
        if self.retention is not None:
            self.retention.stop()
        self.index.close()
        self.anchorer.stop()  # last: the head after every event of this run
        self.engine.dispose()
        log.info("stopped")


def serve(settings: Settings, ready: threading.Event | None = None) -> int:
    """Run until SIGINT or SIGTERM, then shut down cleanly; returns the exit code."""
    server = TriageServer(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received, finishing in-flight stores", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start(stopping=stop.is_set)
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            server.check_listeners()
    finally:
        faulthandler.dump_traceback_later(25)  # a stop that hangs says where
        server.stop()
        faulthandler.cancel_dump_traceback_later()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
