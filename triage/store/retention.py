"""Retention: a study's stored pixels are deleted once it is read, reported and delivered.

A listener that keeps every instance forever fills its volume, and from then on
every C-STORE is refused (0xA700, the store's free-space reserve). This module
deletes the instance files of studies that no longer need them here, and only
those. A study is **eligible** when all of these hold:

- it is signed (read state ``signed``: a signed report and no amendment open),
  and no reader holds a live claim on it (a claim on a signed study is the
  start of an amendment);
- it is complete (no instance arriving) and none of its series has a scoring
  job pending or running (scoring reads the pixels);
- every configured ``[results]`` destination acknowledged every result object
  of it (its outbox rows for those destinations are all ``sent``; a key image
  is built from the pixels). With no destination configured there is nothing
  to acknowledge. Rows for a destination no longer configured are never sent
  and do not hold a study back forever.

Unread, reading (claimed, drafted, being amended) and unsigned studies are
never eligible, under any pressure.

Two reasons delete an eligible study's pixels:

- **age**: ``retention.days`` after its last signature. The clock starts at the
  signature, not at receipt: a study read late (a backlog, a weekend) was looked
  at just now, and the days after a report are when addenda and comparisons
  need the images; counting from receipt would delete a study that waited
  unread too long the minute it is signed.
- **high water**: the volume is fuller than ``high_water_percent``. The oldest
  eligible studies (by signature) go first, younger than ``days`` too, until the
  volume is below ``low_water_percent``: refusing new studies (possibly acute
  ones) is worse than deleting local copies of studies already reported and
  delivered, whose originals the sending PACS holds. Even then a study signed
  less than ``high_water_min_hours`` ago is kept (amendments follow signing).

**Order of a purge, and crashes.** One transaction marks the study's index row
(``pixels_purged_at``, ``purge_pending``) and appends the ``pixels_purged``
audit event (actor ``system``: the study, its instance count and bytes, the
reason); the files are removed only after that commit, then ``purge_pending`` is
cleared. A crash before the commit leaves everything as it was; a crash after
it leaves files that the row and the event already call deleted, which
:meth:`Retention.finish_interrupted` removes on the next start (the server calls
it first). The other order could delete files with no event and no flag, which
an audit must never find. The index rows (study, series, instances), reports,
findings and audit stay: the worklist and the preview say "pixels deleted by
retention on DATE".

Versions set aside under ``conflicts/`` (another payload under one of the
study's SOP Instance UIDs) go with the study: they are copies of its pixels,
kept for the same readers' decision, which the signature took. Their rows stay.

An instance that arrives after a purge is indexed as usual; the study is then
eligible again (when its new series is scored and delivered) for those files.
"""

from __future__ import annotations

import enum
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from dicom_io.errors import StorageError
from dicom_io.store import InstanceStore
from triage.clock import as_utc, utcnow
from triage.config import Settings
from triage.errors import TriageError
from triage.store import audit
from triage.store.tables import INSTANCE, INSTANCE_CONFLICT, JOB, OUTBOX, REPORT, SERIES, STUDY
from triage.vocabulary import JobStatus, OutboxStatus, ReadState, ReceiveStatus, ReportStatus

log = logging.getLogger(__name__)


class DiskUsage(NamedTuple):
    """What :func:`shutil.disk_usage` returns, in bytes."""

    total: int
    used: int
    free: int


DiskUsageFn = Callable[[Path], Any]  # shutil.disk_usage, or a fake returning (total, used, free)


class PurgeReason(str, enum.Enum):
    """Why a study's pixels go (the ``reason`` of its ``pixels_purged`` event)."""

    AGE = "age"
    HIGH_WATER = "high_water"


class RetentionError(TriageError):
    """Retention cannot run as asked; the message says why."""


@dataclass(frozen=True)
class Candidate:
    """An eligible study and what deleting its pixels would free (from the index)."""

    study_pk: int
    study_uid: str
    signed_at: datetime
    first_received: datetime
    instances: int  # indexed instances not yet purged
    bytes: int  # their sizes, as indexed
    conflict_files: int  # versions set aside under conflicts/


@dataclass(frozen=True)
class Planned:
    """A study that retention deletes (or, dry, would delete) now, and why."""

    candidate: Candidate
    reason: PurgeReason

    def as_json(self, now: datetime) -> dict[str, Any]:
        c = self.candidate
        return {
            "study_uid": c.study_uid,
            "signed_at": c.signed_at.isoformat(),
            "age_days": round(age_days(c.signed_at, now), 2),
            "instances": c.instances,
            "bytes": c.bytes,
            "conflict_files": c.conflict_files,
            "reason": self.reason.value,
        }


@dataclass(frozen=True)
class Purged:
    """A study whose pixels were deleted: what the index said, and what was on disk."""

    planned: Planned
    audit_seq: int
    files_removed: int  # files found and removed (instances and conflicts)
    bytes_removed: int


def age_days(signed_at: datetime, now: datetime) -> float:
    """Days from ``signed_at`` to ``now``."""
    return (now - signed_at).total_seconds() / 86400.0


def used_percent(usage: Any) -> float:
    """The share of the volume not free, in percent: what the store's free-space reserve runs into.

    ``total - free`` rather than ``used``: blocks reserved for root count too,
    since the listener cannot write them.
    """
    total, _used, free = (int(v) for v in usage)
    if total <= 0:
        return 0.0
    return 100.0 * (total - free) / total


def _claim_live(claimed_by: str | None, claim_expires: datetime | None, now: datetime) -> bool:
    # triage.reading.states.claim_is_live, restated: the store stage may not import reading.
    return claimed_by is not None and claim_expires is not None and now < as_utc(claim_expires)


class Retention:
    """Finds eligible studies and deletes their pixels, on one settings object.

    Parameters
    ----------
    engine
        The index.
    store
        The instance store on the data directory (its files are deleted).
    settings
        ``[retention]`` and ``[results]`` destinations are read.
    clock
        Now, timezone-aware (tests move it).
    disk_usage
        ``shutil.disk_usage`` by default; given the data directory, returns
        ``(total, used, free)`` in bytes (tests give a fake).
    """

    def __init__(
        self,
        engine: Engine,
        store: InstanceStore,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        disk_usage: DiskUsageFn = shutil.disk_usage,
    ) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.config = settings.retention
        self.clock = clock
        self.disk_usage = disk_usage
        self._destinations = sorted({d.name for d in settings.results.destinations})

    # --- eligibility -----------------------------------------------------------------------------

    def _eligible_query(self, study_pk: int | None = None) -> Any:
        signed = (
            select(REPORT.c.study_pk, func.max(REPORT.c.signed_at).label("signed_at"))
            .where(REPORT.c.status == ReportStatus.SIGNED.value, REPORT.c.signed_at.is_not(None))
            .group_by(REPORT.c.study_pk)
            .subquery()
        )
        scoring = (
            select(JOB.c.id)
            .join(SERIES, SERIES.c.id == JOB.c.series_pk)
            .where(SERIES.c.study_pk == STUDY.c.id, JOB.c.status.in_([JobStatus.PENDING.value, JobStatus.RUNNING.value]))
            .exists()
        )
        query = (
            select(
                STUDY.c.id,
                STUDY.c.study_uid,
                STUDY.c.first_received,
                STUDY.c.claimed_by,
                STUDY.c.claim_expires,
                STUDY.c.pixels_purged_at,
                signed.c.signed_at,
            )
            .join(signed, signed.c.study_pk == STUDY.c.id)
            .where(
                STUDY.c.read_state == ReadState.SIGNED.value,
                STUDY.c.status == ReceiveStatus.COMPLETE.value,
                ~scoring,
                # Not purged yet, or instances arrived since the last purge.
                or_(STUDY.c.pixels_purged_at.is_(None), STUDY.c.last_received > STUDY.c.pixels_purged_at),
            )
            .order_by(signed.c.signed_at, STUDY.c.id)
        )
        if self._destinations:
            unsent = (
                select(OUTBOX.c.id)
                .where(
                    OUTBOX.c.study_pk == STUDY.c.id,
                    OUTBOX.c.status != OutboxStatus.SENT.value,
                    OUTBOX.c.destination.in_(self._destinations),
                )
                .exists()
            )
            query = query.where(~unsent)
        if study_pk is not None:
            query = query.where(STUDY.c.id == study_pk)
        return query

    def _not_purged(self, received: Any) -> Any:
        return or_(STUDY.c.pixels_purged_at.is_(None), received > STUDY.c.pixels_purged_at)

    def candidates(self, now: datetime | None = None) -> list[Candidate]:
        """Every eligible study, oldest signature first, with what its purge would free (per the index)."""
        now = now or self.clock()
        with self.engine.connect() as conn:
            rows = [r for r in conn.execute(self._eligible_query()).all() if not _claim_live(r.claimed_by, r.claim_expires, now)]
            pks = [r.id for r in rows]
            sizes: dict[int, tuple[int, int]] = {}
            conflicts: dict[int, int] = {}
            if pks:
                instances = (
                    select(STUDY.c.id, func.count(INSTANCE.c.id), func.coalesce(func.sum(INSTANCE.c.size_bytes), 0))
                    .select_from(INSTANCE.join(SERIES, SERIES.c.id == INSTANCE.c.series_pk).join(STUDY, STUDY.c.id == SERIES.c.study_pk))
                    .where(STUDY.c.id.in_(pks), self._not_purged(INSTANCE.c.received_at))
                    .group_by(STUDY.c.id)
                )
                sizes = {pk: (int(n), int(b)) for pk, n, b in conn.execute(instances).all()}
                kept_aside = (
                    select(STUDY.c.id, func.count(INSTANCE_CONFLICT.c.id))
                    .select_from(INSTANCE_CONFLICT.join(STUDY, STUDY.c.id == INSTANCE_CONFLICT.c.study_pk))
                    .where(STUDY.c.id.in_(pks), self._not_purged(INSTANCE_CONFLICT.c.received_at))
                    .group_by(STUDY.c.id)
                )
                conflicts = {pk: int(n) for pk, n in conn.execute(kept_aside).all()}
        return [
            Candidate(
                study_pk=r.id,
                study_uid=r.study_uid,
                signed_at=as_utc(r.signed_at),
                first_received=as_utc(r.first_received),
                instances=sizes.get(r.id, (0, 0))[0],
                bytes=sizes.get(r.id, (0, 0))[1],
                conflict_files=conflicts.get(r.id, 0),
            )
            for r in rows
            if sizes.get(r.id, (0, 0))[0] or conflicts.get(r.id, 0)  # nothing left to delete: nothing to record
        ]

    def _usage(self) -> DiskUsage:
        total, used, free = (int(v) for v in self.disk_usage(self.settings.data_dir))
        return DiskUsage(total, used, free)

    def plan(self, now: datetime | None = None) -> list[Planned]:
        """What :meth:`run` would delete now, and why; deletes nothing (``triage retention --dry-run``).

        The high-water part is an estimate: the volume's use minus what the
        index says each purge frees, until below the low-water mark.
        """
        now = now or self.clock()
        candidates = self.candidates(now)
        planned = [Planned(c, PurgeReason.AGE) for c in candidates if self._old(c, now)]
        if self.config.high_water_percent:
            usage = self._usage()
            unavailable = usage.total - usage.free - sum(p.candidate.bytes for p in planned)
            if usage.total and 100.0 * (usage.total - usage.free) / usage.total > self.config.high_water_percent:
                for c in candidates:
                    if 100.0 * unavailable / usage.total <= self.config.low_water_percent:
                        break
                    if self._old(c, now) or not self._past_min_hours(c, now):
                        continue
                    planned.append(Planned(c, PurgeReason.HIGH_WATER))
                    unavailable -= c.bytes
        return planned

    def _old(self, c: Candidate, now: datetime) -> bool:
        return bool(self.config.days) and c.signed_at <= now - timedelta(days=self.config.days)

    def _past_min_hours(self, c: Candidate, now: datetime) -> bool:
        return c.signed_at <= now - timedelta(hours=self.config.high_water_min_hours)

    # --- purging --------------------------------------------------------------------------------

    def run(self) -> list[Purged]:
        """Finish interrupted purges, delete the pixels of eligible studies past ``days``, then,
        if the volume is above the high-water mark, the oldest eligible ones until below the low mark.

        Raises
        ------
        RetentionError
            If ``[retention] enabled`` is false.
        StorageError, DatabaseError
            The files or the index could not be changed (what was committed stays consistent).
        """
        if not self.config.enabled:
            raise RetentionError("retention is off: set [retention] enabled = true (use --dry-run to see what it would delete)")
        self.finish_interrupted()
        now = self.clock()
        done: list[Purged] = []
        candidates = self.candidates(now)
        for c in candidates:
            if self._old(c, now):
                purged = self._purge(Planned(c, PurgeReason.AGE), now)
                if purged is not None:
                    done.append(purged)
        if self.config.high_water_percent and used_percent(self._usage()) > self.config.high_water_percent:
            taken = {p.planned.candidate.study_pk for p in done}
            for c in candidates:
                share = used_percent(self._usage())  # measured again after each purge: what the disk says, not the index
                if share <= self.config.low_water_percent:
                    break
                if c.study_pk in taken or not self._past_min_hours(c, now):
                    continue
                purged = self._purge(Planned(c, PurgeReason.HIGH_WATER), now, used=share)
                if purged is not None:
                    done.append(purged)
            share = used_percent(self._usage())
            if share > self.config.low_water_percent:
                log.warning(
                    "data volume %.1f%% used after retention: no more eligible studies (signed, delivered, over %g h since signing)",
                    share,
                    self.config.high_water_min_hours,
                )
        return done

    def _purge(self, planned: Planned, now: datetime, used: float | None = None) -> Purged | None:
        """Mark, audit, commit, then remove the files; None when the study changed meanwhile (no longer eligible)."""
        c = planned.candidate
        with self.engine.begin() as conn:
            audit.lock_chain(conn)  # the chain first, as every appending writer does (one lock order)
            row = conn.execute(self._eligible_query(c.study_pk)).first()
            if row is None or _claim_live(row.claimed_by, row.claim_expires, now):
                log.info("study %s is no longer eligible for retention; kept", c.study_uid)
                return None
            before = row.pixels_purged_at
            paths, instances, size = self._instance_paths(conn, c.study_pk, after=before, until=None)
            conflict_paths = self._conflict_paths(conn, c.study_pk, after=before, until=None)
            if not paths and not conflict_paths:
                return None
            unchanged = STUDY.c.pixels_purged_at.is_(None) if before is None else STUDY.c.pixels_purged_at == before
            moved = conn.execute(
                update(STUDY)
                .where(STUDY.c.id == c.study_pk, STUDY.c.read_state == ReadState.SIGNED.value, unchanged)
                .values(pixels_purged_at=now, purge_pending=True)
            )
            if moved.rowcount != 1:  # amended, or purged by another server, since the check
                return None
            detail: dict[str, Any] = {
                "reason": planned.reason.value,
                "instances": instances,
                "bytes": size,
                "conflict_files": len(conflict_paths),
                "signed_at": c.signed_at.isoformat(),
                "age_days": round(age_days(c.signed_at, now), 2),
            }
            if used is not None:
                detail["volume_used_percent"] = round(used, 1)
            seq = audit.append(conn, actor=audit.SYSTEM_ACTOR, action=audit.Action.PIXELS_PURGED, study_uid=c.study_uid, detail=detail)
        files, removed = self._remove(c.study_pk, paths + conflict_paths)
        log.info(
            "retention (%s): deleted %d files (%.1f MiB) of study %s, signed %s",
            planned.reason.value,
            files,
            removed / 2**20,
            c.study_uid,
            c.signed_at.date(),
        )
        return Purged(
            Planned(
                Candidate(c.study_pk, c.study_uid, c.signed_at, c.first_received, instances, size, len(conflict_paths)), planned.reason
            ),
            seq,
            files,
            removed,
        )

    def _instance_paths(
        self, conn: Connection, study_pk: int, *, after: datetime | None, until: datetime | None
    ) -> tuple[list[str], int, int]:
        query = (
            select(INSTANCE.c.path, INSTANCE.c.size_bytes)
            .join(SERIES, SERIES.c.id == INSTANCE.c.series_pk)
            .where(SERIES.c.study_pk == study_pk)
        )
        if after is not None:
            query = query.where(INSTANCE.c.received_at > after)
        if until is not None:
            query = query.where(INSTANCE.c.received_at <= until)
        rows = conn.execute(query.order_by(INSTANCE.c.id)).all()
        return [r.path for r in rows], len(rows), sum(int(r.size_bytes) for r in rows)

    def _conflict_paths(self, conn: Connection, study_pk: int, *, after: datetime | None, until: datetime | None) -> list[str]:
        query = select(INSTANCE_CONFLICT.c.path).where(INSTANCE_CONFLICT.c.study_pk == study_pk)
        if after is not None:
            query = query.where(INSTANCE_CONFLICT.c.received_at > after)
        if until is not None:
            query = query.where(INSTANCE_CONFLICT.c.received_at <= until)
        return [r.path for r in conn.execute(query.order_by(INSTANCE_CONFLICT.c.id)).all()]

    def _remove(self, study_pk: int, paths: Sequence[str]) -> tuple[int, int]:
        files, size = self.store.remove_files(paths)
        with self.engine.begin() as conn:
            conn.execute(update(STUDY).where(STUDY.c.id == study_pk).values(purge_pending=False))
        return files, size

    def finish_interrupted(self) -> int:
        """Remove the files of purges committed but not finished (a crash in between); returns how many studies.

        Only files indexed up to the purge's time: those its audit event counts.
        No new event: the one committed with the mark already records the deletion.
        """
        with self.engine.connect() as conn:
            pending = conn.execute(
                select(STUDY.c.id, STUDY.c.study_uid, STUDY.c.pixels_purged_at).where(STUDY.c.purge_pending.is_(True))
            ).all()
            work = []
            for row in pending:
                paths, _, _ = self._instance_paths(conn, row.id, after=None, until=row.pixels_purged_at)
                work.append((row, paths + self._conflict_paths(conn, row.id, after=None, until=row.pixels_purged_at)))
        for row, paths in work:
            files, _size = self._remove(row.id, paths)
            log.warning("retention: finished the interrupted purge of study %s (%d files left were removed)", row.study_uid, files)
        return len(work)


class RetentionSweeper:
    """Runs :meth:`Retention.run` every ``retention.interval_s`` in a thread, and at once on :meth:`wake`."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Check now (e.g. the store is close to its reserve), not at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.retention.run()
            except (TriageError, StorageError, SQLAlchemyError):
                # The next pass tries again: a busy database or a file that cannot go is not fatal to serving.
                log.exception("retention pass failed")
            self._wake.wait(self.retention.config.interval_s)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


__all__ = [
    "Candidate",
    "DiskUsage",
    "Planned",
    "PurgeReason",
    "Purged",
    "Retention",
    "RetentionError",
    "RetentionSweeper",
    "age_days",
    "used_percent",
]
