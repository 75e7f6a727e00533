"""The few DICOM encodings the receive path needs, by hand: PDU framing
(PS3.8 9.3), command sets (PS3.7 E, implicit VR little endian) and the Part 10
file meta (PS3.10 7.1).

pynetdicom encodes these through pydicom datasets, which costs more CPU than
the rest of a C-STORE; these functions build the same bytes directly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

# Command fields (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATASET = 0x0101

_UI, _US, _UL = 0, 1, 2
# (element, kind) of the command elements we read; all in group 0000.
_COMMAND_KEYS = {
    0x0002: ("affected_sop_class", _UI),
    0x0100: ("command_field", _US),
    0x0110: ("message_id", _US),
    0x0800: ("data_set_type", _US),
    0x1000: ("affected_sop_instance", _UI),
}


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def release_rp() -> bytes:
    return pdu(A_RELEASE_RP, b"\x00\x00\x00\x00")


def abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 2 = service provider."""
    return pdu(A_ABORT, bytes([0, 0, source, reason]))


def associate_rj(result: int, source: int, diagnostic: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return pdu(A_ASSOCIATE_RJ, bytes([0, result, source, diagnostic]))


def p_data_command(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF with a single PDV: a whole command set, last fragment."""
    return pdu(P_DATA_TF, struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command)


def pdvs(body: bytes | memoryview) -> Iterator[tuple[int, bool, bool, memoryview]]:
    """The PDV items of a P-DATA-TF body: ``(context id, is command, is last, data)``."""
    view = memoryview(body)
    pos, end = 0, len(view)
    while pos + 6 <= end:
        length, context_id, header = struct.unpack_from(">LBB", view, pos)
        if length < 2 or pos + 4 + length > end:
            raise ValueError("malformed PDV item")
        yield context_id, bool(header & 1), bool(header & 2), view[pos + 6 : pos + 4 + length]
        pos += 4 + length
    if pos != end:
        raise ValueError("trailing bytes in P-DATA-TF")


def parse_command(data: bytes) -> dict[str, int | str]:
    """The command elements we use, from an implicit VR little endian command set."""
    out: dict[str, int | str] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHL", data, pos)
        value = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
        if group != 0:
            break
        key = _COMMAND_KEYS.get(element)
        if key is None:
            continue
        name, kind = key
        if kind == _UI:
            out[name] = value.rstrip(b"\x00 ").decode("ascii", "replace")
        elif kind == _US and length == 2:
            out[name] = struct.unpack("<H", value)[0]
    return out


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def response(command_field: int, message_id: int, status: int, sop_class: str, sop_instance: str | None) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set (PS3.7 9.3.1.2, 9.3.5.2)."""
    body = _element(0x0002, _uid(sop_class)) + _element(0x0100, struct.pack("<H", command_field))
    body += _element(0x0120, struct.pack("<H", message_id)) + _element(0x0800, struct.pack("<H", NO_DATASET))
    body += _element(0x0900, struct.pack("<H", status))
    if sop_instance:
        body += _element(0x1000, _uid(sop_instance))
    return _element(0x0000, struct.pack("<L", len(body))) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH", 2, element) + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str, implementation_version: str) -> bytes:
    """Preamble, prefix and File Meta Information (explicit VR LE) of a Part 10 file."""
    body = _explicit(0x0001, b"OB", b"\x00\x01")
    body += _explicit(0x0002, b"UI", _uid(sop_class)) + _explicit(0x0003, b"UI", _uid(sop_instance))
    body += _explicit(0x0010, b"UI", _uid(transfer_syntax))
    body += _explicit(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID))
    body += _explicit(0x0013, b"SH", _text(implementation_version[:16]))
    if source_ae:
        body += _explicit(0x0016, b"AE", _text(source_ae[:16]))
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", struct.pack("<L", len(body))) + body
