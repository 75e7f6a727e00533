"""The DICOM listener: Verification and Storage SCP on one port.

Accepts every storage SOP class pynetdicom knows with every transfer syntax
it lists (uncompressed, deflated, JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE,
...): the bytes are stored as received, so no codec is needed to accept them.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io.handlers import (
    AssociationLog,
    handle_aborted,
    handle_established,
    handle_rejected,
    handle_released,
    handle_store,
)
from dicom_io.ingest import Ingestor
from triage.config import ListenerSettings, TLSSettings
from triage.errors import ConfigError, DicomNetworkError

log = logging.getLogger(__name__)


def build_ae(settings: ListenerSettings) -> AE:
    """An AE that accepts C-ECHO and C-STORE as configured."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.network_timeout
    ae.dimse_timeout = settings.network_timeout
    ae.require_calling_aet = list(settings.allowed_ae_titles)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


def tls_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """Server-side TLS context (PS3.15 B.9), or None when TLS is off."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            ctx.load_verify_locations(cafile=str(tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: listener.tls: cannot load certificate or key: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


class _PeerFilter:
    """Refuses TCP connections from addresses outside ``allowed_peers``.

    pynetdicom has no A-ASSOCIATE-RJ hook that sees the peer address, so such
    peers are refused at connection time, with a log line naming them.
    """

    def __init__(self, allowed: list[str]) -> None:
        self.networks = [ipaddress.ip_network(a, strict=False) for a in allowed]

    def __call__(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class SharedSocket:
    """A listening socket shared by several listener processes.

    ``loads[slot]`` is this process's count of active associations, published
    for the others: a process with more associations than another lets it
    accept the next one, so that associations spread evenly across processes
    (and so across cores) rather than by who happens to wake first.
    """

    sock: socket.socket
    loads: Sequence[int]  # a multiprocessing.Array("i", processes)
    slot: int


class _SharedSocketServer(ThreadedAssociationServer):
    """Serves on a listening socket made by the parent process (pre-fork model)."""

    def __init__(self, *args, shared: SharedSocket, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._listen_socket = shared.sock
        self._shared = shared
        super().__init__(*args, **kwargs)

    def _handle_request_noblock(self) -> None:
        loads, slot = self._shared.loads, self._shared.slot
        mine = loads[slot] = len(self.active_associations)
        if any(mine > load for i, load in enumerate(loads) if i != slot):
            time.sleep(0.001)  # a less busy process will take it
            return
        super()._handle_request_noblock()
        loads[slot] = len(self.active_associations)

    def server_bind(self) -> None:
        self.socket.close()
        # Non-blocking: when another process takes the connection first, accept()
        # fails with EAGAIN instead of blocking the serve loop.
        self._listen_socket.setblocking(False)
        self.socket = self._listen_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # the parent already listens


class Listener:
    """A running listener; :meth:`stop` ends it gracefully."""

    def __init__(self, settings: ListenerSettings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.assoc_log = AssociationLog()
        self.ae = build_ae(settings)
        self.server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 for an ephemeral port)."""
        assert self.server is not None, "listener not started"
        return int(self.server.server_address[1])

    def start(self, shared: SharedSocket | None = None) -> None:
        """Listen on ``host:port``, or serve on a socket shared with other processes."""
        handlers = [
            (evt.EVT_C_STORE, handle_store, [self.ingestor, self.assoc_log]),
            (evt.EVT_ESTABLISHED, handle_established, [self.assoc_log]),
            (evt.EVT_RELEASED, handle_released, [self.assoc_log]),
            (evt.EVT_ABORTED, handle_aborted, [self.assoc_log]),
            (evt.EVT_REJECTED, handle_rejected, [self.ae.require_calling_aet]),
        ]
        try:
            if shared is None:
                self.server = self.ae.start_server(
                    (self.settings.host, self.settings.port),
                    block=False,
                    evt_handlers=handlers,
                    ssl_context=tls_context(self.settings.tls),
                )
            else:
                self.server = self._serve_shared(shared, handlers)
        except OSError as exc:
            raise DicomNetworkError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from None
        peer_ok = _PeerFilter(self.settings.allowed_peers)
        base_verify = self.server.verify_request

        def verify_request(request, client_address) -> bool:  # type: ignore[no-untyped-def]
            if not peer_ok(client_address[0]):
                log.warning(
                    "connection from %s:%s refused: address not in listener.allowed_peers", *client_address[:2]
                )
                return False
            return base_verify(request, client_address)

        self.server.verify_request = verify_request  # type: ignore[method-assign]
        if shared is None:
            log.info(
                "listening as %s on %s:%d%s", self.settings.ae_title, self.settings.host, self.port,
                " (TLS)" if self.settings.tls.enabled else "",
            )  # fmt: skip

    def _serve_shared(self, shared: SharedSocket, handlers: list) -> ThreadedAssociationServer:
        server = self.ae.make_server(
            shared.sock.getsockname(),
            evt_handlers=handlers,
            ssl_context=tls_context(self.settings.tls),
            server_class=_SharedSocketServer,
            shared=shared,
        )
        threading.Thread(target=server.serve_forever, name="acceptor", daemon=True).start()
        self.ae._servers.append(server)
        return server

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let active associations finish for ``grace`` seconds,
        abort the rest, and wait for in-flight stores to be written and indexed."""
        if self.server is None:
            return
        server, self.server = self.server, None
        grace = self.settings.shutdown_grace if grace is None else grace
        socketserver.TCPServer.shutdown(server)  # stop the accept loop, keep associations
        server.server_close()
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            assoc.abort()
        self.ingestor.wait_idle()
        for assoc in server.active_associations:
            assoc.join(timeout=5)
        if server in self.ae._servers:
            self.ae._servers.remove(server)
        log.info("listener stopped")
