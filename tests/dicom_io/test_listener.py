"""The listener over real associations on loopback (pynetdicom SCU -> our SCP)."""

from __future__ import annotations

import random
import shutil
import sqlite3
import ssl
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_io.send import echo
from dicom_io.writer import StudyMeta
from tests.scu import store
from tests.support import bundled_file, self_signed_cert
from triage.errors import DicomNetworkError

HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"

# One bundled pydicom file per transfer syntax family.
TRANSFER_SYNTAX_FILES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1"),  # explicit VR little endian
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),  # implicit VR little endian
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),  # explicit VR big endian
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),  # deflated explicit VR little endian
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),  # RLE lossless
]


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta: what travels in the C-STORE."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def index_rows(data_dir: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(data_dir / "triage.db") as conn:
        return conn.execute(sql, args).fetchall()


def stored_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "studies").rglob("*.dcm")) if (data_dir / "studies").exists() else []


def test_echo(server) -> None:
    assert echo("127.0.0.1", server.port) < 5


@pytest.mark.parametrize(("name", "ts"), TRANSFER_SYNTAX_FILES, ids=[n for n, _ in TRANSFER_SYNTAX_FILES])
def test_store_keeps_bytes_as_received(server, tmp_path: Path, name: str, ts: str) -> None:
    source = bundled_file(name)
    ds = dcmread(source)
    assert str(ds.file_meta.TransferSyntaxUID) == ts
    if "StudyInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
        # Some bundled files lack them; the store needs both to place the file.
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        source = tmp_path / name
        ds.save_as(source)

    assert store(server.port, [source]) == [0x0000]

    data_dir = server.settings.data_dir
    [(relpath, sha, row_ts)] = index_rows(data_dir, "select path, sha256, transfer_syntax from instance")
    stored = data_dir / relpath
    assert row_ts == ts
    assert dataset_bytes(stored) == dataset_bytes(source)  # not decoded and re-encoded
    import hashlib

    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha


def test_store_htj2k(server, tmp_path: Path) -> None:
    # No HTJ2K file is bundled with pydicom: relabel a JPEG 2000 one. The listener
    # stores encapsulated bytes without decoding, so the label is what is tested.
    ds = dcmread(bundled_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = HTJ2K_LOSSLESS
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path)
    assert store(server.port, [path]) == [0x0000]
    [(ts,)] = index_rows(server.settings.data_dir, "select transfer_syntax from instance")
    assert ts == HTJ2K_LOSSLESS


def test_same_instance_twice_is_stored_once(server, make_ct_series) -> None:
    [path] = make_ct_series(slices=1)
    assert store(server.port, [path, path]) == [0x0000, 0x0000]
    assert store(server.port, [path]) == [0x0000]
    data_dir = server.settings.data_dir
    assert index_rows(data_dir, "select count(*), sum(conflicts) from instance") == [(1, 0)]
    assert index_rows(data_dir, "select num_instances from series") == [(1,)]
    assert len(stored_files(data_dir)) == 1


def test_other_payload_with_same_uid_keeps_the_first(server, make_ct_series, tmp_path: Path) -> None:
    [path] = make_ct_series(slices=1)
    changed = dcmread(path)
    changed.PatientName = "OTHER^NAME"
    other = tmp_path / "other.dcm"
    changed.save_as(other)

    assert store(server.port, [path, other]) == [0x0000, 0x0000]

    data_dir = server.settings.data_dir
    [(relpath, conflicts)] = index_rows(data_dir, "select path, conflicts from instance")
    assert conflicts == 1
    assert dataset_bytes(data_dir / relpath) == dataset_bytes(path)
    kept = list((data_dir / "conflicts").rglob("*.dcm"))
    assert len(kept) == 1 and dataset_bytes(kept[0]) == dataset_bytes(other)


def test_same_uid_in_another_series_keeps_the_first(server, make_ct_series, tmp_path: Path) -> None:
    [path] = make_ct_series(slices=1)
    moved = dcmread(path)
    moved.SeriesInstanceUID = generate_uid()
    other = tmp_path / "moved.dcm"
    moved.save_as(other)
    assert store(server.port, [path, other]) == [0x0000, 0x0000]
    data_dir = server.settings.data_dir
    assert index_rows(data_dir, "select count(*), sum(conflicts) from instance") == [(1, 1)]
    assert index_rows(data_dir, "select count(*) from series") == [(1,)]
    assert len(stored_files(data_dir)) == 1  # the second file was not left in the store


def test_uid_mismatch_is_refused(server, make_ct_series, tmp_path: Path) -> None:
    [path] = make_ct_series(slices=1)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request's UID, not the dataset's
    bad = tmp_path / "mismatch.dcm"
    ds.save_as(bad)
    assert store(server.port, [bad]) == [0xA900]
    assert stored_files(server.settings.data_dir) == []
    assert index_rows(server.settings.data_dir, "select count(*) from instance") == [(0,)]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", "../../etc"),
        ("SeriesInstanceUID", "1.2.3/4"),
        ("StudyInstanceUID", "1." + "2" * 70),  # over 64 characters
        ("SeriesInstanceUID", "1.02.3"),  # leading zero in a component
    ],
)
def test_invalid_uid_is_refused_before_touching_a_path(server, make_ct_series, tmp_path: Path, keyword: str, value: str) -> None:
    [path] = make_ct_series(slices=1)
    ds = dcmread(path)
    setattr(ds, keyword, value)
    bad = tmp_path / "bad_uid.dcm"
    ds.save_as(bad)
    assert store(server.port, [bad]) == [0xC211]
    data_dir = server.settings.data_dir
    assert stored_files(data_dir) == []
    assert not any(p.name == "etc" for p in data_dir.rglob("*"))


def test_instance_without_study_uid_is_refused(server, make_ct_series, tmp_path: Path) -> None:
    [path] = make_ct_series(slices=1)
    ds = dcmread(path)
    del ds.StudyInstanceUID
    bad = tmp_path / "no_study.dcm"
    ds.save_as(bad)
    assert store(server.port, [bad]) == [0xC211]
    assert stored_files(server.settings.data_dir) == []


def test_malformed_dataset_is_refused_and_listener_keeps_serving(server, make_ct_series, tmp_path: Path) -> None:
    [good] = make_ct_series(slices=1)
    meta, offset = split_dataset(good)
    garbage = tmp_path / "garbage.dcm"
    # Valid file meta, then bytes that are no dataset.
    garbage.write_bytes(good.read_bytes()[:offset] + random.Random(0).randbytes(600))

    assert store(server.port, [garbage, good]) == [0xC210, 0x0000]
    assert echo("127.0.0.1", server.port) < 5
    assert len(stored_files(server.settings.data_dir)) == 1


def test_disk_below_reserve_is_refused(make_server, make_ct_series) -> None:
    server = make_server(**{"listener.min_free_mb": 1 << 40})
    [path] = make_ct_series(slices=1)
    assert store(server.port, [path]) == [0xA700]
    assert stored_files(server.settings.data_dir) == []
    assert index_rows(server.settings.data_dir, "select count(*) from instance") == [(0,)]


def test_unwritable_store_is_refused(server, make_ct_series) -> None:
    # The studies folder is a file: every write fails with an OS error.
    studies = server.settings.data_dir / "studies"
    shutil.rmtree(studies, ignore_errors=True)
    studies.write_bytes(b"not a folder")
    [path] = make_ct_series(slices=1)
    assert store(server.port, [path]) == [0xA700]
    assert index_rows(server.settings.data_dir, "select count(*) from instance") == [(0,)]
    assert echo("127.0.0.1", server.port) < 5


def test_index_failure_is_refused_and_leaves_no_file(server, make_ct_series) -> None:
    with sqlite3.connect(server.settings.data_dir / "triage.db") as conn:
        conn.execute("drop table instance")
    [path] = make_ct_series(slices=1)
    assert store(server.port, [path]) == [0xA701]
    assert stored_files(server.settings.data_dir) == []


def test_calling_ae_allow_list(make_server) -> None:
    server = make_server(**{"listener.allowed_ae_titles": ["GOODAE"]})
    assert echo("127.0.0.1", server.port, calling_ae="GOODAE") < 5
    with pytest.raises(DicomNetworkError, match="rejected"):
        echo("127.0.0.1", server.port, calling_ae="BADAE")


def test_peer_address_allow_list(make_server, caplog) -> None:
    server = make_server(**{"listener.allowed_peers": ["10.0.0.0/8"]})
    # Closed at accept, before any thread or association slot: the peer sees the connection reset.
    with pytest.raises(DicomNetworkError, match="could not be established"):
        echo("127.0.0.1", server.port, timeout=3)
    assert "closed at accept: address not allowed" in caplog.text
    allowed = make_server(**{"listener.allowed_peers": ["127.0.0.0/8"]})
    assert echo("127.0.0.1", allowed.port) < 5


def test_concurrent_associations(make_server, make_ct_series) -> None:
    server = make_server(**{"listener.max_associations": 16})
    series = [make_ct_series(slices=3, size=32, meta=StudyMeta(patient_id=f"P{i}")) for i in range(16)]
    results: list[list[int]] = [[] for _ in series]
    barrier = threading.Barrier(len(series))

    def send(i: int) -> None:
        barrier.wait()
        results[i] = store(server.port, series[i], calling_ae=f"SCU{i}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(series))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [[0, 0, 0]] * 16
    data_dir = server.settings.data_dir
    assert index_rows(data_dir, "select count(*), sum(num_instances) from study") == [(16, 48)]
    assert len(stored_files(data_dir)) == 48


def test_association_limit_rejects_the_extra_one(make_server) -> None:
    server = make_server(**{"listener.max_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    holder = ae.associate("127.0.0.1", server.port, ae_title="TRIAGE")
    try:
        assert holder.is_established
        with pytest.raises(DicomNetworkError, match="rejected"):
            echo("127.0.0.1", server.port)
    finally:
        holder.release()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(make_server, tmp_path: Path, make_ct_series) -> None:
    cert, key = self_signed_cert(tmp_path)
    server = make_server(**{"listener.tls.cert": str(cert), "listener.tls.key": str(key), "listener.tls.ca": str(cert)})
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    client_ctx.load_cert_chain(str(cert), str(key))  # the same self-signed pair serves as client cert
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TRIAGE", tls_args=(client_ctx, "localhost"))
    assert assoc.is_established
    [path] = make_ct_series(slices=1)
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    # Without TLS the association cannot be set up.
    with pytest.raises(DicomNetworkError):
        echo("127.0.0.1", server.port, timeout=3)
