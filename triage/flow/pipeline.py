"""Scoring jobs: claimed from the DB with a lease, scored, recorded with their
audit event, and the study re-ranked.

The DB is the queue (ARCHITECTURE.md). A worker claims pending jobs, and jobs
whose lease ran out (their worker crashed or hung), in one compare-and-set
``UPDATE ... RETURNING``; on PostgreSQL the candidates are picked ``FOR
UPDATE SKIP LOCKED`` so several ``triage serve`` processes share the queue.
A job is finished only by the worker that holds it: if its lease ran out and
another worker took it, the late result is dropped.

What can go wrong with a series:

- its pixels cannot be read or a detector fails on it: that is the series'
  result ("AI failed: <reason>"), recorded at once; scoring it again would
  fail again;
- anything else (a bug, the DB away): the job goes back to pending and is
  tried again, up to ``pipeline.max_attempts`` times, then recorded as failed.

Either way the study stays on the worklist, ranked by its order priority and
waiting time, and says why the AI has nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from triage.clock import utcnow
from triage.config import PolicySettings, Settings
from triage.errors import DatabaseError, require_extra
from triage.flow.cases import case_inputs
from triage.flow.policy import assess
from triage.store import audit
from triage.store.tables import FINDING, INSTANCE, JOB, RESULT, SERIES, STUDY, inserted_pk
from triage.vocabulary import AIStatus, JobStatus, ReadState

if TYPE_CHECKING:
    from detectors.engine import InferenceEngine
    from detectors.registry import DetectorSet
    from triage.flow.scoring import SeriesScore

log = logging.getLogger(__name__)


REASSESS_EVERY_S = 30.0  # waiting time can change a study's class: look this often


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    series_pk: int
    study_pk: int
    generation: int
    attempts: int  # including this one
    series_uid: str
    study_uid: str


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    path: Path  # absolute
    sha256: str


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- the queue ---------------------------------------------------------------------


def claim_jobs(engine: Engine, worker: str, limit: int, settings: Settings, now: datetime | None = None) -> list[ClaimedJob]:
    """Claim up to ``limit`` jobs for ``worker``: pending ones, and running ones whose lease ran out.

    A job whose lease ran out ``pipeline.max_attempts`` times is not claimed
    again: it is recorded as failed (see :func:`fail_exhausted`).
    """
    now = now or utcnow()
    lease_seconds, max_attempts = settings.pipeline.lease_seconds, settings.pipeline.max_attempts
    fail_exhausted(engine, settings, now)
    claimable = or_(
        JOB.c.status == JobStatus.PENDING.value,
        and_(JOB.c.status == JobStatus.RUNNING.value, JOB.c.lease_until < now, JOB.c.attempts < max_attempts),
    )
    with engine.begin() as conn:
        candidates = (
            select(JOB.c.id)
            .where(claimable)
            .order_by(JOB.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer and ignores it
        )
        if conn.dialect.name == "postgresql":
            # Lock the candidates in a statement of their own. As a subquery of the
            # UPDATE it can run again (PostgreSQL re-checks a row that a concurrent
            # claim changed by re-evaluating the query), and SKIP LOCKED then picks
            # other rows each time: with two workers, one claim of 2 took 56 jobs.
            ids = conn.execute(candidates).scalars().all()
            if not ids:
                return []
            chosen = JOB.c.id.in_(ids)
        else:
            chosen = JOB.c.id.in_(candidates.scalar_subquery())
        claimed = conn.execute(
            update(JOB)
            .where(chosen, claimable)  # re-checked under the write lock
            .values(
                status=JobStatus.RUNNING.value,
                worker=worker,
                attempts=JOB.c.attempts + 1,
                lease_until=now + timedelta(seconds=lease_seconds),
                started_at=now,
            )
            .returning(JOB.c.id, JOB.c.series_pk, JOB.c.generation, JOB.c.attempts)
        ).all()
        if not claimed:
            return []
        info = {
            row.id: row
            for row in conn.execute(
                select(SERIES.c.id, SERIES.c.series_uid, SERIES.c.study_pk, STUDY.c.study_uid)
                .join(STUDY, STUDY.c.id == SERIES.c.study_pk)
                .where(SERIES.c.id.in_([c.series_pk for c in claimed]))
            )
        }
    return [
        ClaimedJob(
            c.id,
            c.series_pk,
            info[c.series_pk].study_pk,
            c.generation,
            c.attempts,
            info[c.series_pk].series_uid,
            info[c.series_pk].study_uid,
        )
        for c in sorted(claimed, key=lambda c: c.id)
    ]


def fail_exhausted(engine: Engine, settings: Settings, now: datetime | None = None) -> int:
    """Record as failed every running job whose lease ran out on its last attempt; returns how many."""
    now = now or utcnow()
    max_attempts = settings.pipeline.max_attempts
    with engine.begin() as conn:
        stale = conn.execute(
            select(
                JOB.c.id,
                JOB.c.series_pk,
                JOB.c.generation,
                JOB.c.attempts,
                JOB.c.error,
                SERIES.c.series_uid,
                SERIES.c.study_pk,
                STUDY.c.study_uid,
            )
            .join(SERIES, SERIES.c.id == JOB.c.series_pk)
            .join(STUDY, STUDY.c.id == SERIES.c.study_pk)
            .where(JOB.c.status == JobStatus.RUNNING.value, JOB.c.lease_until < now, JOB.c.attempts >= max_attempts)
        ).all()
    for row in stale:
        job = ClaimedJob(row.id, row.series_pk, row.study_pk, row.generation, row.attempts, row.series_uid, row.study_uid)
        why = f"scoring did not finish in {row.attempts} attempts" + (f" (last error: {row.error})" if row.error else "")
        _finish_failed(engine, job, None, why, now, settings.policy)
    return len(stale)


def renew_leases(engine: Engine, worker: str, job_ids: list[int], lease_seconds: float, now: datetime | None = None) -> int:
    """Extend the leases of ``worker``'s running jobs (its heartbeat); returns how many are still its own."""
    if not job_ids:
        return 0
    now = now or utcnow()
    with engine.begin() as conn:
        return int(
            conn.execute(
                update(JOB)
                .where(JOB.c.id.in_(job_ids), JOB.c.worker == worker, JOB.c.status == JobStatus.RUNNING.value)
                .values(lease_until=now + timedelta(seconds=lease_seconds))
            ).rowcount
        )


def stored_instances(engine: Engine, series_pk: int, data_dir: Path) -> list[StoredInstance]:
    """The series' instances as stored, in instance-number order."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(INSTANCE.c.sop_instance_uid, INSTANCE.c.path, INSTANCE.c.sha256)
            .where(INSTANCE.c.series_pk == series_pk)
            .order_by(INSTANCE.c.instance_number, INSTANCE.c.sop_instance_uid)
        ).all()
    return [StoredInstance(uid, data_dir / path, sha) for uid, path, sha in rows]


# -- recording results -------------------------------------------------------------


def _own(conn: Connection, job: ClaimedJob, worker: str | None, status: JobStatus, now: datetime, error: str | None = None) -> bool:
    """Compare-and-set the job from running (held by ``worker``) to ``status``; False if it is no longer ours."""
    held = [JOB.c.id == job.id, JOB.c.status == JobStatus.RUNNING.value, JOB.c.attempts == job.attempts]
    if worker is not None:
        held.append(JOB.c.worker == worker)
    values: dict[str, Any] = {"status": status.value, "lease_until": None, "error": error}
    if status is not JobStatus.PENDING:
        values["finished_at"] = now
    return bool(conn.execute(update(JOB).where(*held).values(**values)).rowcount)


def record_result(
    engine: Engine,
    job: ClaimedJob,
    worker: str,
    score: SeriesScore,
    instances: list[StoredInstance],
    device: str,
    duration_s: float,
    policy: PolicySettings,
    now: datetime | None = None,
) -> bool:
    """Store a scored series, its audit event and the study's new state in one transaction.

    Returns False (and stores nothing) when the job is no longer this worker's.
    """
    now = now or utcnow()
    with engine.begin() as conn:
        audit.lock_chain(conn)  # before the job's row lock: one lock order for every appending writer
        if not _own(conn, job, worker, JobStatus.DONE, now):
            log.warning("job %d (series %s) was taken over by another worker; result dropped", job.id, job.series_uid)
            return False
        result_pk = inserted_pk(
            conn.execute(
                RESULT.insert().values(
                    series_pk=job.series_pk,
                    study_pk=job.study_pk,
                    generation=job.generation,
                    job_pk=job.id,
                    analysed=score.analysed,
                    reason=score.reason,
                    failures=json.dumps(list(score.failures)),
                    device=device,
                    duration_s=duration_s,
                    scored_at=now,
                )
            )
        )
        outputs = [f.as_json() for f in score.findings]
        for finding, out in zip(score.findings, outputs, strict=True):
            conn.execute(
                FINDING.insert().values(
                    result_pk=result_pk,
                    study_pk=job.study_pk,
                    series_pk=job.series_pk,
                    kind=finding.kind.value,
                    probability=finding.probability,
                    operating_point=finding.operating_point,
                    urgent=finding.urgent,
                    model_name=finding.model.name,
                    model_version=finding.model.version,
                    weights_sha256=finding.model.sha256,
                    regions=json.dumps(out["regions"]),
                    created_at=now,
                )
            )
        failed = bool(score.failures) and not score.findings
        audit.append(
            conn,
            actor=audit.AI_ACTOR,
            action=audit.Action.INFERENCE_FAILED if failed else audit.Action.INFERENCE,
            study_uid=job.study_uid,
            at=now,
            detail={
                "series_uid": job.series_uid,
                "generation": job.generation,
                "job": job.id,
                "route": score.reason,
                "analysed": score.analysed,
                "device": device,
                "duration_s": round(duration_s, 3),
                "inputs": [{"sop_instance_uid": i.sop_instance_uid, "sha256": i.sha256} for i in instances],
                "models": sorted({json.dumps(o["model"], sort_keys=True) for o in outputs}),
                "outputs": [{k: o[k] for k in ("kind", "probability", "operating_point", "urgent", "regions", "model")} for o in outputs],
                "failures": list(score.failures),
            },
        )
        refresh_study(conn, job.study_pk, policy, now)
    return True


def record_failure(
    engine: Engine, job: ClaimedJob, worker: str, error: str, max_attempts: int, policy: PolicySettings, now: datetime | None = None
) -> bool:
    """A scoring attempt raised: try again later, or, on the last attempt, record the series as failed.

    Returns True if the failure is final.
    """
    now = now or utcnow()
    if job.attempts < max_attempts:
        with engine.begin() as conn:
            _own(conn, job, worker, JobStatus.PENDING, now, error=error)
        log.warning("series %s: attempt %d of %d failed (%s); will retry", job.series_uid, job.attempts, max_attempts, error)
        return False
    _finish_failed(engine, job, worker, error, now, policy)
    return True


def _finish_failed(engine: Engine, job: ClaimedJob, worker: str | None, error: str, now: datetime, policy: PolicySettings) -> None:
    with engine.begin() as conn:
        audit.lock_chain(conn)  # see record_result
        if not _own(conn, job, worker, JobStatus.FAILED, now, error=error):
            return
        conn.execute(
            RESULT.insert().values(
                series_pk=job.series_pk,
                study_pk=job.study_pk,
                generation=job.generation,
                job_pk=job.id,
                analysed=True,
                reason="scoring failed",
                failures=json.dumps([error]),
                duration_s=0.0,
                scored_at=now,
            )
        )
        audit.append(
            conn,
            actor=audit.AI_ACTOR,
            action=audit.Action.INFERENCE_FAILED,
            study_uid=job.study_uid,
            at=now,
            detail={
                "series_uid": job.series_uid,
                "generation": job.generation,
                "job": job.id,
                "attempts": job.attempts,
                "failures": [error],
            },
        )
        refresh_study(conn, job.study_pk, policy, now)
    log.error("series %s: AI failed: %s", job.series_uid, error)


# -- the study's state and rank ---------------------------------------------------------


def study_ai_state(results: list[Any], series_waiting: int) -> tuple[AIStatus, str | None]:
    """The study's AI status and reason from the newest result of each of its series.

    ``results`` have ``analysed``, ``reason``, ``failures`` (JSON text) and
    ``has_findings``; ``series_waiting`` counts series not scored yet
    (receiving, or a job pending or running).
    """
    analysed = [r for r in results if r.analysed]
    failures = [f for r in analysed for f in json.loads(r.failures or "[]")]
    failed = [r for r in analysed if json.loads(r.failures or "[]") and not r.has_findings]
    waiting = f"{series_waiting} series still being scored" if series_waiting else None
    if not analysed:
        if not results:
            return AIStatus.PENDING, None
        if series_waiting:
            return AIStatus.PENDING, waiting
        # The routing reason reads "not analysed: <why>"; the status already says the first part.
        reasons = sorted({r.reason.removeprefix("not analysed: ") for r in results if r.reason})
        return AIStatus.NOT_ANALYSED, "; ".join(reasons) or "no detector applies"
    if failed and len(failed) == len(analysed):
        return AIStatus.FAILED, "; ".join(dict.fromkeys(failures))
    if failures:
        return AIStatus.PARTIAL, "; ".join(dict.fromkeys(failures))
    return AIStatus.SCORED, waiting


def refresh_study(conn: Connection, study_pk: int, policy: PolicySettings, now: datetime) -> None:
    """Recompute a study's AI status from its series' newest results, then its class; audit a class change."""
    newest = (
        select(RESULT.c.series_pk, func.max(RESULT.c.generation).label("generation"))
        .where(RESULT.c.study_pk == study_pk)
        .group_by(RESULT.c.series_pk)
        .subquery()
    )
    has_findings = select(func.count()).where(FINDING.c.result_pk == RESULT.c.id).scalar_subquery() > 0
    results = conn.execute(
        select(
            RESULT.c.series_pk,
            RESULT.c.generation,
            RESULT.c.analysed,
            RESULT.c.reason,
            RESULT.c.failures,
            has_findings.label("has_findings"),
        ).join(newest, and_(newest.c.series_pk == RESULT.c.series_pk, newest.c.generation == RESULT.c.generation))
    ).all()
    scored = {(r.series_pk, r.generation) for r in results}
    series = conn.execute(select(SERIES.c.id, SERIES.c.generation).where(SERIES.c.study_pk == study_pk)).all()
    waiting = sum(1 for s in series if (s.id, s.generation) not in scored)
    status, reason = study_ai_state(list(results), waiting)
    conn.execute(
        update(STUDY).where(STUDY.c.id == study_pk).values(ai_status=status.value, ai_reason=reason, scored_at=now if results else None)
    )
    reassess(conn, policy, now, [study_pk])


def reassess(conn: Connection, policy: PolicySettings, now: datetime, study_pks: list[int] | None = None) -> int:
    """Store each study's priority class where it changed (findings, or waiting time); audit each change.

    Signed studies are left alone: their class no longer orders anything.
    Returns the number of changes.
    """
    changes = 0
    for pk, (study, case) in case_inputs(conn, study_pks).items():
        if study["read_state"] == ReadState.SIGNED.value:
            continue
        urgency = assess(case, now, policy)
        new = urgency.priority_class.value
        if new == study["priority_class"]:
            continue
        if not changes:  # before the first row lock (audit.lock_chain); a no-op if the caller took it
            audit.lock_chain(conn)
        # Compare-and-set on the class read: several workers re-assess the same
        # studies; only the one that moves the class audits the change.
        moved = conn.execute(
            update(STUDY)
            .where(STUDY.c.id == pk, STUDY.c.priority_class.is_not_distinct_from(study["priority_class"]))
            .values(priority_class=new)
        ).rowcount
        if not moved:
            continue
        audit.append(
            conn,
            actor=audit.SYSTEM_ACTOR,
            action=audit.Action.RANK_CHANGED,
            study_uid=study["study_uid"],
            at=now,
            detail={"from": study["priority_class"], "to": new, "score": round(urgency.score, 2), "reasons": list(urgency.reasons)},
        )
        changes += 1
    return changes


# -- the worker ----------------------------------------------------------------------


class ScoringWorker:
    """Claims scoring jobs and scores them on one inference engine, several series at once.

    ``concurrent_jobs`` series are in flight together so that the engine
    batches slices across them. Detectors and the engine are loaded on
    :meth:`start` (torch is imported there, not by the listener).
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        detectors: DetectorSet | None = None,
        inference: InferenceEngine | None = None,
        worker_id: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_recorded: Callable[[ClaimedJob], None] | None = None,
    ) -> None:
        if detectors is None or inference is None:
            # Checked now, not when start() imports torch: a server would be listening by then.
            require_extra("torch", "torchvision", "scipy")
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.detectors = detectors
        self.inference = inference
        self._owns_inference = inference is None
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._slots = threading.Semaphore(settings.pipeline.concurrent_jobs)
        self._pool = ThreadPoolExecutor(settings.pipeline.concurrent_jobs, thread_name_prefix="scoring")
        self._thread = threading.Thread(target=self._run, name="scoring-jobs", daemon=True)
        self.jobs_done = 0
        # Called (on a scoring thread) after a job's result is recorded by this
        # worker, e.g. to queue the study's results for the PACS.
        self.on_recorded = on_recorded
        self._in_flight: set[int] = set()  # job ids, for the heartbeat
        self._in_flight_lock = threading.Lock()
        # time.monotonic() of the claiming loop's last turn: what /healthz and the systemd watchdog read.
        self._last_turn: float | None = None

    def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Load the detectors (seconds: torch and the weights), then claim jobs, unless ``stopping()`` says a stop
        was asked for meanwhile: a worker stopped while it loads claims nothing (its jobs wait in the DB)."""
        if self.detectors is None or self.inference is None:
            from detectors.engine import InferenceEngine
            from detectors.registry import OperatingPointError, load_detectors
            from triage.errors import ConfigError

            cfg = self.settings.detectors
            if self.inference is None:
                self.inference = InferenceEngine(cfg.device, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, workers=cfg.workers)
            if self.detectors is None:
                try:
                    self.detectors = load_detectors(cfg.external, device=str(self.inference.device), operating_points=cfg.operating_points)
                except OperatingPointError as exc:
                    if self._owns_inference:  # not started: nothing else would close its threads
                        self.inference.close()
                    raise ConfigError(f"config: detectors.operating_points.{exc.name}: {exc}") from None
        log.info("scoring worker %s: %d detectors on %s", self.worker_id, len(self.detectors), self.inference.device)
        if stopping():
            log.info("scoring worker %s: stop asked for while loading; no job claimed", self.worker_id)
            return
        self._thread.start()

    @property
    def claiming(self) -> bool:
        """Whether the worker is claiming jobs (started, and not stopped)."""
        return self._thread.is_alive()

    def beat_age(self) -> float | None:
        """Seconds since the claiming loop last went round (None: it has not started).

        The loop turns at least every ``min(poll_interval, heartbeat_seconds)``
        unless a database call or a bug holds it; leases are renewed from it.
        """
        last = self._last_turn
        return None if last is None else time.monotonic() - last

    def wake(self) -> None:
        """Look for jobs now (new series completed), not at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming, let the series in flight finish, close the engine."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=True)
        if self._owns_inference and self.inference is not None:
            self.inference.close()

    def _run(self) -> None:
        cfg = self.settings.pipeline
        last_reassess = last_beat = 0.0
        while not self._stop.is_set():
            self._last_turn = time.monotonic()
            try:
                if time.monotonic() - last_beat >= cfg.heartbeat_seconds:
                    with self._in_flight_lock:
                        held = sorted(self._in_flight)
                    renew_leases(self.engine, self.worker_id, held, cfg.lease_seconds, self.clock())
                    last_beat = time.monotonic()
                free = self._free_slots()
                jobs = claim_jobs(self.engine, self.worker_id, free, self.settings, self.clock()) if free else []
                for job in jobs:
                    self._slots.acquire()
                    with self._in_flight_lock:
                        self._in_flight.add(job.id)
                    self._pool.submit(self._score, job)
                if time.monotonic() - last_reassess > REASSESS_EVERY_S:
                    with self.engine.begin() as conn:
                        reassess(conn, self.settings.policy, self.clock())
                    last_reassess = time.monotonic()
            except SQLAlchemyError as exc:  # a busy or lost DB must not stop scoring for good
                log.error("scoring loop: database error (will retry): %s", str(getattr(exc, "orig", exc)).splitlines()[0])
                jobs = []
            except DatabaseError as exc:  # the same, met inside an audit append
                log.error("scoring loop: database error (will retry): %s", exc)
                jobs = []
            if not jobs:
                self._wake.wait(min(cfg.poll_interval, cfg.heartbeat_seconds))
                self._wake.clear()

    def _free_slots(self) -> int:
        free = 0
        while self._slots.acquire(blocking=False):
            free += 1
        for _ in range(free):
            self._slots.release()
        return free

    def _score(self, job: ClaimedJob) -> None:
        from detectors.base import DetectionError
        from triage.flow.scoring import score_series

        assert self.detectors is not None and self.inference is not None
        cfg = self.settings.pipeline
        try:
            instances = stored_instances(self.engine, job.series_pk, self.settings.data_dir)
            started = time.perf_counter()
            try:
                score = score_series(job.series_uid, [i.path for i in instances], self.detectors, self.inference)
            except DetectionError as exc:  # the series itself cannot be scored: its result says why
                from triage.flow.scoring import SeriesScore

                score = SeriesScore(
                    series_uid=job.series_uid,
                    modality="",
                    description="",
                    instances=len(instances),
                    reason="scoring failed",
                    analysed=True,
                    failures=(str(exc),),
                )
            recorded = record_result(
                self.engine,
                job,
                self.worker_id,
                score,
                instances,
                str(self.inference.device),
                time.perf_counter() - started,
                self.settings.policy,
                self.clock(),
            )
            self.jobs_done += 1
            if recorded and self.on_recorded is not None:
                self.on_recorded(job)
        except Exception as exc:  # anything else may be passing (DB busy, a bug): retry up to max_attempts
            log.exception("scoring series %s failed", job.series_uid)
            try:
                record_failure(
                    self.engine, job, self.worker_id, f"{type(exc).__name__}: {exc}", cfg.max_attempts, self.settings.policy, self.clock()
                )
            except SQLAlchemyError:
                log.exception("could not record the failure of job %d; its lease will run out", job.id)
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(job.id)
            self._slots.release()
            self._wake.set()
