"""One association on the receive path: negotiation, then C-ECHO and C-STORE
until release or abort.

Association negotiation reuses pynetdicom's PDU codecs and presentation
context rules; the data phase (P-DATA-TF in, responses out) is handled here
directly, one thread per association with blocking reads, because that is
where the CPU of a busy listener goes.
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
from dicom_io.ingest import Ingestor

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


# Largest PDU we read when our Maximum PDU Length is 0 (unlimited): a length
# field is never trusted to allocate gigabytes.
_PDU_CAP = 64 * 2**20
# ARTIM for a rejected association (PS3.8 9.1.5): how long the peer has to close after our A-ASSOCIATE-RJ.
REJECT_CLOSE_WAIT_S = 2.0


class _Reader:
    """Exact reads from a blocking socket."""

    def __init__(self, sock: socket.socket, max_pdu: int) -> None:
        self.sock = sock
        # Peers must keep P-DATA within our Maximum PDU Length; allow the header.
        self.limit = (max_pdu + 6) if max_pdu else _PDU_CAP

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
        pdu_type, _, length = struct.unpack(">BBL", self.exactly(6))
        if length > max(self.limit, 65536):  # an A-ASSOCIATE-RQ may exceed a tiny max PDU
            raise PeerGone(f"PDU of {length} bytes exceeds our maximum PDU length")
        return pdu_type, self.exactly(length)


class _Rejected(Exception):
    """The association was rejected (already answered and logged)."""


class Association:
    """One accepted connection, from A-ASSOCIATE-RQ to release or abort."""

    def __init__(self, sock: socket.socket, peer: tuple[str, int], policy: Policy, ingestor: Ingestor) -> None:
        self.sock = sock
        self.reader = _Reader(sock, policy.max_pdu)
        self.peer_ip = peer[0]
        self.policy = policy
        self.ingestor = ingestor
        self.stats = AssociationStats(peer=f"{peer[0]}:{peer[1]}")
        self.contexts: dict[int, str] = {}  # accepted context id -> transfer syntax

    def run(self) -> None:
        """Serve to the end; never raises; logs one line per association."""
        how = "closed"
        try:
            self._negotiate()
            how = self._data_phase()
        except _Rejected:
            return
        except (PeerGone, OSError, ValueError, struct.error) as exc:
            how = f"aborted ({exc})"
            _send_quietly(self.sock, dimse.abort())
        except Exception:  # a bug must not take the listener down
            log.exception("association from %s: unexpected error", self.stats.peer)
            how = "aborted (internal error)"
            _send_quietly(self.sock, dimse.abort())
        finally:
            _close(self.sock)
        s = self.stats
        log.info(
            "association from %s@%s %s after %.1f s: %d stored, %d duplicate, %d failed",
            s.calling_ae,
            s.peer,
            how,
            time.monotonic() - s.started,
            s.stored,
            s.duplicates,
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
        policy = self.policy
        reason = None
        if not policy.peer_allowed(self.peer_ip):
            # PS3.8 9.3.4: rejected-permanent, service-user, no reason given (none fits better)
            reason, rsd = "peer address not in listener.allowed_peers", (1, 1, 1)
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
        self.contexts = {cast(int, cx.context_id): str(cx.transfer_syntax[0]) for cx in results if cx.result == 0x00}

    def _data_phase(self) -> str:
        """C-ECHO and C-STORE until the peer releases; returns how it ended."""
        command: list[bytes] = []
        dataset: list[bytes] = []
        pending: dict[str, int | str] | None = None
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
                (command if is_command else dataset).append(bytes(data))
                if not last:
                    continue
                if is_command:
                    pending = dimse.parse_command(b"".join(command))
                    command.clear()
                    if pending.get("data_set_type", dimse.NO_DATASET) != dimse.NO_DATASET:
                        continue  # its dataset follows
                    self._answer(context_id, pending, None)
                elif pending is None:
                    raise PeerGone("a dataset arrived without its command")
                else:
                    self._answer(context_id, pending, b"".join(dataset))
                    dataset.clear()
                pending = None

    def _answer(self, context_id: int, cmd: dict[str, int | str], data: bytes | None) -> None:
        command_field = int(cmd.get("command_field", 0))
        message_id = int(cmd.get("message_id", 0))
        sop_class = str(cmd.get("affected_sop_class", ""))
        if command_field == dimse.C_ECHO_RQ:
            rsp = dimse.response(dimse.C_ECHO_RSP, message_id, 0x0000, sop_class or dimse.VERIFICATION, None)
        elif command_field == dimse.C_STORE_RQ and data is not None:
            sop = str(cmd.get("affected_sop_instance", ""))
            status = self._store(context_id, sop_class, sop, data)
            rsp = dimse.response(dimse.C_STORE_RSP, message_id, status, sop_class, sop)
        else:
            raise PeerGone(f"unsupported DIMSE command {command_field:#06x}")
        self.sock.sendall(dimse.p_data_command(context_id, rsp))

    def _store(self, context_id: int, sop_class: str, sop: str, data: bytes) -> int:
        """Write what was received: file meta for the negotiated transfer syntax + the dataset bytes."""
        stats = self.stats
        payload = dimse.file_meta(sop_class, sop, self.contexts[context_id], stats.calling_ae, self.policy.implementation_version) + data
        outcome = self.ingestor.ingest(payload, calling_ae=stats.calling_ae, peer_address=self.peer_ip, requested_sop_uid=sop)
        if outcome.ok:
            if outcome.duplicate or outcome.conflict:
                stats.duplicates += 1
            else:
                stats.stored += 1
        else:
            stats.failed += 1
            log.error("C-STORE from %s@%s refused with 0x%04X: %s", stats.calling_ae, stats.peer, int(outcome.status), outcome.detail)
        return int(outcome.status)


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
