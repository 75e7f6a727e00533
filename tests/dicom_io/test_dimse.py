"""The hand-made encodings, checked against pydicom's readers."""

from __future__ import annotations

import socket
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filereader import read_dataset, read_file_meta_info

from dicom_io import dimse
from dicom_io.send import echo


def test_file_meta_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "meta.dcm"
    path.write_bytes(dimse.file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.4.90", "ODDAE", "TRIAGE_1.2.3_AND_MORE"))
    meta = read_file_meta_info(path)
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"  # odd length, padded with NUL
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert meta.SourceApplicationEntityTitle.strip() == "ODDAE"
    assert meta.ImplementationVersionName == "TRIAGE_1.2.3_AND"  # injected by the caller, 16 characters at most
    assert meta.FileMetaInformationGroupLength == len(path.read_bytes()) - 132 - 12


def test_response_command_set_reads_back() -> None:
    raw = dimse.response(dimse.C_STORE_RSP, 7, 0xA700, "1.2.840.10008.5.1.4.1.1.2", "1.2.3")
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 7, 0xA700)
    assert ds.AffectedSOPInstanceUID == "1.2.3" and ds.CommandGroupLength == len(raw) - 12
    assert dimse.parse_command(raw)["affected_sop_instance"] == "1.2.3"


def test_malformed_pdv_is_refused() -> None:
    with pytest.raises(ValueError):
        list(dimse.pdvs(b"\x00\x00\x00\x10\x01\x03abc"))  # claims 16 bytes, has 5


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not DICOM at all
        dimse.pdu(dimse.P_DATA_TF, b"\x00\x00\x00\x04\x01\x03ab"),  # data before any association
        dimse.pdu(dimse.A_ASSOCIATE_RQ, b"\x00\x01\x00\x00" + b"x" * 20),  # a truncated request
        b"\x01\x00\xff\xff\xff\xf0",  # claims a 4 GiB PDU
    ],
)
def test_garbage_on_the_port_is_dropped_and_listener_keeps_serving(server, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(garbage)
        reply = b""
        try:  # the listener may drop the connection before we are done: that is what is tested
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(4096):
                reply += chunk
        except (ConnectionResetError, OSError):
            pass
    assert reply in (b"", dimse.abort())
    assert echo("127.0.0.1", server.port) < 5
