"""The outbox: AI results and signed reports for the PACS, kept in the DB until acknowledged.

A row per object per destination (``triage.store.models.OutboxItem``) is written in
the same transaction as what causes it: the AI SR (and key images) when a
study's scoring is recorded, the report SR when a radiologist signs. The
:class:`OutboxSender` (in ``triage serve``, roles ``all`` and ``worker``)
picks due rows, builds each object's file under
``<data_dir>/results/<study uid>/<sop uid>.dcm`` the first time (from the DB
as it is then), C-STOREs it, and marks the row sent once the destination
acknowledges it (success or warning status, PS3.4 B.2.3). A failure is
retried with back-off (``retry_min_seconds`` doubling up to
``retry_max_seconds``) for as long as it takes: a row is never dropped, and
rows outlive a restart because they are in the DB.

Rows are claimed like scoring jobs (``triage.flow.pipeline.claim_jobs``): one
``UPDATE ... RETURNING`` over candidates picked ``FOR UPDATE SKIP LOCKED`` (on
PostgreSQL), which moves ``next_attempt_at`` a lease ahead, so two senders
never send the same row at once, and a sender that dies mid-send leaves its
rows due again when the lease runs out. Objects get UIDs derived from what
they are built from, so a row built twice (or sent to two destinations) is one
instance to every PACS.

This module imports neither pynetdicom nor highdicom at import time: the
worklist service uses its enqueueing and its read model.
"""

from __future__ import annotations

import enum
import hashlib
import io
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, exists, func, insert, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from triage import __version__
from triage.clock import as_utc, utcnow
from triage.config import Destination, Settings
from triage.errors import DatabaseError, DicomIOError, TriageError
from triage.flow.cases import FindingRow, current_findings
from triage.store import audit
from triage.store.tables import FINDING, INSTANCE, OUTBOX, REPORT, RESULT, SERIES, STUDY
from triage.vocabulary import AIStatus, OutboxStatus, ReportStatus

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from dicom_io.send import Peer
    from triage.flow.pipeline import ClaimedJob

log = logging.getLogger(__name__)


SEND_LEASE_S = 300.0  # a claimed row is due again after this if its sender died mid-send
BATCH = 32  # rows claimed per pass
_SOURCE_KEY_MAX = 128  # OutboxItem.source_key
_ERROR_MAX = 500  # characters of last_error kept
MANUFACTURER = "triage"


class ResultKind(str, enum.Enum):
    """What an outbox row carries (``OutboxItem.kind``)."""

    AI_SR = "ai_sr"  # TID 1500 measurement report of the AI's findings
    KEY_IMAGE = "key_image"  # Secondary Capture of one finding's strongest region
    REPORT_SR = "report_sr"  # the signed report, Basic Text SR


class OutboxError(TriageError):
    """A result object could not be built or sent; the message names it and why."""


@dataclass(frozen=True)
class ResultState:
    """One result object for one destination, as ``triage studies`` shows it."""

    kind: str
    destination: str
    status: str  # OutboxStatus value
    attempts: int
    last_error: str | None
    sent_at: datetime | None
    next_attempt_at: datetime
    sop_instance_uid: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "destination": self.destination,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "sent_at": self.sent_at.isoformat() if self.sent_at else None,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.status == OutboxStatus.PENDING.value else None,
            "sop_instance_uid": self.sop_instance_uid,
        }


# --- pure ----------------------------------------------------------------------------------------


def backoff_seconds(attempts: int, minimum: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``minimum`` doubling, at most ``maximum``."""
    if attempts < 1:
        return 0.0
    return float(min(maximum, minimum * 2.0 ** min(attempts - 1, 62)))


def scoring_source_key(study_uid: str, scored_at: datetime) -> str:
    """What an AI SR is built from: the study and when its current AI result was recorded."""
    return f"{study_uid}:{as_utc(scored_at).isoformat()}"


def _key_image_source_key(base: str, finding_id: int) -> str:
    return f"{base}#finding-{finding_id}"


def _finding_id(source_key: str) -> int:
    _, sep, tail = source_key.rpartition("#finding-")
    if not sep or not tail.isdigit():
        raise OutboxError(f"key image source {source_key!r} names no finding")
    return int(tail)


def object_uids(kind: ResultKind | str, study_uid: str, source_key: str) -> tuple[str, str]:
    """``(series uid, SOP instance uid)`` of the object an outbox row carries; the same every time.

    AI SRs get a series each; the key images of one scoring share one; every
    report version of a study goes into the study's one report series.
    """
    from dicom_io.results.common import object_uid

    kind = ResultKind(kind)
    sop = object_uid("triage", kind.value, study_uid, source_key)
    if kind is ResultKind.AI_SR:
        series = object_uid("triage", "ai_sr series", study_uid, source_key)
    elif kind is ResultKind.KEY_IMAGE:
        series = object_uid("triage", "key_image series", study_uid, source_key.rpartition("#finding-")[0])
    else:
        series = object_uid("triage", "report series", study_uid)
    return str(series), str(sop)


# --- enqueueing (in the caller's transaction) ----------------------------------------------------


def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose (destination, kind, source_key) is not there yet; returns how many were new."""
    if not rows:
        return 0
    for row in rows:
        if len(row["source_key"]) > _SOURCE_KEY_MAX:
            raise OutboxError(f"outbox source key longer than {_SOURCE_KEY_MAX} characters: {row['source_key'][:80]}")
    keys = ["destination", "kind", "source_key"]
    if conn.dialect.name in ("postgresql", "sqlite"):
        # The unique constraint makes enqueueing idempotent; ON CONFLICT keeps the transaction usable.
        from sqlalchemy.dialects import postgresql, sqlite

        if conn.dialect.name == "postgresql":
            stmt: postgresql.Insert | sqlite.Insert = postgresql.insert(OUTBOX).values(rows).on_conflict_do_nothing(index_elements=keys)
        else:
            stmt = sqlite.insert(OUTBOX).values(rows).on_conflict_do_nothing(index_elements=keys)
        # RETURNING lists the rows inserted; rowcount of a multi-row insert is -1 with some drivers.
        return len(conn.execute(stmt.returning(OUTBOX.c.id)).all())
    created = 0
    for row in rows:  # other databases: look first (the constraint still guards against a race)
        exists = conn.execute(select(OUTBOX.c.id).where(*[OUTBOX.c[k] == row[k] for k in keys])).first()
        if exists is None:
            conn.execute(insert(OUTBOX).values(**row))
            created += 1
    return created


def _rows(settings: Settings, study_pk: int, kind: ResultKind, source_key: str, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "study_pk": study_pk,
            "kind": kind.value,
            "source_key": source_key,
            "destination": d.name,
            "status": OutboxStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for d in settings.results.destinations
    ]


def enqueue_study_results(
    conn: Connection, settings: Settings, study_pk: int, study_uid: str, source_key: str, now: datetime | None = None
) -> int:
    """Queue a study's AI results for every destination: the AI SR, and key images if configured.

    Idempotent: an object already queued for a destination (same kind and
    ``source_key``) is not queued again. Key images are made for the study's
    current findings at or above their operating point that have a region.

    Returns
    -------
    int
        Rows created (0 without destinations).
    """
    if not settings.results.destinations:
        return 0
    now = now or utcnow()
    rows = _rows(settings, study_pk, ResultKind.AI_SR, source_key, now)
    if settings.results.key_images:
        for finding in current_findings(conn, [study_pk]).get(study_pk, []):
            if finding.urgent and finding.regions:
                key = _key_image_source_key(source_key, finding.id)
                rows.extend(_rows(settings, study_pk, ResultKind.KEY_IMAGE, key, now))
    created = _insert_new(conn, rows)
    if created:
        log.info("study %s: %d result objects queued for %s", study_uid, created, ", ".join(d.name for d in settings.results.destinations))
    return created


def enqueue_report(conn: Connection, settings: Settings, study_pk: int, report_id: int, now: datetime | None = None) -> int:
    """Queue a signed report's SR for every destination (``results.report_export == "sr"``).

    Call it in the signing transaction. Returns the rows created (0 when
    report export is off or there are no destinations).
    """
    if settings.results.report_export != "sr" or not settings.results.destinations:
        return 0
    return _insert_new(conn, _rows(settings, study_pk, ResultKind.REPORT_SR, str(report_id), now or utcnow()))


def enqueue_scored(engine: Engine, settings: Settings, study_pk: int, now: datetime | None = None) -> int:
    """After a series' result is recorded: queue the study's AI results if it is scored and has findings.

    A study with a series not scored yet (still receiving, or its job
    pending), failed, or not analysed gets nothing.
    The source is the newest analysed result: a study scored again (a late
    instance) gets a new SR, while a series that no detector analyses (an SR
    coming back from the PACS, say) changes nothing, so our own SR returning
    to us never makes another.

    Returns
    -------
    int
        Rows created.
    """
    if not settings.results.destinations:
        return 0
    newest = (
        select(RESULT.c.series_pk, func.max(RESULT.c.generation).label("generation"))
        .where(RESULT.c.study_pk == study_pk)
        .group_by(RESULT.c.series_pk)
        .subquery()
    )
    with engine.begin() as conn:
        study = conn.execute(select(STUDY.c.study_uid, STUDY.c.ai_status).where(STUDY.c.id == study_pk)).first()
        if study is None or study.ai_status not in (AIStatus.SCORED.value, AIStatus.PARTIAL.value):
            return 0
        # "scored" already holds while other series of the study wait: the SR waits for all of them.
        unscored = ~exists().where(RESULT.c.series_pk == SERIES.c.id, RESULT.c.generation == SERIES.c.generation)
        if conn.execute(select(SERIES.c.id).where(SERIES.c.study_pk == study_pk, unscored).limit(1)).first():
            return 0
        scored_at = conn.execute(
            select(func.max(RESULT.c.scored_at))
            .join(newest, and_(newest.c.series_pk == RESULT.c.series_pk, newest.c.generation == RESULT.c.generation))
            .where(RESULT.c.analysed.is_(True))
        ).scalar()
        if scored_at is None or not current_findings(conn, [study_pk]).get(study_pk):
            return 0
        return enqueue_study_results(conn, settings, study_pk, study.study_uid, scoring_source_key(study.study_uid, scored_at), now)


def on_recorded_hook(engine: Engine, settings: Settings, wake: Callable[[], None] | None = None) -> Callable[[ClaimedJob], None]:
    """The ``ScoringWorker(on_recorded=...)`` callback: queue the job's study results, then ``wake`` the sender."""

    def hook(job: ClaimedJob) -> None:
        try:
            if enqueue_scored(engine, settings, job.study_pk) and wake is not None:
                wake()
        except (SQLAlchemyError, TriageError, DicomIOError):  # USER_ERRORS, spelt out for the type checker
            # The study is scored either way; its SR waits for its next scoring.
            log.exception("study %s: could not queue its AI results", job.study_uid)

    return hook


# --- the read model ------------------------------------------------------------------------------


def results_for(conn: Connection, study_pks: Collection[int] | None = None) -> dict[int, list[ResultState]]:
    """Outbox rows by study primary key (all studies when ``study_pks`` is None), oldest first."""
    query = select(OUTBOX).order_by(OUTBOX.c.study_pk, OUTBOX.c.created_at, OUTBOX.c.id)
    if study_pks is not None:
        query = query.where(OUTBOX.c.study_pk.in_(list(study_pks)))
    out: dict[int, list[ResultState]] = defaultdict(list)
    for r in conn.execute(query):
        out[r.study_pk].append(
            ResultState(
                kind=r.kind,
                destination=r.destination,
                status=r.status,
                attempts=r.attempts,
                last_error=r.last_error,
                sent_at=as_utc(r.sent_at) if r.sent_at else None,
                next_attempt_at=as_utc(r.next_attempt_at),
                sop_instance_uid=r.sop_instance_uid,
            )
        )
    return dict(out)


# --- building objects from the DB ----------------------------------------------------------------


@dataclass(frozen=True)
class BuiltObject:
    relpath: str  # relative to the data directory
    sop_instance_uid: str
    sop_class_uid: str


def _study_attrs(conn: Connection, study_pk: int) -> dict[str, Any]:
    row = conn.execute(select(STUDY).where(STUDY.c.id == study_pk)).mappings().first()
    if row is None:
        raise OutboxError(f"study #{study_pk} is not in the index")
    return dict(row)


def _images(conn: Connection, where: Any) -> dict[str, tuple[str, str]]:
    rows = conn.execute(
        select(INSTANCE.c.sop_instance_uid, INSTANCE.c.sop_class_uid, SERIES.c.series_uid)
        .join(SERIES, SERIES.c.id == INSTANCE.c.series_pk)
        .where(where)
    ).all()
    return {r.sop_instance_uid: (r.sop_class_uid, r.series_uid) for r in rows}


def _finding(conn: Connection, finding_id: int) -> FindingRow:
    row = (
        conn.execute(
            select(FINDING, SERIES.c.series_uid).join(SERIES, SERIES.c.id == FINDING.c.series_pk).where(FINDING.c.id == finding_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise OutboxError(f"AI finding {finding_id} is not in the index")
    return FindingRow.from_row(row)


def build_dataset(engine: Engine, settings: Settings, kind: ResultKind | str, study_pk: int, source_key: str) -> Dataset:
    """The DICOM object an outbox row carries, built from the DB as it is now.

    Raises
    ------
    OutboxError, dicom_io.results.common.ResultBuildError, dicom_io.pixels.PixelDataError
        If what the object is built from is missing or unusable.
    """
    from dicom_io.results import ai_sr, key_image, report_sr

    kind = ResultKind(kind)
    with engine.connect() as conn:
        study = _study_attrs(conn, study_pk)
        series_uid, sop_uid = object_uids(kind, study["study_uid"], source_key)
        if kind is ResultKind.AI_SR:
            findings = current_findings(conn, [study_pk]).get(study_pk, [])
            series_uids = sorted({f.series_uid for f in findings})
            images = _images(conn, SERIES.c.series_uid.in_(series_uids))
            return ai_sr.build_ai_sr(
                study,
                findings,
                images,
                sop_instance_uid=sop_uid,
                series_instance_uid=series_uid,
                manufacturer=MANUFACTURER,
                software_version=__version__,
                institution_name=study["institution_name"],
                zone=settings.site.zone,
            )
        if kind is ResultKind.KEY_IMAGE:
            finding = _finding(conn, _finding_id(source_key))
            if not finding.regions:
                raise OutboxError(f"AI finding {finding.id} has no region to show")
            region = finding.regions[0]
            path = conn.execute(select(INSTANCE.c.path).where(INSTANCE.c.sop_instance_uid == region["sop_instance_uid"])).scalar()
            if path is None:
                raise OutboxError(f"image {region['sop_instance_uid']} of AI finding {finding.id} is not stored")
            source = key_image.key_image_source(settings.data_dir / path, finding.kind, region.get("slice_index"))
            return key_image.build_key_image(
                study,
                finding,
                source,
                sop_instance_uid=sop_uid,
                series_instance_uid=series_uid,
                manufacturer=MANUFACTURER,
                zone=settings.site.zone,
            )
        report = conn.execute(select(REPORT).where(REPORT.c.id == int(source_key))).first()
        if report is None or report.status != ReportStatus.SIGNED.value or report.signed_at is None:
            raise OutboxError(f"report {source_key} of study {study['study_uid']} is not signed")
        amends = None
        if report.amends_pk is not None:
            amends = object_uids(ResultKind.REPORT_SR, study["study_uid"], str(report.amends_pk))[1]
        images = _images(conn, SERIES.c.study_pk == study_pk)
        return report_sr.build_report_sr(
            study,
            report.text,
            report.signed_by or report.author,
            as_utc(report.signed_at),
            report.version,
            images,
            sop_instance_uid=sop_uid,
            series_instance_uid=series_uid,
            amends=amends,
            manufacturer=MANUFACTURER,
            institution_name=study["institution_name"],
            zone=settings.site.zone,
        )


def _encode(ds: Dataset) -> bytes:
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def build_file(engine: Engine, settings: Settings, item: Row) -> BuiltObject:
    """Build an outbox row's object once, write it durably, and record its path on every row of that object.

    The file is written like a received instance (``InstanceStore.write``:
    temp file, fsync, link, fsync of the folder). Rows of the same object for
    other destinations share the file.
    """
    from dicom_io.store import InstanceStore
    from dicom_io.uids import check_uid

    with engine.connect() as conn:
        done = conn.execute(
            select(OUTBOX.c.path, OUTBOX.c.sop_instance_uid, OUTBOX.c.sop_class_uid)
            .where(
                OUTBOX.c.study_pk == item.study_pk,
                OUTBOX.c.kind == item.kind,
                OUTBOX.c.source_key == item.source_key,
                OUTBOX.c.path.is_not(None),
            )
            .limit(1)
        ).first()
    if done is None or not (settings.data_dir / done.path).exists():
        ds = build_dataset(engine, settings, item.kind, item.study_pk, item.source_key)
        study_uid = check_uid(str(ds.StudyInstanceUID), "Study Instance UID")
        sop_uid = check_uid(str(ds.SOPInstanceUID), "SOP Instance UID")
        relpath = f"results/{study_uid}/{sop_uid}.dcm"
        InstanceStore(settings.data_dir).write(relpath, _encode(ds))
        built = BuiltObject(relpath, sop_uid, str(ds.SOPClassUID))
    else:
        built = BuiltObject(done.path, done.sop_instance_uid, done.sop_class_uid)
    with engine.begin() as conn:
        conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.study_pk == item.study_pk, OUTBOX.c.kind == item.kind, OUTBOX.c.source_key == item.source_key)
            .values(path=built.relpath, sop_instance_uid=built.sop_instance_uid, sop_class_uid=built.sop_class_uid)
        )
    return built


# --- sending -------------------------------------------------------------------------------------


def _peer(destination: Destination) -> Peer:
    """The destination as dicom_io's sender takes it (TLS context built from the configured files)."""
    from dicom_io.send import Peer, client_tls

    def expand(path: Path | None) -> Path | None:
        return path.expanduser() if path else None

    tls = client_tls(expand(destination.ca), expand(destination.cert), expand(destination.key)) if destination.tls else None
    return Peer(destination.host, destination.port, destination.ae_title, tls, destination.server_name)


def store_files(
    destination: Destination, calling_ae: str, files: Sequence[tuple[Path, str]], timeout: float = 30.0
) -> list[tuple[bool, str]]:
    """C-STORE ``files`` (path, SOP Class UID) to ``destination``: :func:`dicom_io.send.store_files`."""
    from dicom_io.send import store_files as send

    return send(_peer(destination), calling_ae, files, timeout)


def claim_due(engine: Engine, now: datetime, limit: int = BATCH, lease_s: float = SEND_LEASE_S) -> list[Row]:
    """Claim up to ``limit`` due pending rows: their ``next_attempt_at`` moves ``lease_s`` ahead.

    Other senders skip them meanwhile (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL; SQLite has one writer). Returns the rows as they were.
    """
    due = and_(OUTBOX.c.status == OutboxStatus.PENDING.value, OUTBOX.c.next_attempt_at <= now)
    with engine.begin() as conn:
        candidates = (
            select(OUTBOX.c.id).where(due).order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id).limit(limit).with_for_update(skip_locked=True)
        )
        if conn.dialect.name == "postgresql":
            # Locked in a statement of their own, as in triage.flow.pipeline.claim_jobs: as a
            # subquery of the UPDATE, PostgreSQL may re-run it and SKIP LOCKED then
            # picks other rows each time, claiming far more than ``limit``.
            ids = conn.execute(candidates).scalars().all()
            if not ids:
                return []
            chosen = OUTBOX.c.id.in_(ids)
        else:
            chosen = OUTBOX.c.id.in_(candidates.scalar_subquery())
        claimed = (
            conn.execute(
                update(OUTBOX)
                .where(chosen, due)  # re-checked under the write lock
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
                .returning(OUTBOX.c.id)
            )
            .scalars()
            .all()
        )
        if not claimed:
            return []
        rows = conn.execute(
            select(OUTBOX, STUDY.c.study_uid)
            .join(STUDY, STUDY.c.id == OUTBOX.c.study_pk)
            .where(OUTBOX.c.id.in_(claimed))
            .order_by(OUTBOX.c.id)
        ).all()
    return list(rows)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mark_sent(engine: Engine, item: Row, built: BuiltObject, destination: Destination, sha256: str, now: datetime) -> bool:
    """Record an acknowledged send and its audit event in one transaction; False if it was already recorded."""
    with engine.begin() as conn:
        audit.lock_chain(conn)  # the audit chain's lock first, as every appending writer takes it (PostgreSQL)
        done = conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == item.id, OUTBOX.c.status == OutboxStatus.PENDING.value)
            .values(status=OutboxStatus.SENT.value, sent_at=now, attempts=item.attempts + 1, last_error=None, next_attempt_at=now)
        ).rowcount
        if not done:
            return False
        audit.append(
            conn,
            actor=audit.SYSTEM_ACTOR,
            action=audit.Action.RESULT_SENT,
            study_uid=item.study_uid,
            at=now,
            detail={
                "kind": item.kind,
                "destination": destination.name,
                "ae_title": destination.ae_title,
                "host": destination.host,
                "port": destination.port,
                "sop_instance_uid": built.sop_instance_uid,
                "sop_class_uid": built.sop_class_uid,
                "sha256": sha256,
                "attempts": item.attempts + 1,
                "outbox_id": item.id,
            },
        )
    return True


def mark_failed(engine: Engine, settings: Settings, item: Row, reason: str, now: datetime) -> datetime:
    """Record a failed attempt; the row is due again after the back-off. Returns when."""
    attempts = item.attempts + 1
    cfg = settings.results
    when = now + timedelta(seconds=backoff_seconds(attempts, cfg.retry_min_seconds, cfg.retry_max_seconds))
    with engine.begin() as conn:
        conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == item.id, OUTBOX.c.status == OutboxStatus.PENDING.value)
            .values(attempts=attempts, last_error=reason[:_ERROR_MAX], next_attempt_at=when)
        )
    log.warning(
        "%s of study %s to %s: attempt %d failed (%s); next try at %s",
        item.kind,
        item.study_uid,
        item.destination,
        attempts,
        reason,
        when.strftime("%H:%M:%S"),
    )
    return when


class OutboxSender:
    """Sends due outbox rows to their destinations, every ``results.send_interval`` seconds.

    Parameters
    ----------
    engine, settings
        The index and ``settings.results`` (destinations, calling AE, back-off).
    clock
        Returns the current time, timezone-aware UTC (injected by tests).
    """

    def __init__(self, engine: Engine, settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        self.sent = 0  # acknowledged sends by this sender
        self.failed = 0  # failed attempts by this sender
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise OutboxError("the outbox sender is already started")
        names = ", ".join(f"{d.name} ({d.ae_title}@{d.host}:{d.port})" for d in self.settings.results.destinations)
        log.info("sending results to %s as %s", names or "no destination", self.settings.results.calling_ae)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (new rows), not at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the send in progress and stop; rows not sent stay pending in the DB."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                busy = self.run_once() > 0
            except SQLAlchemyError as exc:  # a busy or lost DB must not stop sending for good
                log.error("outbox: database error (will retry): %s", str(getattr(exc, "orig", exc)).splitlines()[0])
            except DatabaseError as exc:  # the same, met inside an audit append
                log.error("outbox: database error (will retry): %s", exc)
            except Exception:  # a bug must not stop sending for good either; its rows stay pending
                log.exception("outbox: unexpected error (will retry)")
            if not busy:
                self._wake.wait(self.settings.results.send_interval)
                self._wake.clear()

    def run_once(self) -> int:
        """One pass: claim due rows, build what is not built, send, record. Returns the rows attempted."""
        items = claim_due(self.engine, self.clock())
        if not items:
            return 0
        destinations = {d.name: d for d in self.settings.results.destinations}
        by_destination: dict[str, list[tuple[Row, BuiltObject]]] = defaultdict(list)
        for item in items:  # all of them: a row left claimed would wait out its lease
            if item.destination not in destinations:
                self._failed(item, f"destination {item.destination!r} is not in [results] destinations")
                continue
            try:
                built = build_file(self.engine, self.settings, item)
            except SQLAlchemyError:
                raise
            except Exception as exc:  # its source is missing or unusable: retried, and shown, until fixed
                log.debug("building %s %d failed", item.kind, item.id, exc_info=True)
                self._failed(item, f"cannot build: {exc}")
                continue
            by_destination[item.destination].append((item, built))
        for name, batch in by_destination.items():
            destination = destinations[name]
            paths = [(self.settings.data_dir / built.relpath, built.sop_class_uid) for _, built in batch]
            outcomes = store_files(destination, self.settings.results.calling_ae, paths)
            for (item, built), (path, _), (ok, reason) in zip(batch, paths, outcomes, strict=True):
                if ok:
                    if mark_sent(self.engine, item, built, destination, _sha256(path), self.clock()):
                        self.sent += 1
                        log.info("%s of study %s sent to %s (%s)", item.kind, item.study_uid, name, built.sop_instance_uid)
                else:
                    self._failed(item, reason)
        return len(items)

    def _failed(self, item: Row, reason: str) -> None:
        self.failed += 1
        mark_failed(self.engine, self.settings, item, reason, self.clock())
