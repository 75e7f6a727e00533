"""The DICOM listener: Verification and Storage SCP on one port.

Accepts every storage SOP class pynetdicom knows with every transfer syntax it
lists (uncompressed, deflated, JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE,
...): the bytes are stored as received, so no codec is needed to accept them.
Each association runs in its own thread (:mod:`dicom_io.association`).

In ``triage serve`` several listener processes accept from one socket that the
main process listens on (:class:`SharedSocket`).
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # sop_class builds its UIDs at import time

from dicom_io.association import Association, Policy
from dicom_io.errors import DicomNetworkError, OptionsError
from dicom_io.ingest import Ingestor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSOptions:
    """DICOM TLS (PS3.15 Annex B.9). Off unless ``cert`` and ``key`` are set."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None  # CA bundle to verify peers' certificates
    require_client_cert: bool = True

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None


@dataclass(frozen=True)
class ListenerOptions:
    """What the listener needs, as plain values (the application builds them from its settings, already checked)."""

    ae_title: str = "DICOM_IO"
    host: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 32  # across all listener processes sharing the port
    max_pdu: int = 1 << 20  # our Maximum PDU Length (PS3.8 D.3.3.1); 0 means unlimited
    network_timeout: float = 60.0
    allowed_ae_titles: tuple[str, ...] = ()  # empty: every calling AE title is accepted
    allowed_peers: tuple[str, ...] = ()  # IPs or CIDR networks; empty: every peer is accepted
    shutdown_grace: float = 5.0  # on stop: how long associations may take to release by themselves
    tls: TLSOptions = TLSOptions()
    implementation_version: str = "DICOM_IO"  # Implementation Version Name we send and write (16 chars at most)


def supported_contexts() -> list[PresentationContext]:
    """Verification and every storage SOP class, each with every transfer syntax."""
    abstract = [Verification] + [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    return [build_context(uid, ALL_TRANSFER_SYNTAXES) for uid in abstract]


def tls_context(tls: TLSOptions) -> ssl.SSLContext | None:
    """Server-side TLS context (PS3.15 B.9), or None when TLS is off."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            ctx.load_verify_locations(cafile=str(tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise OptionsError(f"config: listener.tls: cannot load certificate or key: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


class _PeerFilter:
    """Refuses TCP connections from addresses outside ``allowed_peers``."""

    def __init__(self, allowed: Sequence[str]) -> None:
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
    loads: MutableSequence[int]  # a multiprocessing.Array("i", processes)
    slot: int


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DicomNetworkError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


class Listener:
    """A running listener; :meth:`stop` ends it gracefully."""

    def __init__(self, settings: ListenerOptions, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.policy = Policy(
            allowed_ae_titles=list(settings.allowed_ae_titles),
            peer_allowed=_PeerFilter(settings.allowed_peers),
            max_pdu=settings.max_pdu,
            contexts=supported_contexts(),
            too_busy=lambda: self._total_active() > settings.max_associations,
            implementation_version=settings.implementation_version[:16],
        )
        self._tls = tls_context(settings.tls)
        self._sock: socket.socket | None = None
        self._shared: SharedSocket | None = None
        self._active: dict[threading.Thread, Association] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 for an ephemeral port)."""
        assert self._sock is not None, "listener not started"
        return int(self._sock.getsockname()[1])

    def start(self, shared: SharedSocket | None = None) -> None:
        """Listen on ``host:port``, or serve on a socket shared with other processes."""
        self._shared = shared
        self._sock = shared.sock if shared is not None else bind(self.settings.host, self.settings.port)
        # Non-blocking: when another process takes a connection first, accept()
        # fails with EAGAIN instead of blocking the accept loop.
        self._sock.setblocking(False)
        self._acceptor = threading.Thread(target=self._accept_loop, name="acceptor", daemon=True)
        self._acceptor.start()
        if shared is None:
            log.info("listening as %s on %s:%d%s", self.settings.ae_title, self.settings.host, self.port, " (TLS)" if self._tls else "")

    def _total_active(self) -> int:
        """Active associations of this listener, across all processes sharing the port."""
        if self._shared is not None:
            return sum(self._shared.loads)
        with self._lock:
            return len(self._active)

    def _publish_load(self) -> int:
        with self._lock:
            mine = len(self._active)
        if self._shared is not None:
            self._shared.loads[self._shared.slot] = mine
        return mine

    def _should_yield(self, mine: int) -> bool:
        if self._shared is None:
            return False
        loads, slot = self._shared.loads, self._shared.slot
        return any(mine > load for i, load in enumerate(loads) if i != slot)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(timeout=0.2):
                    continue
                if self._should_yield(self._publish_load()):
                    time.sleep(0.001)  # a less busy process will take it
                    continue
                try:
                    conn, peer = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # another process took it
                except OSError:
                    if self._stopping.is_set():
                        return
                    raise
                self._start_association(conn, peer)

    def _start_association(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.setblocking(True)
        conn.settimeout(self.settings.network_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(target=self._run_association, args=(conn, peer), daemon=True)
        thread.name = f"assoc-{peer[0]}:{peer[1]}"
        thread.start()

    def _run_association(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        me = threading.current_thread()
        try:
            if self._tls is not None:
                try:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.warning("TLS handshake with %s:%s failed: %s", peer[0], peer[1], exc)
                    conn.close()
                    return
            assoc = Association(conn, peer, self.policy, self.ingestor)
            with self._lock:
                self._active[me] = assoc
            self._publish_load()
            assoc.run()
        finally:
            with self._lock:
                self._active.pop(me, None)
            self._publish_load()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let active associations finish for ``grace`` seconds,
        abort the rest, and wait for in-flight stores to be written and indexed."""
        if self._sock is None or self._stopping.is_set():
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        self._sock.close()
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = dict(self._active)
        for assoc in remaining.values():
            assoc.abort()
        self.ingestor.wait_idle()
        for thread in remaining:
            thread.join(timeout=5)
        log.info("listener stopped")
