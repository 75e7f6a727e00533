"""From received bytes to a durable, indexed instance, and the DICOM status to answer.

The C-STORE handler and crash recovery both go through :class:`Ingestor`, so
the rules (validate, write, index, then acknowledge) live in one place.
Statuses follow PS3.4 Annex B.2.3 (Storage Service Class).

A success status means readable: the dataset is walked to its end in its
transfer syntax (:func:`dicom_io.dataset_check.check_dataset`, no pixel
decoding) and its SOP Class and Instance UIDs must be the request's; anything
else is answered with a failure status and nothing is stored or indexed.
"""

from __future__ import annotations

import enum
import logging
import mmap
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from dicom_io.dataset_check import DatasetError, DatasetFacts, check_dataset
from dicom_io.errors import IndexFailedError, IndexUnavailableError, InvalidUIDError, StorageError
from dicom_io.headers import HeaderError, InstanceHeader, read_header
from dicom_io.store import InstanceStore, Spool, sha256_hex

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
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # Refused: the request's SOP class is not the context's (PS3.7 C.4.2.1.4)
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

    def record_conflict(self, record: IndexRecord, kept_relpath: str) -> None:
        """Durably record a payload that reused an indexed UID with other bytes, kept aside at ``kept_relpath``.

        ``record`` is the set-aside version (its header, sha256, sender, time);
        recording the same sha256 again for the UID records nothing more.
        Raises :class:`~dicom_io.errors.IndexFailedError` when it cannot record it."""


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


def part10_dataset(head: bytes | memoryview) -> tuple[int, str]:
    """Where the dataset of a Part 10 file starts, and its transfer syntax (PS3.10 7.1).

    ``head`` is the file, or at least its preamble and file meta. The file meta is
    explicit VR little endian, group 0002, right after the 128-byte preamble and "DICM".

    Raises
    ------
    DatasetError
        If it is not a Part 10 file with a Transfer Syntax UID.
    """
    view = memoryview(head)
    if bytes(view[128:132]) != b"DICM":
        raise DatasetError("not a DICOM Part 10 file (no DICM prefix)")
    pos, ts = 132, ""
    while pos + 8 <= len(view):
        group, element = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if pos + 12 > len(view):
                raise DatasetError(f"file meta element (0002,{element:04X}) cut short")
            length, start = struct.unpack_from("<L", view, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", view, pos + 6)[0], pos + 8
        if start + length > len(view):
            raise DatasetError(f"file meta element (0002,{element:04X}) runs past the end")
        if element == 0x0010:
            ts = bytes(view[start : start + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        pos = start + length
    if not ts:
        raise DatasetError("file meta without a Transfer Syntax UID")
    return pos, ts


def check_file(path: Path, dataset_offset: int | None = None, transfer_syntax: str = "") -> DatasetFacts:
    """Walk a Part 10 file's dataset to its end (see :func:`check_dataset`), without reading it into memory.

    ``dataset_offset`` and ``transfer_syntax``: where the dataset starts and how it is
    encoded, when known; else read from the file meta.

    Raises
    ------
    DatasetError
        If it does not parse to the end, or cannot be read.
    """
    try:
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
        raise DatasetError(f"cannot read {path.name}: {exc}") from None
    error = ""
    try:
        if dataset_offset is None:
            dataset_offset, transfer_syntax = part10_dataset(memoryview(mapped)[:65536])
        facts = check_dataset(memoryview(mapped)[dataset_offset:], transfer_syntax)
    except DatasetError as exc:
        error = str(exc)  # not the exception: its traceback would keep views of the map alive
    finally:
        try:
            mapped.close()
        except BufferError:  # a view still referenced: the map closes when it is collected
            pass
    if error:
        raise DatasetError(error)
    return facts


class Ingestor:
    """Validate, write durably, index; report the status to answer.

    Never raises for bad input or I/O trouble: every failure is an
    :class:`IngestOutcome` with a failure status and nothing left behind.

    Parameters
    ----------
    max_instance_bytes
        Instances larger than this are refused (0xA700); 0 means no limit.
    on_answer
        Told the outcome of every C-STORE the listener answers, refusals decided before
        the dataset reached the ingestor included (e.g. to count them for monitoring);
        called on the association's thread, so it must be quick.
    """

    def __init__(
        self,
        store: InstanceStore,
        index: Index,
        clock: Callable[[], datetime] = utc_now,
        *,
        max_instance_bytes: int = 0,
        on_answer: Callable[[IngestOutcome], None] | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.clock = clock  # when an instance counts as received (injected: tests and the server set it)
        self.max_instance_bytes = max_instance_bytes
        self.on_answer = on_answer
        self._inflight = 0
        self._idle = threading.Condition()

    def answered(self, outcome: IngestOutcome) -> None:
        """The listener answered a C-STORE with ``outcome``: tell ``on_answer``; never raises."""
        if self.on_answer is None:
            return
        try:
            self.on_answer(outcome)
        except Exception:  # an observer's bug must not cost the peer its answer
            log.exception("on_answer failed")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no ingest is in progress (for a clean shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def open_spool(self) -> Spool:
        """A spool for an instance about to arrive (see :meth:`ingest_spool`); raises StorageError."""
        return self.store.open_spool(self.max_instance_bytes)

    def ingest(
        self,
        payload: bytes,
        *,
        calling_ae: str | None,
        peer_address: str | None,
        requested_sop_uid: str | None = None,
        requested_sop_class: str | None = None,
    ) -> IngestOutcome:
        """Store one Part 10 encoded instance (preamble, file meta, dataset) given whole.

        See :meth:`ingest_spool` for the parameters.
        """
        try:
            offset, transfer_syntax = part10_dataset(payload)
        except DatasetError as exc:
            return IngestOutcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        try:
            spool = self.store.spool_bytes(payload, self.max_instance_bytes)
        except StorageError as exc:  # out of space and too large included
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc))
        spool.dataset_offset = offset
        return self.ingest_spool(
            spool,
            transfer_syntax,
            calling_ae=calling_ae,
            peer_address=peer_address,
            requested_sop_uid=requested_sop_uid,
            requested_sop_class=requested_sop_class,
        )

    def ingest_spool(
        self,
        spool: Spool,
        transfer_syntax: str,
        *,
        calling_ae: str | None,
        peer_address: str | None,
        requested_sop_uid: str | None = None,
        requested_sop_class: str | None = None,
    ) -> IngestOutcome:
        """Store one received instance, written whole to ``spool`` (file meta, then the dataset at ``spool.dataset_offset``).

        The spool is consumed: linked into the store, kept aside, or removed.

        Parameters
        ----------
        transfer_syntax
            The transfer syntax the dataset is encoded in (the negotiated one).
        requested_sop_uid, requested_sop_class
            The Affected SOP Instance and Class UIDs of the C-STORE request; the
            dataset must carry the same (PS3.4 B.2.3: 0xA900 otherwise).
        """
        with self._idle:
            self._inflight += 1
        try:
            return self._ingest(spool, transfer_syntax, calling_ae, peer_address, requested_sop_uid, requested_sop_class)
        except Exception as exc:  # a bug must not take the listener down
            log.exception("unexpected error while storing an instance")
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, f"internal error: {exc}")
        finally:
            spool.discard()  # no-op once linked into place
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _readable(self, spool: Spool, transfer_syntax: str) -> DatasetFacts | IngestOutcome:
        """The dataset walked to its end, or the failure to answer."""
        spool.close()
        if spool.size <= spool.dataset_offset:
            return IngestOutcome(StoreStatus.CANNOT_UNDERSTAND, "empty dataset")
        try:
            return check_file(spool.path, spool.dataset_offset, transfer_syntax)
        except DatasetError as exc:
            return IngestOutcome(StoreStatus.CANNOT_UNDERSTAND, f"dataset does not parse: {exc}")

    def _ingest(
        self,
        spool: Spool,
        transfer_syntax: str,
        calling_ae: str | None,
        peer: str | None,
        requested_sop_uid: str | None,
        requested_sop_class: str | None,
    ) -> IngestOutcome:
        facts = self._readable(spool, transfer_syntax)
        if isinstance(facts, IngestOutcome):
            return facts
        # PS3.4 B.2.3: the dataset must be of the class and instance the request names.
        if not facts.sop_class_uid:
            return IngestOutcome(StoreStatus.DATASET_MISMATCH, "dataset has no SOP Class UID", facts.sop_instance_uid)
        if requested_sop_class is not None and facts.sop_class_uid != requested_sop_class:
            return IngestOutcome(
                StoreStatus.DATASET_MISMATCH,
                f"dataset SOP Class UID {facts.sop_class_uid[:64]!r} does not match the request's {requested_sop_class[:64]!r}",
                facts.sop_instance_uid,
            )
        try:
            header = read_header(spool.path)
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
        record = IndexRecord(header, relpath, spool.size, spool.sha256, calling_ae, peer, self.clock())
        try:
            result = self.store.adopt(spool, relpath, sync_dir=False)  # the index syncs the folder
        except StorageError as exc:  # OutOfSpaceError included
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc), sop)
        try:
            if not result.created:
                # A file is there already: this instance again, other bytes under its
                # UID, or a crash leftover not yet indexed.
                existing = self.index.find(sop)
                if existing is None:
                    return self._adopt_unindexed(record, spool)
                return self._repeat(record, spool, existing[0])
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
                existing = self.index.find(sop)
                if existing is not None and existing[1] == relpath:
                    return IngestOutcome(StoreStatus.SUCCESS, "stored", sop)  # indexed meanwhile (recovery, shared storage)
                # The UID is indexed under another study or series: keep that one,
                # and set these bytes aside if they differ from it.
                aside = self.store.spool_bytes(self.store.read(relpath))
                self.store.remove(relpath)
                try:
                    if existing is None:
                        return IngestOutcome(StoreStatus.INDEX_UNAVAILABLE, "index changed while storing", sop)
                    return self._repeat(record, aside, existing[0])
                finally:
                    aside.discard()
        except StorageError as exc:
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc), sop)
        except IndexFailedError as exc:  # the index failed
            return IngestOutcome(StoreStatus.INDEX_UNAVAILABLE, str(exc), sop)
        return IngestOutcome(StoreStatus.SUCCESS, "stored", sop)

    def _repeat(self, record: IndexRecord, spool: Spool, stored_sha: str) -> IngestOutcome:
        sop = record.header.sop_instance_uid
        if stored_sha == record.sha256:
            return IngestOutcome(StoreStatus.SUCCESS, "duplicate of a stored instance", sop, duplicate=True)
        return self._conflict(record, spool)

    def _conflict(self, record: IndexRecord, spool: Spool) -> IngestOutcome:
        sop = record.header.sop_instance_uid
        kept = self.store.keep_conflict(sop, record.sha256, spool)
        self.index.record_conflict(record, kept)  # before the success status: the conflict is on record
        log.warning(
            "conflict: SOP Instance UID %s received again from %s with other content (sha256 %s); "
            "first version kept in the index, this one set aside at %s",
            sop,
            record.calling_ae,
            record.sha256[:12],
            kept,
        )
        return IngestOutcome(StoreStatus.SUCCESS, "conflicting payload set aside", sop, conflict=True)

    def _adopt_unindexed(self, record: IndexRecord, spool: Spool) -> IngestOutcome:
        on_disk = self.store.read(record.relpath)
        disk_sha = sha256_hex(on_disk)
        disk_record = record
        if disk_sha != record.sha256:
            disk_record = IndexRecord(read_header(on_disk), record.relpath, len(on_disk), disk_sha, None, None, self.clock())
        self.index.record(disk_record)
        if disk_sha != record.sha256:
            return self._conflict(record, spool)
        return IngestOutcome(StoreStatus.SUCCESS, "stored", record.header.sop_instance_uid, duplicate=True)
