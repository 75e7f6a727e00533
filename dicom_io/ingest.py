"""From received bytes to a durable, indexed instance, and the DICOM status to answer.

The C-STORE handler and crash recovery both go through :class:`Ingestor`, so
the rules (validate, write, index, then acknowledge) live in one place.
Statuses follow PS3.4 Annex B.2.3 (Storage Service Class).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from dicom_io.errors import IndexFailedError, IndexUnavailableError, InvalidUIDError, StorageError
from dicom_io.headers import HeaderError, InstanceHeader, read_header
from dicom_io.store import InstanceStore, sha256_hex

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The default clock: aware UTC (the index stores times so)."""
    return datetime.now(UTC)


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses we send (PS3.4 B.2.3, PS3.7 C.4.2.1.4)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (disk full, below reserve, I/O error)
    INDEX_UNAVAILABLE = 0xA701  # Refused: out of resources (the study index could not record it)
    DATASET_MISMATCH = 0xA900  # Error: data set does not match SOP class / request UIDs
    CANNOT_UNDERSTAND = 0xC210  # Error: cannot understand (unparseable dataset)
    INVALID_UID = 0xC211  # Error: cannot understand (a UID that is not a valid DICOM UID)


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """One stored instance, as handed to the index."""

    header: InstanceHeader
    relpath: str
    size_bytes: int
    sha256: str
    calling_ae: str | None
    peer_address: str | None
    received_at: datetime = field(default_factory=utc_now)


class Index(Protocol):
    """What the ingest path needs of the study index (``triage.store.index`` implements it)."""

    def find(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """``(sha256, relpath)`` of the indexed instance, or None."""

    def record(self, record: IndexRecord) -> bool:
        """Durably index ``record``; True if new, False if the UID was already there.

        Before its commit the index fsyncs the folder of the record's file, so
        that the file's directory entry is as durable as the index row.

        Raises :class:`~dicom_io.errors.IndexFailedError` when it refuses or fails, and
        :class:`~dicom_io.errors.IndexUnavailableError` when whether it committed is unknown."""

    def record_conflict(self, sop_instance_uid: str) -> None:
        """Count a payload that reused this UID with other bytes."""


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    status: StoreStatus
    detail: str = ""
    sop_instance_uid: str | None = None
    duplicate: bool = False  # same bytes already stored: acknowledged, not stored again
    conflict: bool = False  # other bytes already stored under this UID: first kept

    @property
    def ok(self) -> bool:
        return self.status == StoreStatus.SUCCESS


class Ingestor:
    """Validate, write durably, index; report the status to answer.

    Never raises for bad input or I/O trouble: every failure is an
    :class:`IngestOutcome` with a failure status and nothing left behind.
    """

    def __init__(self, store: InstanceStore, index: Index, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.index = index
        self.clock = clock  # when an instance counts as received (injected: tests and the server set it)
        self._inflight = 0
        self._idle = threading.Condition()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no ingest is in progress (for a clean shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def ingest(
        self, payload: bytes, *, calling_ae: str | None, peer_address: str | None, requested_sop_uid: str | None = None
    ) -> IngestOutcome:
        """Store one Part 10 encoded instance (preamble, file meta, dataset).

        Parameters
        ----------
        payload
            The bytes to keep, exactly as they will be written.
        requested_sop_uid
            The Affected SOP Instance UID of the C-STORE request; the dataset
            must carry the same UID.
        """
        with self._idle:
            self._inflight += 1
        try:
            return self._ingest(payload, calling_ae, peer_address, requested_sop_uid)
        except Exception as exc:  # a bug must not take the listener down
            log.exception("unexpected error while storing an instance")
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, f"internal error: {exc}")
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _ingest(self, payload: bytes, calling_ae: str | None, peer: str | None, requested_sop_uid: str | None) -> IngestOutcome:
        try:
            header = read_header(payload)
        except HeaderError as exc:
            return IngestOutcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        sop = header.sop_instance_uid
        if requested_sop_uid is not None and sop != requested_sop_uid:
            return IngestOutcome(
                StoreStatus.DATASET_MISMATCH,
                f"dataset SOP Instance UID {sop[:64]!r} does not match the request's {requested_sop_uid[:64]!r}",
                sop,
            )
        try:
            relpath = self.store.relpath_for(header.study_uid, header.series_uid, sop)
        except InvalidUIDError as exc:
            return IngestOutcome(StoreStatus.INVALID_UID, str(exc))
        sha = sha256_hex(payload)
        record = IndexRecord(header, relpath, len(payload), sha, calling_ae, peer, self.clock())
        try:
            result = self.store.write(relpath, payload, sync_dir=False)  # the index syncs the folder
        except StorageError as exc:  # OutOfSpaceError included
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc), sop)
        try:
            if not result.created:
                # A file is there already: this instance again, other bytes under its
                # UID, or a crash leftover not yet indexed.
                existing = self.index.find(sop)
                if existing is None:
                    return self._adopt_unindexed(record, payload)
                return self._repeat(record, payload, existing[0])
            try:
                new = self.index.record(record)
            except IndexUnavailableError:
                # The record may have been committed before the index went away:
                # keep the (durable) file; recovery indexes it if it was not, and
                # the sender, told of the failure, resends a duplicate.
                raise
            except IndexFailedError:
                self.store.remove(relpath)  # the index refused it: leave nothing behind
                raise
            if not new:
                # The UID is indexed under another study or series: keep that one.
                self.store.remove(relpath)
                existing = self.index.find(sop)
                if existing is None:
                    return IngestOutcome(StoreStatus.INDEX_UNAVAILABLE, "index changed while storing", sop)
                return self._repeat(record, payload, existing[0])
        except StorageError as exc:
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc), sop)
        except IndexFailedError as exc:  # the index failed
            return IngestOutcome(StoreStatus.INDEX_UNAVAILABLE, str(exc), sop)
        return IngestOutcome(StoreStatus.SUCCESS, "stored", sop)

    def _repeat(self, record: IndexRecord, payload: bytes, stored_sha: str) -> IngestOutcome:
        sop = record.header.sop_instance_uid
        if stored_sha == record.sha256:
            return IngestOutcome(StoreStatus.SUCCESS, "duplicate of a stored instance", sop, duplicate=True)
        return self._conflict(record, payload)

    def _conflict(self, record: IndexRecord, payload: bytes) -> IngestOutcome:
        sop = record.header.sop_instance_uid
        kept = self.store.keep_conflict(sop, record.sha256, payload)
        self.index.record_conflict(sop)
        log.warning(
            "conflict: SOP Instance UID %s received again from %s with other content (sha256 %s); "
            "first version kept in the index, this one set aside at %s",
            sop,
            record.calling_ae,
            record.sha256[:12],
            kept,
        )
        return IngestOutcome(StoreStatus.SUCCESS, "conflicting payload set aside", sop, conflict=True)

    def _adopt_unindexed(self, record: IndexRecord, payload: bytes) -> IngestOutcome:
        on_disk = self.store.read(record.relpath)
        disk_sha = sha256_hex(on_disk)
        disk_record = record
        if disk_sha != record.sha256:
            disk_record = IndexRecord(read_header(on_disk), record.relpath, len(on_disk), disk_sha, None, None, self.clock())
        self.index.record(disk_record)
        if disk_sha != record.sha256:
            return self._conflict(record, payload)
        return IngestOutcome(StoreStatus.SUCCESS, "stored", record.header.sop_instance_uid, duplicate=True)
