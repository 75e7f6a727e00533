"""The SCU side: echo, replay, and sending result files to a peer.

Files are sent as they are on disk (no decode, no re-encode), each proposed
with its own SOP class and transfer syntax. :func:`replay` spreads them over
several parallel associations, optionally rate-limited (``triage replay``);
:func:`store_files` sends a few on one association and says per file whether
the peer acknowledged it (the outbox's results to a PACS).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # sop_class builds its UIDs at import time

if TYPE_CHECKING:
    from pynetdicom.association import Association

from dicom_io.errors import DicomIOError, DicomNetworkError

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
ACCEPTED = (0x0000, 0xB000, 0xB006, 0xB007)  # C-STORE success and its warnings (PS3.4 B.2.3)

# pynetdicom's one switch for sending a file's bytes as they are (a path given to
# send_c_store is streamed, not decoded and re-encoded). It is process-wide: set
# once here, where every send of this project goes through, never per call.
_config.STORE_SEND_CHUNKED_DATASET = True


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; raises :class:`~dicom_io.errors.DicomIOError` naming the input."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DicomIOError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def echo(host: str, port: int, *, called_ae: str = "TRIAGE", calling_ae: str = "TRIAGESCU", timeout: float = 10) -> float:
    """C-ECHO the peer; returns the round trip in seconds.

    Raises
    ------
    DicomNetworkError
        If the association is refused or the echo fails.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    start = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DicomNetworkError(f"association with {called_ae}@{host}:{port} {_why_not(assoc)}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0x0000:
        code = f"0x{status.Status:04X}" if status else "no response"
        raise DicomNetworkError(f"C-ECHO to {called_ae}@{host}:{port} failed: {code}")
    return time.perf_counter() - start


def _why_not(assoc: Association) -> str:
    if assoc.is_rejected:
        return "was rejected (calling AE not allowed, or the peer is busy)"
    # pynetdicom reports a refused TCP connection as an abort too.
    return "could not be established: refused, aborted or timed out (is the peer listening there?)"


@dataclass(frozen=True)
class DicomFile:
    path: Path
    sop_class_uid: str
    transfer_syntax: str


def find_dicom_files(paths: Iterable[str | Path]) -> tuple[list[DicomFile], list[Path]]:
    """Walk files and folders; return the DICOM Part 10 files and the others skipped."""
    found: list[DicomFile] = []
    skipped: list[Path] = []
    for path in _walk(paths):
        try:
            with open(path, "rb") as fh:
                head = fh.read(132)
            if head[128:132] != b"DICM":
                skipped.append(path)
                continue
            meta = read_file_meta_info(path)
            found.append(DicomFile(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        except (OSError, AttributeError, ValueError, EOFError) as exc:
            log.debug("skipping %s: %s", path, exc)
            skipped.append(path)
        except Exception as exc:  # pydicom raises many types on broken file meta
            log.debug("skipping %s: %s", path, exc)
            skipped.append(path)
    return found, skipped


def _walk(paths: Iterable[str | Path]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            for dirpath, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(dirpath) / name
        elif p.exists():
            yield p
        else:
            raise DicomIOError(f"no such file or folder: {p}")


@dataclass
class ReplaySummary:
    total: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class _RateLimit:
    """A shared pacer: at most ``rate`` sends per second across all workers."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def _context_groups(files: list[DicomFile]) -> list[tuple[list[tuple[str, str]], list[DicomFile]]]:
    """Split files so that each group needs at most 128 presentation contexts."""
    by_pair: dict[tuple[str, str], list[DicomFile]] = {}
    for f in files:
        by_pair.setdefault((f.sop_class_uid, f.transfer_syntax), []).append(f)
    pairs = sorted(by_pair)
    groups = []
    for i in range(0, len(pairs), MAX_CONTEXTS):
        chunk = pairs[i : i + MAX_CONTEXTS]
        members = sorted((f for pair in chunk for f in by_pair[pair]), key=lambda f: str(f.path))
        groups.append((chunk, members))
    return groups


def replay(
    files: list[DicomFile],
    host: str,
    port: int,
    *,
    called_ae: str = "TRIAGE",
    calling_ae: str = "TRIAGESCU",
    parallel: int = 4,
    rate: float | None = None,
    timeout: float = 30,
    on_result: Callable[[DicomFile, bool], None] | None = None,
) -> ReplaySummary:
    """C-STORE ``files`` to ``called_ae@host:port`` over ``parallel`` associations.

    Never raises for a peer's failure: every file not acknowledged with
    success is counted in ``failed`` with its reason.
    """
    if parallel < 1:
        raise DicomIOError(f"--parallel must be at least 1, got {parallel}")
    if rate is not None and rate <= 0:
        raise DicomIOError(f"--rate must be positive, got {rate}")
    summary = ReplaySummary(total=len(files))
    lock = threading.Lock()
    pacer = _RateLimit(rate)
    start = time.perf_counter()

    def report(f: DicomFile, ok: bool, reason: str = "") -> None:
        with lock:
            if ok:
                summary.sent += 1
            else:
                summary.failed += 1
                summary.failures.append((f.path, reason))
        if on_result is not None:
            on_result(f, ok)

    for contexts, members in _context_groups(files):
        work: queue.Queue[DicomFile] = queue.Queue()
        for f in members:
            work.put(f)
        workers = [
            threading.Thread(target=_worker, args=(work, contexts, host, port, called_ae, calling_ae, timeout, pacer, report), daemon=True)
            for _ in range(min(parallel, len(members)))
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        # Files left when every worker gave up (peer unreachable) count as failed.
        while not work.empty():
            report(work.get_nowait(), False, "not sent: no association could be established")
    summary.seconds = time.perf_counter() - start
    return summary


_ACCEPTED = (0x0000, 0xB000, 0xB006, 0xB007)  # success and the warnings (PS3.4 B.2.3)


def _send_one(assoc: Association, f: DicomFile) -> tuple[bool, str, bool]:
    """C-STORE one file: ``(acknowledged, failure reason, association lost)``."""
    try:
        status = assoc.send_c_store(f.path)
    except (ValueError, AttributeError) as exc:  # this file: e.g. its context was not accepted
        return False, str(exc), False
    except Exception as exc:  # the association went away under us
        return False, f"association lost: {exc}", True
    if not status or "Status" not in status:
        return False, "no response (association lost)", True
    if status.Status in _ACCEPTED:
        return True, "", False
    return False, f"status 0x{status.Status:04X}", False


def _worker(
    work: queue.Queue[DicomFile],
    contexts: list[tuple[str, str]],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout: float,
    pacer: _RateLimit,
    report: Callable[..., None],
) -> None:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    assoc = None
    try:
        while True:
            try:
                f = work.get_nowait()
            except queue.Empty:
                return
            for _attempt in range(2):  # once more on a new association if the first was lost
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate(host, port, ae_title=called_ae)
                    if not assoc.is_established:
                        log.error("association with %s@%s:%d %s", called_ae, host, port, _why_not(assoc))
                        work.put(f)  # for another worker, or counted as not sent
                        return
                pacer.wait()
                ok, reason, lost = _send_one(assoc, f)
                if not lost:
                    break
                assoc = None  # a re-send is safe: receivers are idempotent on SOP Instance UID
            report(f, ok, reason)
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()


# --- results to a peer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """Where to send: a DICOM peer, with TLS when ``tls`` is given (PS3.15 B.9)."""

    host: str
    port: int
    ae_title: str
    tls: ssl.SSLContext | None = None
    server_name: str | None = None  # the name its certificate must carry (default: host)

    @property
    def where(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def client_tls(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS context that verifies the peer (against ``ca``, else the system's), with our certificate if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    return context


def connect_error(host: str, port: int, timeout: float = 5.0) -> str:
    """Why a TCP connection to the peer fails, in words (pynetdicom only logs it)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "could not connect (the peer answers now)"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return "connection timed out"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def store_files(peer: Peer, calling_ae: str, files: Sequence[tuple[Path, str]], timeout: float = 30.0) -> list[tuple[bool, str]]:
    """C-STORE ``files`` (path, SOP Class UID) to ``peer`` on one association.

    Never raises for the peer's sake: returns ``(acknowledged, reason)`` per
    file, in order. The files are sent as they are on disk.
    """
    if not files:
        return []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10.0)
    # One context per (SOP class, the file's transfer syntax): a file goes as it is written.
    contexts = {(sop_class, str(read_file_meta_info(path).TransferSyntaxUID)) for path, sop_class in files}
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    where = peer.where
    opened = threading.Event()
    tls_args = (peer.tls, peer.server_name or peer.host) if peer.tls is not None else None
    assoc = ae.associate(
        peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, lambda _e: opened.set())], tls_args=tls_args
    )
    if not assoc.is_established:
        if assoc.is_rejected:
            reason = f"association rejected by {where} (is our AE title {calling_ae} allowed there?)"
        elif not opened.is_set():
            reason = f"{connect_error(peer.host, peer.port)} ({where})"
        else:
            reason = f"association with {where} aborted or timed out"
        return [(False, reason)] * len(files)
    out: list[tuple[bool, str]] = []
    try:
        for path, _sop_class in files:
            if not assoc.is_established:
                out.append((False, f"association with {where} lost"))
                continue
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError) as exc:  # e.g. the peer accepted no context for its class
                out.append((False, f"{where}: {exc}"))
                continue
            except Exception as exc:  # the association went away under us
                out.append((False, f"association with {where} lost: {exc}"))
                continue
            if not status or "Status" not in status:
                out.append((False, f"no response from {where}"))
            elif status.Status in ACCEPTED:
                out.append((True, ""))
            else:
                out.append((False, f"{where} answered status 0x{status.Status:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return out
