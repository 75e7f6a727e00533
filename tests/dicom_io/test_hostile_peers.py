"""The listener against broken datasets and hostile peers, over real associations on loopback.

Each test is one probe of issue 14: what a hostile or unlucky network sends,
and the status or refusal it must get. Loopback has the whole of 127.0.0.0/8,
so "another host" is a client bound to 127.0.0.2.
"""

from __future__ import annotations

import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, RTPlanStorage, Verification

from dicom_io.send import echo
from tests.scu import associate_rq, raw_c_store
from tests.support import bundled_file, self_signed_cert
from triage.app.server import TriageServer
from triage.errors import ConfigError

OTHER_HOST = "127.0.0.2"  # a second address of this machine: "another host" on loopback


def dataset_of(path: Path) -> tuple[bytes, str]:
    """The encoded dataset of a Part 10 file (what travels in a C-STORE) and its transfer syntax."""
    meta, offset = split_dataset(path)
    return path.read_bytes()[offset:], str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def nothing_stored(server: TriageServer) -> bool:
    data_dir = server.settings.data_dir
    with sqlite3.connect(data_dir / "triage.db") as conn:
        rows = conn.execute("select count(*) from instance").fetchone()[0]
    files = list((data_dir / "studies").rglob("*.dcm")) if (data_dir / "studies").exists() else []
    spools = list((data_dir / "incoming").iterdir()) if (data_dir / "incoming").exists() else []
    return rows == 0 and not files and not spools


def send(port: int, data: bytes, ts: str, *, command_class: str, sop_uid: str, context_class: str | None = None) -> int:
    """C-STORE ``data`` with a command naming ``command_class`` on a context for ``context_class``."""
    ae = AE(ae_title="PROBE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(context_class or command_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    try:
        [context] = assoc.accepted_contexts
        return raw_c_store(assoc, context.context_id, command_class, sop_uid, data)
    finally:
        assoc.release()


def _element_offset(data: bytes, group: int, element: int) -> int:
    return data.index(struct.pack("<HH", group, element))


# -- 1. a success status means readable ---------------------------------------


def _cut_mid_element(data: bytes) -> bytes:
    start = _element_offset(data, 0x0010, 0x0010)  # Patient's Name
    return data[: start + 5]


def _one_byte_short(data: bytes) -> bytes:
    return data[:-1]


def _pixel_length_too_long(data: bytes) -> bytes:
    at = _element_offset(data, 0x7FE0, 0x0010) + 8  # explicit VR OW: tag, VR, 2 reserved, then the 4-byte length
    (length,) = struct.unpack_from("<L", data, at)
    return data[:at] + struct.pack("<L", length + 4096) + data[at + 4 :]


def _un_length_too_long(data: bytes) -> bytes:
    # A private UN element after the pixel data whose length runs 1000 bytes past the end.
    return data + struct.pack("<HH", 0x7FE1, 0x1000) + b"UN\x00\x00" + struct.pack("<L", 1010) + b"\x00" * 10


@pytest.mark.parametrize(
    "breakage", [_cut_mid_element, _one_byte_short, _pixel_length_too_long, _un_length_too_long], ids=lambda f: f.__name__.strip("_")
)
def test_broken_dataset_is_refused_and_nothing_kept(server, make_ct_series, breakage: Callable[[bytes], bytes]) -> None:
    [path] = make_ct_series(slices=1, size=32)
    data, ts = dataset_of(path)
    assert ts == ExplicitVRLittleEndian
    uid = str(dcmread(path).SOPInstanceUID)
    assert send(server.port, breakage(data), ts, command_class=CTImageStorage, sop_uid=uid) == 0xC210
    assert nothing_stored(server)
    assert send(server.port, data, ts, command_class=CTImageStorage, sop_uid=uid) == 0x0000  # and it keeps serving


def test_explicit_vr_bytes_on_an_implicit_context_are_refused(server, make_ct_series) -> None:
    [path] = make_ct_series(slices=1, size=32)
    data, ts = dataset_of(path)
    assert ts == ExplicitVRLittleEndian
    uid = str(dcmread(path).SOPInstanceUID)
    assert send(server.port, data, ImplicitVRLittleEndian, command_class=CTImageStorage, sop_uid=uid) == 0xC210
    assert nothing_stored(server)


def test_implicit_vr_bytes_on_an_explicit_context_are_refused(server) -> None:
    # pydicom's SC_rgb_jpeg.dcm is such a file: implicit VR under a JPEG Baseline transfer syntax.
    path = bundled_file("SC_rgb_jpeg.dcm")
    data, ts = dataset_of(path)
    ds = dcmread(path, stop_before_pixels=True)
    assert send(server.port, data, ts, command_class=str(ds.SOPClassUID), sop_uid=str(ds.SOPInstanceUID)) == 0xC210
    assert nothing_stored(server)


# -- 2. SOP class and instance match the request ------------------------------


def _encoded(make_ct_series, tmp_path: Path, change: Callable[..., None]) -> tuple[bytes, str, str]:
    [path] = make_ct_series(slices=1, size=32)
    ds = dcmread(path)
    change(ds)
    out = tmp_path / f"changed-{generate_uid()}.dcm"
    ds.save_as(out, enforce_file_format=False)
    data, ts = dataset_of(out)
    return data, ts, str(ds.get("SOPInstanceUID", ""))


def test_mr_dataset_under_a_ct_command_is_refused(server, make_ct_series, tmp_path: Path) -> None:
    data, ts, uid = _encoded(make_ct_series, tmp_path, lambda ds: setattr(ds, "SOPClassUID", MRImageStorage))
    assert send(server.port, data, ts, command_class=CTImageStorage, sop_uid=uid) == 0xA900
    assert nothing_stored(server)


def test_mr_command_on_a_ct_context_is_refused(server, make_ct_series, tmp_path: Path) -> None:
    data, ts, uid = _encoded(make_ct_series, tmp_path, lambda ds: setattr(ds, "SOPClassUID", MRImageStorage))
    assert send(server.port, data, ts, command_class=MRImageStorage, sop_uid=uid, context_class=CTImageStorage) == 0x0122
    assert nothing_stored(server)


def test_rt_plan_under_a_ct_command_is_refused(server) -> None:
    path = bundled_file("rtplan.dcm")
    data, ts = dataset_of(path)
    ds = dcmread(path, stop_before_pixels=True)
    assert str(ds.SOPClassUID) == RTPlanStorage
    assert send(server.port, data, ts, command_class=CTImageStorage, sop_uid=str(ds.SOPInstanceUID)) == 0xA900
    assert nothing_stored(server)


def test_dataset_without_sop_class_is_refused(server, make_ct_series, tmp_path: Path) -> None:
    data, ts, uid = _encoded(make_ct_series, tmp_path, lambda ds: delattr(ds, "SOPClassUID"))
    assert send(server.port, data, ts, command_class=CTImageStorage, sop_uid=uid) == 0xA900
    assert nothing_stored(server)


# -- 3. peers are judged before they cost anything ----------------------------


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _try_connect(port: int, source: str) -> socket.socket | None:
    """A connection, or None when the server reset it before connect() returned (on loopback it can be that quick)."""
    try:
        return _connect(port, source)
    except ConnectionResetError:
        return None


def _closed_by_server(sock: socket.socket | None, within: float) -> bool:
    """Whether the server ends the connection within ``within`` seconds (EOF or reset)."""
    if sock is None:
        return True
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _association_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("assoc-"))


def test_disallowed_host_is_closed_at_accept_and_the_pacs_gets_in(make_server, make_ct_series) -> None:
    server = make_server(**{"listener.allowed_peers": ["127.0.0.1/32"], "listener.max_associations": 4})
    before = _association_threads()
    intruders = [_try_connect(server.port, OTHER_HOST) for _ in range(12)]
    try:
        assert all(_closed_by_server(s, within=2) for s in intruders)
        assert _association_threads() == before  # no thread, no association slot was spent on them
        [path] = make_ct_series(slices=1, size=32)
        data, ts = dataset_of(path)
        assert send(server.port, data, ts, command_class=CTImageStorage, sop_uid=str(dcmread(path).SOPInstanceUID)) == 0
    finally:
        for s in intruders:
            if s is not None:
                s.close()


def test_a_request_dripped_byte_by_byte_is_cut_at_the_artim_time(make_server) -> None:
    server = make_server(**{"listener.acse_timeout": 1.0, "listener.network_timeout": 5.0})
    rq = associate_rq()
    sock = _connect(server.port)
    started = time.monotonic()
    try:
        with pytest.raises(OSError):  # reset or broken pipe: the server closed the connection
            for byte in rq:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)  # each wait far below network_timeout
                if time.monotonic() - started > 10:
                    pytest.fail("still connected after 10 s of dripping")
            if _closed_by_server(sock, within=5):
                raise ConnectionResetError
        assert time.monotonic() - started < 3.0
    finally:
        sock.close()


def test_a_pdu_dripped_byte_by_byte_is_cut_at_the_pdu_deadline(make_server) -> None:
    server = make_server(**{"listener.network_timeout": 1.0})
    sock = _connect(server.port)
    try:
        sock.sendall(associate_rq())
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        started = time.monotonic()
        with pytest.raises(OSError):
            sock.sendall(struct.pack(">BBL", 0x04, 0, 200))  # a P-DATA-TF of 200 bytes, then one byte every 0.3 s
            for _ in range(200):
                time.sleep(0.3)
                sock.sendall(b"\x00")
                if time.monotonic() - started > 10:
                    pytest.fail("still connected after 10 s of dripping")
        assert time.monotonic() - started < 3.0
    finally:
        sock.close()


def test_connections_are_capped_per_address_and_in_total(make_server) -> None:
    server = make_server(**{"listener.max_per_peer": 2, "listener.max_associations": 4})
    held = [_connect(server.port, OTHER_HOST) for _ in range(2)]
    try:
        extra = _try_connect(server.port, OTHER_HOST)
        assert _closed_by_server(extra, within=2)  # the third from one address
        assert not any(_closed_by_server(s, within=0.2) for s in held)  # the first two wait for their request
        assert echo("127.0.0.1", server.port) < 5  # another address still gets in
        # In total: the association limit plus a margin for those still negotiating, then closed at accept.
        idle = [_try_connect(server.port, f"127.0.0.{i}") for i in range(10, 40)]
        time.sleep(0.5)
        assert _association_threads() <= 4 + 4
        for s in [*idle, extra]:
            if s is not None:
                s.close()
    finally:
        for s in held:
            s.close()


def _c_store_rq(sop_class: str, sop_uid: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), implicit VR little endian."""

    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, tag, len(value)) + value

    def uid(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    body = element(0x0002, uid(sop_class)) + element(0x0100, struct.pack("<H", 0x0001)) + element(0x0110, struct.pack("<H", 1))
    body += element(0x0700, struct.pack("<H", 2)) + element(0x0800, struct.pack("<H", 0x0000)) + element(0x1000, uid(sop_uid))
    return element(0x0000, struct.pack("<L", len(body))) + body


def _p_data(context_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">BBL", 0x04, 0, len(data) + 6) + struct.pack(">LBB", len(data) + 2, context_id, flags) + data


def test_an_unfinished_instance_streams_to_disk_and_is_removed_on_abort(server) -> None:
    sock = _connect(server.port)
    spools = server.settings.data_dir / "incoming"
    try:
        sock.sendall(associate_rq(abstract=CTImageStorage))
        assert sock.recv(1) == b"\x02"
        sock.recv(65536)
        sock.sendall(_p_data(1, 0x03, _c_store_rq(CTImageStorage, "1.2.3.4")))
        chunk = b"\x00" * 8000
        for _ in range(100):  # 800 kB of dataset, never marked last
            sock.sendall(_p_data(1, 0x00, chunk))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sizes = [p.stat().st_size for p in spools.iterdir()] if spools.exists() else []
            if sizes and max(sizes) >= 800_000:
                break
            time.sleep(0.05)
        assert sizes and max(sizes) >= 800_000  # on disk as it arrived, not held in memory
        sock.sendall(struct.pack(">BBL", 0x07, 0, 4) + b"\x00\x00\x00\x00")  # A-ABORT
    finally:
        sock.close()
    deadline = time.monotonic() + 5
    while any(spools.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(spools.iterdir())  # nothing was acknowledged, nothing is kept
    assert nothing_stored(server)


def test_an_instance_over_the_maximum_size_is_refused(make_server, make_ct_series) -> None:
    server = make_server(**{"listener.max_instance_mb": 1})
    [path] = make_ct_series(slices=1, size=1024)  # 2 MiB of pixels
    data, ts = dataset_of(path)
    assert send(server.port, data, ts, command_class=CTImageStorage, sop_uid=str(dcmread(path).SOPInstanceUID)) == 0xA700
    assert nothing_stored(server)


# -- 4. known peers and the called AE title -----------------------------------


def _associates(port: int, *, calling: str, called: str = "TRIAGE", source: str = "127.0.0.1") -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))
    if assoc.is_established:
        assoc.release()
        return True
    return False


def test_called_ae_title_must_be_ours(make_server, caplog) -> None:
    server = make_server()
    assert _associates(server.port, calling="PACS")
    assert not _associates(server.port, calling="PACS", called="SOMEONE")
    assert "called AE title 'SOMEONE' is not ours" in caplog.text
    routing = make_server(**{"listener.called_ae_titles": ["ROUTE_A"]})
    assert _associates(routing.port, calling="PACS", called="ROUTE_A")
    assert not _associates(routing.port, calling="PACS", called="ROUTE_B")
    anything = make_server(**{"listener.called_ae_titles": ["*"]})
    assert _associates(anything.port, calling="PACS", called="ROUTE_B")


def test_known_peers_bind_each_ae_title_to_its_hosts(make_server) -> None:
    peers = [{"ae_title": "PACS", "hosts": ["127.0.0.1"]}, {"ae_title": "CT1", "hosts": [f"{OTHER_HOST}/32"]}]
    server = make_server(**{"listener.peers": peers})
    assert _associates(server.port, calling="PACS")
    assert _associates(server.port, calling="CT1", source=OTHER_HOST)
    assert not _associates(server.port, calling="CT1")  # a known AE title from another peer's host
    assert not _associates(server.port, calling="PACS", source=OTHER_HOST)
    assert not _associates(server.port, calling="STRANGER")
    stranger = _try_connect(server.port, "127.0.0.3")  # no known peer there: closed at accept
    assert _closed_by_server(stranger, within=2)
    if stranger is not None:
        stranger.close()


def test_peers_and_allowed_ae_titles_together_is_a_config_error(make_settings) -> None:
    with pytest.raises(ConfigError, match="listener"):
        make_settings(**{"listener.peers": [{"ae_title": "PACS", "hosts": ["127.0.0.1"]}], "listener.allowed_ae_titles": ["PACS"]})


def test_a_tls_handshake_that_never_finishes_is_cut_at_the_artim_time(make_server, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    server = make_server(**{"listener.tls.cert": str(cert), "listener.tls.key": str(key), "listener.acse_timeout": 1.0})
    sock = _connect(server.port)
    started = time.monotonic()
    try:
        sock.sendall(b"\x16\x03\x01")  # the start of a TLS record, then silence
        assert _closed_by_server(sock, within=5)
        assert time.monotonic() - started < 3.0
    finally:
        sock.close()
