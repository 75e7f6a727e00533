"""Is this ``triage serve`` well, and what is it doing: ``/healthz``, ``/metrics``, systemd readiness and watchdog.

The same checks answer ``/healthz`` and gate the systemd watchdog ping:

- ``database``: the index answers a query on one of its tables;
- ``listener`` (roles that receive): the accept loop runs, in every listener
  process. The listener's own state, not a TCP connect: the kernel completes a
  connect into the listen backlog even when nothing accepts, and a probe's
  connection would be logged and counted against ``listener.max_per_peer``;
- ``scoring`` (roles that score): the worker claims jobs and its loop went round
  within twice ``pipeline.heartbeat_seconds`` (by then it has missed a lease
  renewal, and at ``lease_seconds`` its jobs go to another worker).

The HTTP endpoint is on only when ``[monitoring] http_port`` is set; the systemd
messages only when ``$NOTIFY_SOCKET`` is (``Type=notify`` units).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from dicom_io.ingest import IngestOutcome
from triage.app import sdnotify
from triage.config import Settings
from triage.errors import TriageError
from triage.flow.pipeline import ClaimedJob, ScoringWorker
from triage.monitor.metrics import AnswerCounts, IndexCollector, ScoringHistograms
from triage.store.tables import HEAD

log = logging.getLogger(__name__)

OK = "ok"


class Served(Protocol):
    """What the checks read of the server (``triage.app.server.TriageServer``)."""

    receives: bool
    scoring: ScoringWorker | None

    def listener_problem(self) -> str | None: ...

    def associations_open(self) -> int: ...


class Monitoring:
    """The health checks, the HTTP endpoint and the systemd messages of one server.

    Built before the server's parts (the counters and histograms are handed to
    them), started last and stopped first.

    Parameters
    ----------
    listener_rows
        Listener processes whose C-STORE answers are counted (0: this role does not listen).
    environ
        Where ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` are read (``os.environ`` by default).
    """

    def __init__(self, engine: Engine, settings: Settings, *, listener_rows: int, environ: Mapping[str, str] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.environ = environ
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files (against LimitNOFILE)
        cells = multiprocessing.get_context("spawn").Array("q", listener_rows * AnswerCounts.columns(), lock=False)
        self.answers: AnswerCounts | None = AnswerCounts(cells) if listener_rows else None
        self.histograms = ScoringHistograms(engine, self.registry)
        # A scoring loop that has not gone round for this long has missed a lease renewal.
        self.stale_after = 2 * settings.pipeline.heartbeat_seconds
        self._server: Served | None = None
        self._http: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def answers_for(self, slot: int) -> AnswerCounts | None:
        """The C-STORE answer counters for listener process ``slot`` (None: this role does not listen)."""
        return self.answers.for_slot(slot) if self.answers is not None else None

    def on_answer(self, slot: int) -> Callable[[IngestOutcome], None] | None:
        """The ``Ingestor(on_answer=...)`` callback of listener ``slot``."""
        answers = self.answers_for(slot)
        return answers.count if answers is not None else None

    def observing(self, hook: Callable[[ClaimedJob], None]) -> Callable[[ClaimedJob], None]:
        """``hook``, after observing the job's scoring duration and time to triage (``ScoringWorker(on_recorded=...)``)."""

        def recorded(job: ClaimedJob) -> None:
            self.histograms.observe(job.series_pk, job.generation)
            hook(job)

        return recorded

    @property
    def http_port(self) -> int:
        """The port ``/healthz`` and ``/metrics`` are served on (configured as 0: the one taken)."""
        if self._http is None:
            raise TriageError("monitoring: no HTTP endpoint (set [monitoring] http_port)")
        return int(self._http.server_address[1])

    def checks(self) -> dict[str, str]:
        """Each check's name and ``"ok"`` or what is wrong."""
        assert self._server is not None, "monitoring not started"
        server = self._server
        out = {"database": self._database()}
        if server.receives:
            out["listener"] = server.listener_problem() or OK
        if server.scoring is not None:
            out["scoring"] = self._scoring(server.scoring)
        return out

    def _database(self) -> str:
        try:
            with self.engine.connect() as conn:
                conn.execute(select(func.count()).select_from(HEAD)).scalar_one()  # one row at most
        except SQLAlchemyError as exc:
            return "does not answer: " + str(getattr(exc, "orig", exc)).splitlines()[0]
        return OK

    def _scoring(self, worker: ScoringWorker) -> str:
        if not worker.claiming:
            return "the scoring worker is not claiming jobs"
        age = worker.beat_age()
        if age is not None and age > self.stale_after:
            return f"the scoring loop last went round {age:.1f} s ago (stale after {self.stale_after:g} s)"
        return OK

    def start(self, server: Served) -> None:
        """Serve HTTP if configured, tell systemd the server is ready, and ping its watchdog while the checks pass."""
        self._server = server
        receives = server.receives
        self.registry.register(
            IndexCollector(
                self.engine,
                self.settings.data_dir,
                self.settings.listener.min_free_mb * 2**20,
                answers=self.answers if receives else None,
                associations=server.associations_open if receives else None,
                beat_age=server.scoring.beat_age if server.scoring is not None else None,
            )
        )
        cfg = self.settings.monitoring
        if cfg.http_port is not None:
            self._http = _http_server(cfg.http_host, cfg.http_port, self)
            self._spawn(self._http.serve_forever, "monitoring-http")
            log.info("health and metrics on http://%s:%d/healthz and /metrics", cfg.http_host, self.http_port)
        sdnotify.notify("READY=1", self.environ)
        interval = sdnotify.watchdog_interval(self.environ)
        if interval is not None:
            self._spawn(lambda: self._watchdog(interval), "watchdog")

    def _spawn(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watchdog(self, interval: float) -> None:
        failing: dict[str, str] = {}
        while True:
            problems = {k: v for k, v in self.checks().items() if v != OK}
            if self._stop.is_set():
                return  # a stop began while the checks ran: no ping for a server going away
            if not problems:
                sdnotify.notify("WATCHDOG=1", self.environ)
            if problems != failing:  # said once per change, not every ping
                if problems:
                    text = "; ".join(f"{k}: {v}" for k, v in problems.items())
                    log.error("health check failing, systemd watchdog not pinged: %s", text)
                    sdnotify.notify(f"STATUS=failing: {text}", self.environ)
                else:
                    log.info("health checks pass again")
                    sdnotify.notify("STATUS=serving", self.environ)
                failing = problems
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        """Tell systemd a stop began; stop the endpoint and the watchdog (a no-op when not started)."""
        if self._server is not None:
            sdnotify.notify("STOPPING=1", self.environ)
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []


def _http_server(host: str, port: int, monitoring: Monitoring) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "triage"

        def do_GET(self) -> None:  # noqa: N802  (the name http.server calls)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                checks = monitoring.checks()
                ok = all(v == OK for v in checks.values())
                body = json.dumps({"status": "ok" if ok else "failing", "role": monitoring.settings.role, "checks": checks}).encode()
                self._send(200 if ok else 503, "application/json", body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(monitoring.registry))
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (http.server's signature)
            log.debug("%s %s", self.address_string(), format % args)  # a scrape every 15 s is not news

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return Server((host, port), Handler)
    except OSError as exc:
        raise TriageError(f"monitoring: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
