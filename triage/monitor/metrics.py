"""What ``triage serve`` shows Prometheus at ``/metrics`` (served by ``triage.app.health``).

Three sources, each where it is honest:

- C-STORE answers (:class:`AnswerCounts`): counted as the listener answers, in
  shared memory with one row per listener process, so that a host's counters
  cover all its processes and survive a listener process being restarted.
  Counted here and not from the index because a refused instance leaves no row.
- Queues and backlogs (:class:`IndexCollector`): read from the database at
  scrape time with small indexed queries. The database is shared by every host
  of a site, so these are site-wide: the same value on each host (aggregate them
  with ``max``, not ``sum``).
- Durations (:class:`ScoringHistograms`): observed by the worker that recorded
  the result, from the result row, so each worker's histogram counts its own
  jobs and the site's is their sum.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator, MutableSequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from dicom_io.ingest import IngestOutcome, StoreStatus
from triage.clock import as_utc, utcnow
from triage.store.tables import JOB, OUTBOX, RESULT, SERIES
from triage.vocabulary import JobStatus, OutboxStatus, ReceiveStatus

log = logging.getLogger(__name__)

# Acknowledged outcomes, then every refusal status (PS3.4 B.2.3) the listener may answer.
RECEIVED = ("stored", "duplicate", "conflict")
REFUSED = tuple(s for s in StoreStatus if s != StoreStatus.SUCCESS)
_COLUMNS = len(RECEIVED) + len(REFUSED)

# Seconds. Scoring: a radiograph takes a fraction of a second, a large CT tens on a CPU.
SCORING_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Time to triage includes the completeness wait (15 s for a CT by default) and any queueing.
TRIAGE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class AnswerCounts:
    """C-STORE answers by outcome, one row of counters per listener process.

    Each process adds to its own row only (under its own lock), so no lock is
    shared across processes; the main process sums the rows at scrape time.

    Parameters
    ----------
    cells
        ``rows * columns()`` integers, e.g. ``multiprocessing.Array("q", n, lock=False)``,
        or a plain list when everything runs in one process.
    slot
        The row this process adds to.
    """

    def __init__(self, cells: MutableSequence[int], slot: int = 0) -> None:
        if len(cells) % _COLUMNS or not 0 <= slot < len(cells) // _COLUMNS:
            raise ValueError(f'Argument "slot" must name one of {len(cells) // _COLUMNS} rows, got {slot}')
        self.cells = cells
        self.slot = slot
        self._lock = threading.Lock()

    @staticmethod
    def columns() -> int:
        """Counters per row (per listener process)."""
        return _COLUMNS

    def for_slot(self, slot: int) -> AnswerCounts:
        """The same counters, adding to row ``slot`` (handed to a listener process)."""
        return AnswerCounts(self.cells, slot)

    # Sent to a spawned listener process: the shared cells and the row, not the lock.
    def __getstate__(self) -> tuple[MutableSequence[int], int]:
        return self.cells, self.slot

    def __setstate__(self, state: tuple[MutableSequence[int], int]) -> None:
        self.cells, self.slot = state
        self._lock = threading.Lock()

    def count(self, outcome: IngestOutcome) -> None:
        """Add one answer (the ``Ingestor(on_answer=...)`` callback)."""
        if outcome.ok:
            column = RECEIVED.index("conflict" if outcome.conflict else "duplicate" if outcome.duplicate else "stored")
        else:
            column = len(RECEIVED) + REFUSED.index(outcome.status)
        with self._lock:
            self.cells[self.slot * _COLUMNS + column] += 1

    def totals(self) -> list[int]:
        """Each column summed over the rows (RECEIVED, then REFUSED, in order)."""
        rows = len(self.cells) // _COLUMNS
        return [sum(self.cells[r * _COLUMNS + c] for r in range(rows)) for c in range(_COLUMNS)]


def _age(oldest: Any, now: Any) -> float:
    return max(0.0, (now - as_utc(oldest)).total_seconds()) if oldest is not None else 0.0


class IndexCollector(Collector):
    """Gauges read at scrape time: the database, the data volume, the listener's connections.

    A database that does not answer is ``triage_database_up 0`` and the
    site-wide gauges are left out of that scrape; the scrape itself succeeds.

    Parameters
    ----------
    engine
        The index.
    data_dir
        The data directory (its volume's free space).
    min_free_bytes
        ``listener.min_free_mb`` in bytes: below it stores are refused.
    answers
        This host's C-STORE answers; None for a role that does not listen.
    associations
        Open DICOM connections of this host's listener; None for a role that does not listen.
    """

    def __init__(
        self,
        engine: Engine,
        data_dir: Path,
        min_free_bytes: int,
        *,
        answers: AnswerCounts | None = None,
        associations: Callable[[], int] | None = None,
        beat_age: Callable[[], float | None] | None = None,
    ) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.answers = answers
        self.associations = associations
        self.beat_age = beat_age

    def collect(self) -> Iterator[Metric]:
        """One scrape's metrics (prometheus_client calls this)."""
        yield from self._host()
        try:
            site = list(self._site())
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer: %s", str(getattr(exc, "orig", exc)).splitlines()[0])
            site = []
        up = GaugeMetricFamily("triage_database_up", "1 when the index database answered this scrape's queries, else 0")
        up.add_metric([], 1.0 if site else 0.0)
        yield up
        yield from site

    def _host(self) -> Iterator[Metric]:
        if self.answers is not None:
            totals = self.answers.totals()
            received = CounterMetricFamily(
                "triage_instances_received", "C-STORE requests acknowledged by this host, by outcome", labels=["outcome"]
            )
            for name, value in zip(RECEIVED, totals, strict=False):
                received.add_metric([name], value)
            yield received
            refused = CounterMetricFamily(
                "triage_instances_refused", "C-STORE requests answered with a failure status by this host", labels=["status", "reason"]
            )
            for status, value in zip(REFUSED, totals[len(RECEIVED) :], strict=True):
                refused.add_metric([f"0x{int(status):04X}", status.name.lower()], value)
            yield refused
        if self.associations is not None:
            yield GaugeMetricFamily(
                "triage_associations_open", "DICOM connections this host's listener is serving", value=self.associations()
            )
        if self.beat_age is not None:
            age = self.beat_age()
            if age is not None:
                yield GaugeMetricFamily(
                    "triage_scoring_loop_age_seconds", "Seconds since this worker's job-claiming loop last went round", value=age
                )
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError:
            return  # the volume is gone: the free space is unknown, and /healthz says so through the database
        yield GaugeMetricFamily("triage_data_free_bytes", "Free space on the data directory's volume", value=usage.free)
        yield GaugeMetricFamily(
            "triage_data_min_free_bytes",
            "listener.min_free_mb: below this free space stores are refused (0xA700)",
            value=self.min_free_bytes,
        )

    def _site(self) -> Iterator[Metric]:
        now = utcnow()
        with self.engine.connect() as conn:
            waiting = conn.execute(select(func.count()).where(SERIES.c.status == ReceiveStatus.RECEIVING.value)).scalar_one()
            last = conn.execute(select(func.max(SERIES.c.last_received))).scalar_one()
            shown = (JobStatus.PENDING.value, JobStatus.RUNNING.value, JobStatus.FAILED.value)
            by_status = select(JOB.c.status, func.count()).where(JOB.c.status.in_(shown)).group_by(JOB.c.status)
            jobs = {status: count for status, count in conn.execute(by_status)}
            oldest_job = conn.execute(select(func.min(JOB.c.created_at)).where(JOB.c.status == JobStatus.PENDING.value)).scalar_one()
            outbox = conn.execute(
                select(
                    OUTBOX.c.destination, func.count(), func.min(OUTBOX.c.created_at), func.sum(case((OUTBOX.c.attempts > 0, 1), else_=0))
                )
                .where(OUTBOX.c.status == OutboxStatus.PENDING.value)
                .group_by(OUTBOX.c.destination)
            ).all()
        yield GaugeMetricFamily(
            "triage_series_waiting", "Series still receiving instances, waiting to be complete (site-wide)", value=waiting
        )
        if last is not None:
            yield GaugeMetricFamily(
                "triage_last_received_timestamp_seconds",
                "When the site last received an instance (Unix time; site-wide)",
                value=as_utc(last).timestamp(),
            )
        family = GaugeMetricFamily("triage_jobs", "Scoring jobs by status: queued, in flight, given up (site-wide)", labels=["status"])
        for status in shown:
            family.add_metric([status], jobs.get(status, 0))
        yield family
        yield GaugeMetricFamily(
            "triage_jobs_oldest_pending_age_seconds",
            "Age of the oldest queued scoring job; 0 when none (site-wide)",
            value=_age(oldest_job, now),
        )
        pending = GaugeMetricFamily(
            "triage_outbox_pending", "Result objects not yet acknowledged, per destination (site-wide)", labels=["destination"]
        )
        retrying = GaugeMetricFamily(
            "triage_outbox_retrying", "Pending result objects whose send failed at least once (site-wide)", labels=["destination"]
        )
        age = GaugeMetricFamily(
            "triage_outbox_oldest_pending_age_seconds",
            "Age of the oldest result object not yet acknowledged (site-wide)",
            labels=["destination"],
        )
        for destination, count, oldest, failed in outbox:
            pending.add_metric([destination], count)
            retrying.add_metric([destination], failed or 0)
            age.add_metric([destination], _age(oldest, now))
        yield from (pending, retrying, age)


class ScoringHistograms:
    """Scoring duration and time to triage, observed by the worker that recorded each result.

    Time to triage here is the series' last instance received to its result
    recorded (the study ranked in the same transaction), the completeness wait
    included: what a patient waits for, where ``triage bench triage`` subtracts
    that wait to measure the system's own part.
    """

    def __init__(self, engine: Engine, registry: CollectorRegistry) -> None:
        self.engine = engine
        self.scoring = Histogram(
            "triage_scoring_duration_seconds",
            "Seconds to score one series (reading pixels and the detectors)",
            buckets=SCORING_BUCKETS,
            registry=registry,
        )
        self.time_to_triage = Histogram(
            "triage_time_to_triage_seconds",
            "Seconds from a series' last instance received to its result recorded and the study ranked",
            buckets=TRIAGE_BUCKETS,
            registry=registry,
        )

    def observe(self, series_pk: int, generation: int) -> None:
        """Observe the recorded result of one completion of one series; never raises (scoring goes on)."""
        query = (
            select(RESULT.c.duration_s, RESULT.c.scored_at, SERIES.c.last_received)
            .join(SERIES, SERIES.c.id == RESULT.c.series_pk)
            .where(and_(RESULT.c.series_pk == series_pk, RESULT.c.generation == generation))
        )
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError:
            log.warning("metrics: could not read the result of series %d, generation %d", series_pk, generation, exc_info=True)
            return
        if row is None:
            return
        duration, scored_at, last_received = row
        self.scoring.observe(duration)
        self.time_to_triage.observe(max(0.0, (as_utc(scored_at) - as_utc(last_received)).total_seconds()))
