"""The study index writer: records stored instances in Study/Series/Instance.

Indexing goes through one writer thread that commits in groups: every
association thread hands over its record and waits for the commit that
includes it (the C-STORE success is sent only after that). One writer is what
SQLite wants, and grouping many instances into one fsynced transaction is what
lets the index keep up with the network. Counters are updated with SQL
arithmetic (``n = n + 1``) so that several processes can share one
PostgreSQL.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from dicom_io.ingest import IndexRecord
from dicom_io.store import fsync_dir
from triage.errors import DatabaseError
from triage.store import audit
from triage.store.conflicts import identity_differences
from triage.store.tables import INSTANCE, INSTANCE_CONFLICT, SERIES, STUDY
from triage.vocabulary import ReceiveStatus

log = logging.getLogger(__name__)

_STUDY_FIELDS = (
    "patient_id",
    "patient_name",
    "patient_sex",
    "patient_birth_date",
    "patient_age",
    "accession_number",
    "study_id",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
    "institution_name",
    "order_priority",
    "patient_location",
    "requesting_service",
)
_SERIES_FIELDS = ("series_number", "modality", "series_description", "body_part", "manufacturer", "manufacturer_model", "station_name")


def _insert_ignore(conn: Connection, table, values: dict, key: str):
    """INSERT ... ON CONFLICT (key) DO NOTHING, for SQLite and PostgreSQL alike."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
    return conn.execute(stmt)


# Statements of the hot path, built once so SQLAlchemy compiles each once
# (statements built per batch, with a varying number of rows, defeat its cache).
_KNOWN_UIDS = select(INSTANCE.c.sop_instance_uid).where(INSTANCE.c.sop_instance_uid.in_(bindparam("uids", expanding=True)))
_SERIES_ARRIVALS = (
    update(SERIES)
    .where(SERIES.c.id == bindparam("pk"))
    .values(
        num_instances=SERIES.c.num_instances + bindparam("n"),
        last_received=bindparam("last"),
        # A late instance reopens a completed series: a new generation, so its
        # next completion gets a job of its own.
        generation=case((SERIES.c.status == ReceiveStatus.COMPLETE.value, SERIES.c.generation + 1), else_=SERIES.c.generation),
        completed_at=None,
        status=ReceiveStatus.RECEIVING.value,
    )
)
_STUDY_ARRIVALS = (
    update(STUDY)
    .where(STUDY.c.id == bindparam("pk"))
    .values(num_instances=STUDY.c.num_instances + bindparam("n"), last_received=bindparam("last"), status=ReceiveStatus.RECEIVING.value)
)
_INSERT_INSTANCES = {
    name: dialect.insert(INSTANCE)
    .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    .returning(INSTANCE.c.sop_instance_uid, sort_by_parameter_order=True)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


# The indexed version of a SOP Instance UID with its study's and series' identifying
# fields (triage.store.conflicts.IDENTITY_FIELDS): what a conflicting payload is compared with.
_KEPT_VERSION = (
    select(
        INSTANCE.c.id.label("instance_pk"),
        INSTANCE.c.sha256,
        SERIES.c.series_uid,
        STUDY.c.id.label("study_pk"),
        STUDY.c.study_uid,
        STUDY.c.patient_id,
        STUDY.c.patient_name,
        STUDY.c.patient_birth_date,
        STUDY.c.patient_sex,
        STUDY.c.accession_number,
    )
    .join(SERIES, SERIES.c.id == INSTANCE.c.series_pk)
    .join(STUDY, STUDY.c.id == SERIES.c.study_pk)
    .where(INSTANCE.c.sop_instance_uid == bindparam("sop"))
)


# The same three statements as raw SQL for SQLite: on the one writer's hot path,
# SQLAlchemy's per-statement overhead was most of a group commit's time.
# Times are bound as SQLAlchemy stores them on SQLite (UTC, no offset).
_SQLITE_INSERT_INSTANCE = (
    "INSERT INTO instance (sop_instance_uid, series_pk, sop_class_uid, instance_number, transfer_syntax, path,"
    " size_bytes, sha256, received_at, calling_ae, peer_address, conflicts) VALUES (:sop_instance_uid, :series_pk,"
    " :sop_class_uid, :instance_number, :transfer_syntax, :path, :size_bytes, :sha256, :received_at, :calling_ae,"
    " :peer_address, :conflicts) ON CONFLICT (sop_instance_uid) DO NOTHING"
)
_SQLITE_SERIES_ARRIVALS = (
    "UPDATE series SET num_instances = num_instances + :n, last_received = :last,"
    " generation = CASE WHEN status = 'complete' THEN generation + 1 ELSE generation END,"
    " completed_at = NULL, status = 'receiving' WHERE id = :pk"
)
_SQLITE_STUDY_ARRIVALS = "UPDATE study SET num_instances = num_instances + :n, last_received = :last, status = 'receiving' WHERE id = :pk"


def _sqlite(conn: Connection) -> sqlite3.Connection | None:
    """The raw sqlite3 connection under ``conn`` (same transaction), or None on other databases."""
    if conn.dialect.name != "sqlite":
        return None
    return conn.connection.driver_connection


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _known_uids(conn: Connection, uids: list[str]) -> set[str]:
    sqlite_conn = _sqlite(conn)
    if sqlite_conn is None:
        return set(conn.execute(_KNOWN_UIDS, {"uids": uids}).scalars())
    marks = ",".join("?" * len(uids))
    sql = f"SELECT sop_instance_uid FROM instance WHERE sop_instance_uid IN ({marks})"
    return {row[0] for row in sqlite_conn.execute(sql, uids)}


def _insert_instances_stmt(conn: Connection):
    return _INSERT_INSTANCES["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]


def _insert_or_get(conn: Connection, table, key: str, uid: str, values: dict) -> tuple[int, bool]:
    """Primary key of the row with ``key == uid``, inserting it if missing; and whether it was."""
    if conn.dialect.name == "postgresql":
        # rowcount says nothing here (-1 with psycopg and the RETURNING SQLAlchemy adds);
        # the returned key says whether the row was inserted (on a conflict, e.g. with
        # another listener's row, none is returned).
        stmt = postgresql.insert(table).values(**{key: uid, **values}).on_conflict_do_nothing(index_elements=[key])
        pk = conn.execute(stmt.returning(table.c.id)).scalar()
        if pk is not None:
            return pk, True
        return conn.execute(select(table.c.id).where(table.c[key] == uid)).scalar_one(), False
    result = _insert_ignore(conn, table, {key: uid, **values}, key)
    if result.rowcount:
        return result.inserted_primary_key[0], True
    return conn.execute(select(table.c.id).where(table.c[key] == uid)).scalar_one(), False


def _arrival(rec: IndexRecord) -> dict:
    """Columns a new study or series row starts with, from its first instance."""
    return dict(
        num_instances=0,
        first_received=rec.received_at,
        last_received=rec.received_at,
        calling_ae=rec.calling_ae,
        peer_address=rec.peer_address,
        status=ReceiveStatus.RECEIVING.value,
    )


@dataclass
class _Pending:
    record: IndexRecord
    future: Future[bool]


class SqlIndex:
    """:class:`dicom_io.ingest.Index` on an SQLAlchemy engine.

    ``record`` is synchronous until :meth:`start` is called; after that it is
    served by the group-commit writer thread.
    """

    def __init__(self, engine: Engine, *, data_dir: Path | None = None, max_batch: int = 256) -> None:
        self.engine = engine
        # Folder of the stored files: the folders of a batch's files are fsynced
        # once each before its commit (a folder per series, so once per batch
        # instead of once per instance).
        self.data_dir = data_dir
        self.max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        # UID -> primary key; cleared on rollback since rolled-back keys are void.
        self._study_pk: dict[str, int] = {}
        self._series_pk: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Finish every queued record, then stop the writer thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    # -- Index protocol ----------------------------------------------------
    def find(self, sop_instance_uid: str) -> tuple[str, str] | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(INSTANCE.c.sha256, INSTANCE.c.path).where(INSTANCE.c.sop_instance_uid == sop_instance_uid)
                ).first()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"index lookup failed: {exc.__class__.__name__}: {_reason(exc)}") from None
        return (row[0], row[1]) if row else None

    def record(self, record: IndexRecord) -> bool:
        return self.submit(record).result()

    def submit(self, record: IndexRecord) -> Future[bool]:
        """Queue ``record`` for the next group commit; the future resolves after it."""
        future: Future[bool] = Future()
        if self._thread is None:
            try:
                future.set_result(self._commit_batch([record])[0])
            except DatabaseError as exc:
                future.set_exception(exc)
        else:
            self._queue.put(_Pending(record, future))
        return future

    def record_conflict(self, record: IndexRecord, kept_relpath: str) -> None:
        """Record a payload set aside because its SOP Instance UID is indexed with other bytes.

        In one transaction: an ``instance_conflict`` row, the instance's and its
        study's conflict counts, and an ``instance_conflict`` audit event naming
        the identifying fields that differ. The same bytes set aside again are
        the same conflict: nothing more is recorded (idempotent, like a repeated
        instance).

        Raises
        ------
        DatabaseError
            If the index cannot record it (the ingest path answers a failure
            status, and the sender's retry records it then).
        """
        sop = record.header.sop_instance_uid
        try:
            with self.engine.begin() as conn:
                audit.lock_chain(conn)
                kept = conn.execute(_KEPT_VERSION, {"sop": sop}).first()
                if kept is None:  # cannot happen on the ingest path: it found the indexed version first
                    raise DatabaseError(f"conflict on {sop}: no indexed instance with that SOP Instance UID")
                differences = identity_differences(dict(kept._mapping), record.header)
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                # RETURNING says whether the row is new on both databases (rowcount does
                # not on PostgreSQL once SQLAlchemy adds its own RETURNING).
                inserted = conn.execute(
                    dialect.insert(INSTANCE_CONFLICT)
                    .values(
                        study_pk=kept.study_pk,
                        sop_instance_uid=sop,
                        sha256=record.sha256,
                        kept_sha256=kept.sha256,
                        path=kept_relpath,
                        received_at=record.received_at,
                        calling_ae=record.calling_ae,
                        peer_address=record.peer_address,
                        differences=audit.canonical_json(differences),
                    )
                    .on_conflict_do_nothing(index_elements=["sop_instance_uid", "sha256"])
                    .returning(INSTANCE_CONFLICT.c.id)
                ).first()
                if inserted is None:
                    log.info("conflict on %s: payload %s was set aside before; not recorded again", sop, record.sha256[:12])
                    return
                conn.execute(update(INSTANCE).where(INSTANCE.c.id == kept.instance_pk).values(conflicts=INSTANCE.c.conflicts + 1))
                conn.execute(update(STUDY).where(STUDY.c.id == kept.study_pk).values(conflicts=STUDY.c.conflicts + 1))
                audit.append(
                    conn,
                    actor=audit.LISTENER_ACTOR,
                    action=audit.Action.INSTANCE_CONFLICT,
                    study_uid=kept.study_uid,
                    at=record.received_at,
                    detail={
                        "sop_instance_uid": sop,
                        "series_uid": kept.series_uid,
                        "kept_sha256": kept.sha256,
                        "sha256": record.sha256,
                        "kept_aside": kept_relpath,
                        "calling_ae": record.calling_ae,
                        "peer": record.peer_address,
                        "differences": differences,
                    },
                )
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot record the conflict on {sop}: {exc.__class__.__name__}: {_reason(exc)}") from None

    # -- writer ------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[_Pending] = []
            if item is None:
                stop = True
            else:
                batch.append(item)
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._serve(batch)

    def _serve(self, batch: list[_Pending]) -> None:
        try:
            results = self._commit_batch([p.record for p in batch])
        except Exception as exc:  # noqa: BLE001  a bug must not kill the writer: every waiter would hang
            if not isinstance(exc, DatabaseError):
                log.exception("index write failed")
                exc = DatabaseError(f"index write failed: {exc.__class__.__name__}: {exc}")
                self._study_pk.clear()
                self._series_pk.clear()
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:  # one bad record must not fail the others: retry them one by one
                for p in batch:
                    self._serve([p])
            return
        for p, new in zip(batch, results, strict=True):
            p.future.set_result(new)

    def _commit_batch(self, records: list[IndexRecord]) -> list[bool]:
        """Index ``records`` in one transaction: one multi-row insert, then one
        counter update per series and per study touched (not per instance)."""
        if self.data_dir is not None:
            try:
                for folder in {(self.data_dir / r.relpath).parent for r in records}:
                    fsync_dir(folder)
            except OSError as exc:
                raise DatabaseError(f"cannot sync the folder of a stored file: {exc}") from None
        try:
            with self.engine.begin() as conn:
                # The batch appends an audit event: on PostgreSQL take the chain's
                # lock before any row's, as every appending writer does (audit.lock_chain).
                audit.lock_chain(conn)
                # Records of UIDs already indexed (or repeated in this batch) create
                # nothing: not even an empty study or series row.
                uids = [r.header.sop_instance_uid for r in records]
                known = _known_uids(conn, uids)
                fresh: dict[str, IndexRecord] = {}
                for r in records:
                    if r.header.sop_instance_uid not in known:
                        fresh.setdefault(r.header.sop_instance_uid, r)
                placed = [(r, self._ensure_series(conn, r, self._ensure_study(conn, r))) for r in fresh.values()]
                inserted = self._insert_instances(conn, placed) if placed else set()
                self._count_arrivals(conn, [(r, pk) for r, pk in placed if r.header.sop_instance_uid in inserted])
                return [fresh.get(r.header.sop_instance_uid) is r and r.header.sop_instance_uid in inserted for r in records]
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self._study_pk.clear()
            self._series_pk.clear()
            raise DatabaseError(f"index write failed: {exc.__class__.__name__}: {_reason(exc)}") from None

    def _insert_instances(self, conn: Connection, placed: list[tuple[IndexRecord, int]]) -> set[str]:
        """Insert the instance rows; returns the SOP Instance UIDs that were new."""
        rows: list[dict[str, Any]] = [
            dict(
                sop_instance_uid=r.header.sop_instance_uid,
                series_pk=series_pk,
                sop_class_uid=r.header.sop_class_uid,
                instance_number=r.header.instance_number,
                transfer_syntax=r.header.transfer_syntax,
                path=r.relpath,
                size_bytes=r.size_bytes,
                sha256=r.sha256,
                received_at=r.received_at,
                calling_ae=r.calling_ae,
                peer_address=r.peer_address,
                conflicts=0,
            )
            for r, series_pk in placed
        ]
        sqlite_conn = _sqlite(conn)
        if sqlite_conn is None:
            return set(conn.execute(_insert_instances_stmt(conn), rows).scalars())
        new: set[str] = set()
        for row in rows:
            row["received_at"] = _sqlite_time(row["received_at"])
            if sqlite_conn.execute(_SQLITE_INSERT_INSTANCE, row).rowcount:
                new.add(row["sop_instance_uid"])
        return new

    def _count_arrivals(self, conn: Connection, new: list[tuple[IndexRecord, int]]) -> None:
        """Bump instance counts and arrival times, one UPDATE per series and per study."""
        per_series: dict[int, list[IndexRecord]] = {}
        for r, series_pk in new:
            per_series.setdefault(series_pk, []).append(r)
        if not per_series:
            return
        per_study: dict[int, list[IndexRecord]] = {}
        for recs in per_series.values():
            per_study.setdefault(self._study_pk[recs[0].header.study_uid], []).extend(recs)
        series_rows: list[dict[str, Any]] = [
            {"pk": pk, "n": len(recs), "last": max(r.received_at for r in recs)} for pk, recs in per_series.items()
        ]
        study_rows: list[dict[str, Any]] = [
            {"pk": pk, "n": len(recs), "last": max(r.received_at for r in recs)} for pk, recs in per_study.items()
        ]
        sqlite_conn = _sqlite(conn)
        if sqlite_conn is None:
            conn.execute(_SERIES_ARRIVALS, series_rows)
            conn.execute(_STUDY_ARRIVALS, study_rows)
        else:
            for rows in (series_rows, study_rows):
                for row in rows:
                    row["last"] = _sqlite_time(row["last"])
            sqlite_conn.executemany(_SQLITE_SERIES_ARRIVALS, series_rows)
            sqlite_conn.executemany(_SQLITE_STUDY_ARRIVALS, study_rows)
        _audit_arrivals(conn, per_series.values())

    def _ensure_study(self, conn: Connection, rec: IndexRecord) -> int:
        h = rec.header
        if h.study_uid not in self._study_pk:
            values = {f: getattr(h, f) for f in _STUDY_FIELDS}
            values.update(modalities="", num_series=0)
            pk, _ = _insert_or_get(conn, STUDY, "study_uid", h.study_uid, _arrival(rec) | values)
            self._study_pk[h.study_uid] = pk
        return self._study_pk[h.study_uid]

    def _ensure_series(self, conn: Connection, rec: IndexRecord, study_pk: int) -> int:
        h = rec.header
        if h.series_uid not in self._series_pk:
            values = {f: getattr(h, f) for f in _SERIES_FIELDS}
            values.update(study_pk=study_pk, generation=0)
            pk, created = _insert_or_get(conn, SERIES, "series_uid", h.series_uid, _arrival(rec) | values)
            if created:
                self._on_new_series(conn, rec, study_pk)
            self._series_pk[h.series_uid] = pk
        return self._series_pk[h.series_uid]

    def _on_new_series(self, conn: Connection, rec: IndexRecord, study_pk: int) -> None:
        """Count the series on its study, add its modality, and fill study
        attributes the first instance lacked (series may differ in what they carry)."""
        h = rec.header
        current = conn.execute(select(STUDY.c.modalities).where(STUDY.c.id == study_pk)).scalar_one()
        modalities = [m for m in (current or "").split("\\") if m]
        if h.modality and h.modality not in modalities:
            modalities.append(h.modality)
        fill = {f: func.coalesce(STUDY.c[f], getattr(h, f)) for f in _STUDY_FIELDS if getattr(h, f) is not None}
        conn.execute(
            update(STUDY)
            .where(STUDY.c.id == study_pk)
            .values(num_series=STUDY.c.num_series + 1, modalities="\\".join(modalities)[:64], **fill)
        )


def _audit_arrivals(conn: Connection, per_series: Iterable[list[IndexRecord]]) -> None:
    """One audit event per series and sender in this commit (not one per instance: a
    500-slice CT is one event per group commit), naming every instance and its SHA-256."""
    for records in per_series:
        by_sender: dict[tuple[str | None, str | None], list[IndexRecord]] = {}
        for r in records:
            by_sender.setdefault((r.calling_ae, r.peer_address), []).append(r)
        for (calling_ae, peer), recs in by_sender.items():
            audit.append(
                conn,
                actor=audit.LISTENER_ACTOR,
                action=audit.Action.INSTANCES_RECEIVED,
                study_uid=recs[0].header.study_uid,
                at=max(r.received_at for r in recs),
                detail={
                    "series_uid": recs[0].header.series_uid,
                    "calling_ae": calling_ae,
                    "peer": peer,
                    "found_by_recovery": calling_ae is None,
                    "instances": [{"sop_instance_uid": r.header.sop_instance_uid, "sha256": r.sha256} for r in recs],
                },
            )


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]
