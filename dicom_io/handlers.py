"""pynetdicom event handlers for the listener.

Plain functions bound with ``(evt.EVT_*, handler, [deps])``. They never raise:
every failure becomes a DICOM status and a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pynetdicom import events

from dicom_io.ingest import Ingestor, StoreStatus

log = logging.getLogger(__name__)


@dataclass
class AssociationStats:
    calling_ae: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0


class AssociationLog:
    """Counts what each association did, for its one log line when it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[int, AssociationStats] = {}

    def open(self, assoc) -> AssociationStats:  # type: ignore[no-untyped-def]
        stats = AssociationStats(_calling_ae(assoc), _peer(assoc))
        with self._lock:
            self._stats[id(assoc)] = stats
        return stats

    def get(self, assoc) -> AssociationStats:  # type: ignore[no-untyped-def]
        with self._lock:
            stats = self._stats.get(id(assoc))
        return stats or self.open(assoc)

    def close(self, assoc, how: str) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            stats = self._stats.pop(id(assoc), None)
        if stats is None:
            return
        log.info(
            "association from %s@%s %s after %.1f s: %d stored, %d duplicate, %d failed",
            stats.calling_ae, stats.peer, how, time.monotonic() - stats.started,
            stats.stored, stats.duplicates, stats.failed,
        )  # fmt: skip


def _calling_ae(assoc) -> str:  # type: ignore[no-untyped-def]
    return str(assoc.requestor.ae_title).strip()


def _peer(assoc) -> str:  # type: ignore[no-untyped-def]
    return f"{assoc.requestor.address}:{assoc.requestor.port}"


def handle_store(event: events.Event, ingestor: Ingestor, assoc_log: AssociationLog) -> int:
    """C-STORE: write the bytes as received (file meta + encoded dataset), index, answer."""
    stats = assoc_log.get(event.assoc)
    try:
        payload = event.encoded_dataset(include_meta=True)
        requested = str(event.request.AffectedSOPInstanceUID or "")
    except Exception:
        log.exception("C-STORE from %s@%s: cannot read the request", stats.calling_ae, stats.peer)
        stats.failed += 1
        return StoreStatus.CANNOT_UNDERSTAND
    outcome = ingestor.ingest(
        payload,
        calling_ae=stats.calling_ae,
        peer_address=str(event.assoc.requestor.address),
        requested_sop_uid=requested,
    )
    if outcome.ok:
        if outcome.duplicate or outcome.conflict:
            stats.duplicates += 1
        else:
            stats.stored += 1
    else:
        stats.failed += 1
        log.error(
            "C-STORE from %s@%s refused with 0x%04X: %s",
            stats.calling_ae, stats.peer, int(outcome.status), outcome.detail,
        )  # fmt: skip
    return int(outcome.status)


def handle_established(event: events.Event, assoc_log: AssociationLog) -> None:
    assoc_log.open(event.assoc)


def handle_released(event: events.Event, assoc_log: AssociationLog) -> None:
    assoc_log.close(event.assoc, "released")


def handle_aborted(event: events.Event, assoc_log: AssociationLog) -> None:
    assoc_log.close(event.assoc, "aborted")


def handle_rejected(event: events.Event, allowed_ae_titles: list[str]) -> None:
    assoc = event.assoc
    calling = _calling_ae(assoc)
    if allowed_ae_titles and calling not in allowed_ae_titles:
        reason = "calling AE title not in listener.allowed_ae_titles"
    else:
        reason = "maximum concurrent associations reached"
    log.warning("association from %s@%s rejected: %s", calling, _peer(assoc), reason)
