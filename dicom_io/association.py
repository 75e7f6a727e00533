"""One association on the receive path: negotiation, then C-ECHO and C-STORE
until release or abort.

Association negotiation reuses pynetdicom's PDU codecs and presentation
context rules; the data phase (P-DATA-TF in, responses out) is handled here
directly, one thread per association with blocking reads, because that is
where the CPU of a busy listener goes.

Peers are untrusted: the A-ASSOCIATE-RQ must arrive whole within the ARTIM
time after connect, and every PDU within ``network_timeout`` of its first
byte, however slowly its bytes trickle in (:attr:`Association.deadline`, which
the listener's reaper enforces); a dataset streams to a spool file as it
arrives, never into memory, up to the maximum instance size.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC as AcPDU
from pynetdicom.pdu import A_ASSOCIATE_RQ as RqPDU
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from dicom_io import dimse
from dicom_io.errors import StorageError
from dicom_io.ingest import Ingestor, IngestOutcome, StoreStatus
from dicom_io.store import InstanceTooLargeError, Spool

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class PeerGone(Exception):
    """The peer closed, aborted, timed out or broke the protocol."""


@dataclass
class AssociationStats:
    calling_ae: str = "?"
    peer: str = "?"
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Policy:
    """What the listener decides at association time."""

    allowed_ae_titles: list[str]
    peer_allowed: Callable[[str], bool]  # the peer's IP address is in listener.allowed_peers
    max_pdu: int
    contexts: list[PresentationContext]
    too_busy: Callable[[], bool]  # the association limit is reached
    implementation_version: str = "DICOM_IO"  # Implementation Version Name (PS3.7 D.3.3.2), 16 chars at most
    # Called AE titles we answer to; None: any (for sites that route by AE title).
    called_ae_titles: frozenset[str] | None = None
    # Known peers: calling AE title -> whether an address may use it. None: no table, any allowed AE from any allowed address.
    known_peer: Callable[[str, str], bool] | None = None
    acse_timeout: float = 30.0  # ARTIM: connect to a complete A-ASSOCIATE-RQ (PS3.8 9.1.5)
    pdu_timeout: float = 60.0  # first byte of a PDU to its last


# Largest PDU we read when our Maximum PDU Length is 0 (unlimited): a length
# field is never trusted to allocate gigabytes.
_PDU_CAP = 64 * 2**20
# ARTIM for a rejected association (PS3.8 9.1.5): how long the peer has to close after our A-ASSOCIATE-RJ.
REJECT_CLOSE_WAIT_S = 2.0


class _Reader:
    """Exact reads from a blocking socket, with the deadline of the PDU being read.

    Each ``recv`` may wait ``network_timeout`` (the socket's timeout) for the
    next PDU to begin; once its first byte is in, the whole PDU is due within
    ``pdu_timeout`` (:attr:`deadline`), so a peer that sends one byte at a time
    cannot hold the association by keeping each wait short.
    """

    def __init__(self, sock: socket.socket, max_pdu: int, pdu_timeout: float) -> None:
        self.sock = sock
        # Peers must keep P-DATA within our Maximum PDU Length; allow the header.
        self.limit = (max_pdu + 6) if max_pdu else _PDU_CAP
        self.pdu_timeout = pdu_timeout
        self.deadline: float | None = None  # monotonic time by which the PDU being read must be complete

    def exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise PeerGone("connection closed by the peer")
            got += k
        return bytes(buf)

    def pdu(self) -> tuple[int, bytes]:
        self.deadline = None
        first = self.exactly(1)
        self.deadline = time.monotonic() + self.pdu_timeout
        _, length = struct.unpack(">BL", self.exactly(5))
        if length > max(self.limit, 65536):  # an A-ASSOCIATE-RQ may exceed a tiny max PDU
            raise PeerGone(f"PDU of {length} bytes exceeds our maximum PDU length")
        body = self.exactly(length)
        self.deadline = None
        return first[0], body


class _Rejected(Exception):
    """The association was rejected (already answered and logged)."""


class Association:
    """One accepted connection, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(
        self, sock: socket.socket, peer: tuple[str, int], policy: Policy, ingestor: Ingestor, *, connected_at: float | None = None
    ) -> None:
        self.sock = sock
        self.reader = _Reader(sock, policy.max_pdu, policy.pdu_timeout)
        self.peer_ip = peer[0]
        self.policy = policy
        self.ingestor = ingestor
        self.stats = AssociationStats(peer=f"{peer[0]}:{peer[1]}")
        self.contexts: dict[int, tuple[str, str]] = {}  # accepted context id -> (abstract syntax, transfer syntax)
        # ARTIM (PS3.8 9.1.5): from connect to a complete A-ASSOCIATE-RQ; None once negotiated.
        self.artim: float | None = (time.monotonic() if connected_at is None else connected_at) + policy.acse_timeout
        self.timed_out: str | None = None  # set by the reaper: why the socket was shut

    @property
    def deadline(self) -> float | None:
        """When this association's current wait must end (ARTIM, or the PDU being read), or None."""
        due = [t for t in (self.artim, self.reader.deadline) if t is not None]
        return min(due) if due else None

    def expire(self, why: str) -> None:
        """Called from the listener's reaper when :attr:`deadline` has passed: the blocked read fails and run() ends."""
        self.timed_out = why
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> None:
        """Serve to the end; never raises; logs one line per association."""
        how = "closed"
        try:
            self._negotiate()
            how = self._data_phase()
        except _Rejected:
            return
        except (PeerGone, OSError, ValueError, struct.error) as exc:
            how = f"aborted ({self.timed_out or exc})"
            _send_quietly(self.sock, dimse.abort())
        except Exception:  # a bug must not take the listener down
            log.exception("association from %s: unexpected error", self.stats.peer)
            how = "aborted (internal error)"
            _send_quietly(self.sock, dimse.abort())
        finally:
            _close(self.sock)
        s = self.stats
        log.info(
            "association from %s@%s %s after %.1f s: %d stored, %d duplicate, %d conflicting, %d failed",
            s.calling_ae,
            s.peer,
            how,
            time.monotonic() - s.started,
            s.stored,
            s.duplicates,
            s.conflicts,
            s.failed,
        )

    def abort(self) -> None:
        """Abort from another thread (shutdown): the blocked read fails and run() ends."""
        _send_quietly(self.sock, dimse.abort())
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _negotiate(self) -> None:
        pdu_type, body = self.reader.pdu()
        if pdu_type != dimse.A_ASSOCIATE_RQ:
            raise PeerGone(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type:#04x}")
        rq = RqPDU()
        rq.decode(struct.pack(">BBL", pdu_type, 0, len(body)) + body)
        request = rq.to_primitive()
        if not request.presentation_context_definition_list:
            raise PeerGone("A-ASSOCIATE-RQ without presentation contexts")
        self.stats.calling_ae = str(request.calling_ae_title).strip()
        called_ae = str(request.called_ae_title).strip()
        policy = self.policy
        reason = None
        if not policy.peer_allowed(self.peer_ip):
            # PS3.8 9.3.4: rejected-permanent, service-user, no reason given (none fits better)
            reason, rsd = "peer address not in listener.allowed_peers", (1, 1, 1)
        elif policy.called_ae_titles is not None and called_ae not in policy.called_ae_titles:
            # PS3.8 9.3.4: rejected-permanent, service-user, called AE title not recognized
            reason, rsd = f"called AE title {called_ae[:16]!r} is not ours", (1, 1, 7)
        elif policy.known_peer is not None and not policy.known_peer(self.stats.calling_ae, self.peer_ip):
            # rejected-permanent, service-user, calling AE title not recognized: unknown, or not from its hosts
            reason, rsd = "calling AE title not in listener.peers for this address", (1, 1, 3)
        elif policy.allowed_ae_titles and self.stats.calling_ae not in policy.allowed_ae_titles:
            # PS3.8 9.3.4: rejected-permanent, service-user, calling AE title not recognized
            reason, rsd = "calling AE title not in listener.allowed_ae_titles", (1, 1, 3)
        elif policy.too_busy():
            # rejected-transient, service-provider (presentation), local limit exceeded
            reason, rsd = "maximum concurrent associations reached", (2, 3, 2)
        if reason is not None:
            self.sock.sendall(dimse.associate_rj(*rsd))
            log.warning("association from %s@%s rejected: %s", self.stats.calling_ae, self.stats.peer, reason)
            _await_peer_close(self.sock)
            raise _Rejected
        # Items decoded from the PDU always carry their UID and context ID; pynetdicom types them optional.
        roles = {
            cast(UID, item.sop_class_uid): (item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        results, role_items = negotiate_as_acceptor(request.presentation_context_definition_list, policy.contexts, roles or None)
        accept = A_ASSOCIATE()
        accept.application_context_name = UID(APPLICATION_CONTEXT)
        accept.calling_ae_title = request.calling_ae_title
        accept.called_ae_title = request.called_ae_title
        accept.result, accept.result_source = 0x00, 0x01
        accept.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = policy.max_pdu
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = UID(dimse.IMPLEMENTATION_CLASS_UID)
        impl_version = ImplementationVersionNameNotification()
        impl_version.implementation_version_name = policy.implementation_version
        accept.user_information = [max_length, impl_uid, impl_version, *role_items]
        ac = AcPDU()
        ac.from_primitive(accept)
        self.sock.sendall(ac.encode())
        self.artim = None
        self.contexts = {
            cast(int, cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in results if cx.result == 0x00
        }

    def _data_phase(self) -> str:
        """C-ECHO and C-STORE until the peer releases; returns how it ended."""
        command: list[bytes] = []
        incoming: _Incoming | None = None  # the command whose dataset is arriving
        try:
            while True:
                pdu_type, body = self.reader.pdu()
                if pdu_type == dimse.A_RELEASE_RQ:
                    self.sock.sendall(dimse.release_rp())
                    return "released"
                if pdu_type == dimse.A_ABORT:
                    return "aborted by the peer"
                if pdu_type != dimse.P_DATA_TF:
                    raise PeerGone(f"unexpected PDU type {pdu_type:#04x}")
                for context_id, is_command, last, data in dimse.pdvs(body):
                    if context_id not in self.contexts:
                        raise PeerGone(f"P-DATA on presentation context {context_id}, which was not accepted")
                    if is_command:
                        if incoming is not None:
                            raise PeerGone("a command arrived before the previous command's dataset ended")
                        command.append(bytes(data))
                        if not last:
                            continue
                        cmd = dimse.parse_command(b"".join(command))
                        command.clear()
                        if cmd.get("data_set_type", dimse.NO_DATASET) == dimse.NO_DATASET:
                            self._answer(context_id, cmd)
                        else:
                            incoming = self._begin_dataset(context_id, cmd)  # its dataset follows
                        continue
                    if incoming is None:
                        raise PeerGone("a dataset arrived without its command")
                    if context_id != incoming.context_id:
                        raise PeerGone("a dataset continued on another presentation context")
                    incoming.write(data)
                    if last:
                        self._finish_dataset(incoming)
                        incoming = None
        finally:
            if incoming is not None and incoming.spool is not None:
                incoming.spool.discard()  # the association ended mid-dataset: nothing was acknowledged

    def _answer(self, context_id: int, cmd: dict[str, int | str]) -> None:
        """Answer a command that has no dataset (C-ECHO)."""
        command_field = int(cmd.get("command_field", 0))
        if command_field != dimse.C_ECHO_RQ:
            raise PeerGone(f"unsupported DIMSE command {command_field:#06x}")
        sop_class = str(cmd.get("affected_sop_class", ""))
        rsp = dimse.response(dimse.C_ECHO_RSP, int(cmd.get("message_id", 0)), 0x0000, sop_class or dimse.VERIFICATION, None)
        self.sock.sendall(dimse.p_data_command(context_id, rsp))

    def _begin_dataset(self, context_id: int, cmd: dict[str, int | str]) -> _Incoming:
        """Where the dataset of a C-STORE goes as it arrives: a spool, or nowhere when it is refused already."""
        command_field = int(cmd.get("command_field", 0))
        if command_field != dimse.C_STORE_RQ:
            raise PeerGone(f"unsupported DIMSE command {command_field:#06x}")
        incoming = _Incoming(context_id, cmd)
        abstract, transfer_syntax = self.contexts[context_id]
        if incoming.sop_class != abstract:
            # PS3.7 9.1.1.1.1 / 10.1.1: the request's SOP class must be the context's abstract syntax.
            incoming.refused = IngestOutcome(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED, f"C-STORE of {incoming.sop_class[:64]!r} on a presentation context for {abstract}"
            )
            return incoming
        try:
            incoming.spool = self.ingestor.open_spool()
            meta = dimse.file_meta(
                incoming.sop_class, incoming.sop_instance, transfer_syntax, self.stats.calling_ae, self.policy.implementation_version
            )
            incoming.spool.write(meta)
            incoming.spool.dataset_offset = len(meta)
        except StorageError as exc:
            if incoming.spool is not None:
                incoming.spool.discard()
                incoming.spool = None
            incoming.refused = IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc))
        return incoming

    def _finish_dataset(self, incoming: _Incoming) -> None:
        stats = self.stats
        if incoming.refused is not None or incoming.spool is None:
            outcome = incoming.refused or IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "no spool")
        else:
            outcome = self.ingestor.ingest_spool(
                incoming.spool,
                self.contexts[incoming.context_id][1],
                calling_ae=stats.calling_ae,
                peer_address=self.peer_ip,
                requested_sop_uid=incoming.sop_instance,
                requested_sop_class=incoming.sop_class,
            )
        if outcome.ok:
            if outcome.conflict:
                stats.conflicts += 1
            elif outcome.duplicate:
                stats.duplicates += 1
            else:
                stats.stored += 1
        else:
            stats.failed += 1
            log.error("C-STORE from %s@%s refused with 0x%04X: %s", stats.calling_ae, stats.peer, int(outcome.status), outcome.detail)
        self.ingestor.answered(outcome)
        rsp = dimse.response(dimse.C_STORE_RSP, incoming.message_id, int(outcome.status), incoming.sop_class, incoming.sop_instance)
        self.sock.sendall(dimse.p_data_command(incoming.context_id, rsp))


class _Incoming:
    """A C-STORE request whose dataset is arriving: written to its spool, or dropped once refused."""

    def __init__(self, context_id: int, cmd: dict[str, int | str]) -> None:
        self.context_id = context_id
        self.message_id = int(cmd.get("message_id", 0))
        self.sop_class = str(cmd.get("affected_sop_class", ""))
        self.sop_instance = str(cmd.get("affected_sop_instance", ""))
        self.spool: Spool | None = None
        self.refused: IngestOutcome | None = None  # the answer, decided before the dataset ended

    def write(self, data: memoryview) -> None:
        if self.spool is None:
            return  # refused already: the rest of the dataset is read and dropped
        try:
            self.spool.write(data)
        except InstanceTooLargeError as exc:
            self.refused = IngestOutcome(StoreStatus.OUT_OF_RESOURCES, f"{exc} (listener.max_instance_mb)")
        except StorageError as exc:
            self.refused = IngestOutcome(StoreStatus.OUT_OF_RESOURCES, str(exc))
        if self.refused is not None:
            self.spool.discard()
            self.spool = None


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def _await_peer_close(sock: socket.socket, timeout: float = REJECT_CLOSE_WAIT_S) -> None:
    """After an A-ASSOCIATE-RJ the requestor closes the connection (PS3.8 state Sta13); wait for that, at most
    ``timeout`` seconds. Closing first races the peer's reading of the rejection: pynetdicom, seeing the
    connection end before it has parsed the RJ, reports an abort instead of the reason."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(4096):  # EOF: the peer closed; anything it still sends is dropped
                return
    except OSError:  # timed out or reset: close anyway
        return


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
