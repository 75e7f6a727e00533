"""The DICOM listener: Verification and Storage SCP on one port.

Accepts every storage SOP class pynetdicom knows with every transfer syntax it
lists (uncompressed, deflated, JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE,
...): the bytes are stored as received, so no codec is needed to accept them.
Each association runs in its own thread (:mod:`dicom_io.association`).

A connection is judged before it costs a thread: its address must be allowed
(``allowed_peers``, or a known peer's hosts) and within the caps on open
connections, in total and per address; otherwise it is closed at ``accept()``.
A reaper thread closes connections whose ARTIM or PDU deadline has passed.

In ``triage serve`` several listener processes accept from one socket that the
main process listens on (:class:`SharedSocket`).
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import ssl
import struct
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

REAP_INTERVAL_S = 0.25  # how often deadlines are checked: they are enforced to within this


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
class KnownPeer:
    """A calling AE title and the hosts (IPs or CIDR networks) it may call from, like Orthanc's ``DicomModalities``."""

    ae_title: str
    hosts: tuple[str, ...]


ANY_CALLED_AE = "*"  # in ``called_ae_titles``: answer to any called AE title


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
    allowed_peers: tuple[str, ...] = ()  # IPs or CIDR networks; empty: every peer is accepted (unless ``peers`` is set)
    # Known peers: when set, a calling AE title is accepted only from its hosts, and other addresses are closed at accept.
    peers: tuple[KnownPeer, ...] = ()
    # Called AE titles answered besides ``ae_title`` (PS3.8 9.3.4 reason 7 otherwise); "*" answers any.
    called_ae_titles: tuple[str, ...] = ()
    max_per_peer: int = 16  # open connections from one address (across all listener processes)
    acse_timeout: float = 30.0  # ARTIM: connect to a complete A-ASSOCIATE-RQ, TLS handshake included
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
    """Whether an address is in a list of IPs and CIDR networks (an empty list allows every address)."""

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


class _KnownPeers:
    """Calling AE title -> the hosts it may call from."""

    def __init__(self, peers: Sequence[KnownPeer]) -> None:
        self.hosts = {p.ae_title: _PeerFilter(p.hosts) for p in peers}
        self.any_host = _PeerFilter([h for p in peers for h in p.hosts])

    def __call__(self, ae_title: str, address: str) -> bool:
        allowed = self.hosts.get(ae_title)
        return allowed is not None and allowed(address)


@dataclass
class _Connection:
    """An open connection, from accept() to close; ``assoc`` once its Association exists."""

    sock: socket.socket
    peer: tuple[str, int]
    connected_at: float
    assoc: Association | None = None


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
        known = _KnownPeers(settings.peers) if settings.peers else None
        # At accept: allowed_peers when given, else the known peers' hosts when there is a table, else everyone.
        self._address_allowed = _PeerFilter(settings.allowed_peers) if settings.allowed_peers or known is None else known.any_host
        called = None if ANY_CALLED_AE in settings.called_ae_titles else frozenset({settings.ae_title, *settings.called_ae_titles})
        self.policy = Policy(
            allowed_ae_titles=list(settings.allowed_ae_titles),
            peer_allowed=self._address_allowed,
            max_pdu=settings.max_pdu,
            contexts=supported_contexts(),
            too_busy=lambda: self._total_active() > settings.max_associations,
            implementation_version=settings.implementation_version[:16],
            called_ae_titles=called,
            known_peer=known,
            acse_timeout=settings.acse_timeout,
            pdu_timeout=settings.network_timeout,
        )
        self._tls = tls_context(settings.tls)
        self._sock: socket.socket | None = None
        self._shared: SharedSocket | None = None
        self._active: dict[threading.Thread, _Connection] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._dropped_logged: dict[str, tuple[float, int]] = {}  # address -> (last logged, dropped since)

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
        self._reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)
        self._reaper.start()
        if shared is None:
            log.info("listening as %s on %s:%d%s", self.settings.ae_title, self.settings.host, self.port, " (TLS)" if self._tls else "")

    @property
    def accepting(self) -> bool:
        """Whether the accept loop runs (a kernel completes a TCP connect into the backlog even when it does not)."""
        return self._acceptor is not None and self._acceptor.is_alive() and not self._stopping.is_set()

    @property
    def active_associations(self) -> int:
        """Open connections of this listener, across all processes sharing the port."""
        return self._total_active()

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
                why = self._refusal(peer[0])
                if why is not None:
                    self._drop(conn, peer[0], why)
                    continue
                self._start_association(conn, peer)

    def _caps(self) -> tuple[int, int]:
        """(open connections, open connections per address) this process may hold.

        The association limit plus a margin for connections still negotiating
        (a rejected one needs a moment to read its A-ASSOCIATE-RJ); processes
        sharing the port split the per-address cap, as they share the load evenly.
        """
        processes = len(self._shared.loads) if self._shared is not None else 1
        total = self.settings.max_associations + max(4, self.settings.max_associations // 4)
        per_peer = -(-self.settings.max_per_peer // processes)
        return total, per_peer

    def _refusal(self, address: str) -> str | None:
        """Why a new connection from ``address`` is closed at once, or None to serve it."""
        if not self._address_allowed(address):
            return "address not allowed (listener.allowed_peers / listener.peers)"
        total_cap, peer_cap = self._caps()
        with self._lock:
            total = len(self._active)
            from_peer = sum(1 for c in self._active.values() if c.peer[0] == address)
        if total >= total_cap:
            return f"{total} connections open, the most this listener holds"
        if from_peer >= peer_cap:
            return f"{from_peer} connections open from this address (listener.max_per_peer)"
        return None

    def _drop(self, conn: socket.socket, address: str, why: str) -> None:
        """Close a refused connection with a reset, logging at most once a minute per address."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        conn.close()
        now = time.monotonic()
        last, dropped = self._dropped_logged.get(address, (0.0, 0))
        if now - last >= 60.0:
            more = f" ({dropped} more since the last message)" if dropped else ""
            log.warning("connection from %s closed at accept: %s%s", address, why, more)
            if len(self._dropped_logged) > 4096:  # a scan of many addresses must not grow this without bound
                self._dropped_logged.clear()
            self._dropped_logged[address] = (now, 0)
        else:
            self._dropped_logged[address] = (last, dropped + 1)

    def _start_association(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.setblocking(True)
        conn.settimeout(self.settings.network_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        record = _Connection(conn, peer, time.monotonic())
        thread = threading.Thread(target=self._run_association, args=(record,), daemon=True)
        thread.name = f"assoc-{peer[0]}:{peer[1]}"
        with self._lock:
            self._active[thread] = record
        self._publish_load()
        thread.start()

    def _run_association(self, record: _Connection) -> None:
        me = threading.current_thread()
        conn, peer = record.sock, record.peer
        try:
            if self._tls is not None:
                try:
                    # Wrapping detaches the plain socket: the reaper must see the TLS one before the
                    # handshake starts, to cut a peer that drips it (ARTIM).
                    conn = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                    record.sock = conn
                    conn.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    log.warning("TLS handshake with %s:%s failed: %s", peer[0], peer[1], exc)
                    conn.close()
                    return
            assoc = Association(conn, peer, self.policy, self.ingestor, connected_at=record.connected_at)
            record.assoc = assoc
            assoc.run()
        finally:
            with self._lock:
                self._active.pop(me, None)
            self._publish_load()

    def _reap_loop(self) -> None:
        """Close connections whose deadline passed: ARTIM (connect to A-ASSOCIATE-RQ, TLS handshake included)
        and the PDU being read (PS3.8 9.1.5). A blocked read cannot see time pass; this thread can."""
        while not self._stopping.wait(REAP_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                records = list(self._active.values())
            for record in records:
                assoc = record.assoc
                if assoc is None:
                    if now > record.connected_at + self.settings.acse_timeout:
                        log.warning("connection from %s:%s closed: TLS handshake not done within the ARTIM time", *record.peer)
                        _shutdown(record.sock)
                    continue
                deadline = assoc.deadline
                if deadline is not None and now > deadline:
                    why = "no complete A-ASSOCIATE-RQ within the ARTIM time" if assoc.artim is not None else "a PDU took too long"
                    assoc.expire(f"timed out: {why}")

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
        for record in remaining.values():
            if record.assoc is not None:
                record.assoc.abort()
            else:
                _shutdown(record.sock)
        self.ingestor.wait_idle()
        for thread in remaining:
            thread.join(timeout=5)
        if self._reaper is not None:
            self._reaper.join()
        log.info("listener stopped")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
