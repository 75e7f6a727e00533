"""Walking a received dataset to its end in its transfer syntax, without decoding pixels.

A C-STORE is acknowledged only when its dataset is readable (ARCHITECTURE:
"a success status means readable"). Reading the header with pydicom
(``stop_before_pixels``) accepts datasets cut short in their pixel data or at an
element boundary, and pydicom forgives much else (it switches VR mode on a
guess, reads what is left of a truncated value). :func:`check_dataset` is the
strict, fast check: it walks every element header of the dataset, nested
sequences and encapsulated fragments included, skipping values by their length
(no copies, no pixel decoding), and checks that

- every element and every value lies within the data (PS3.5 7.1);
- defined-length sequences and items are exactly filled by what they hold,
  undefined-length ones end with their delimiters (PS3.5 7.5);
- in explicit VR every VR is one of PS3.5 Table 6.2-1, which is what catches
  implicit-VR bytes sent under an explicit-VR transfer syntax (and an absurd
  length running past the end catches the converse);
- native pixel data holds at least the bytes its image attributes need
  (PS3.5 8.1.1, PS3.3 C.7.6.3), encapsulated pixel data is a complete
  Basic Offset Table plus fragments ended by its delimiter (PS3.5 A.4), and
  an image (Rows and Columns at the top level) has pixel data at all.

Value contents (a malformed date, an IS of "1A") are not checked: they do not
make the dataset unreadable.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary
from pydicom.uid import UID

from dicom_io.errors import DicomIOError

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired, still sent by old modalities
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

# Transfer syntaxes whose whole dataset is deflated (PS3.5 A.5): the deflated
# explicit VR one and the JPIP Referenced Deflate ones (PS3.5 A.6, A.7). The
# Deflated Image Frame Compression syntax (1.2.840.10008.1.2.8.1) deflates the
# frames only: its dataset is plain explicit VR with encapsulated pixel data.
_DEFLATED = frozenset({DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"})
# JPIP Referenced syntaxes carry no pixel data: a Pixel Data Provider URL instead (PS3.5 A.6).
_JPIP_REFERENCED = frozenset({"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205"})
# Native (unencapsulated) pixel data; every other syntax encapsulates it (PS3.5 A.4).
_NATIVE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}) | _DEFLATED | _JPIP_REFERENCED

# PS3.5 Table 6.2-1: the VRs. Explicit VR gives OB, OD, OF, OL, OV, OW, SQ,
# SV, UC, UN, UR, UT and UV a 2-byte reserved field and a 4-byte length, the
# others a 2-byte length (PS3.5 7.1.2); SQ and UN may hold items.
_SHORT, _LONG, _SQ, _UN = range(4)
_VR_KIND: dict[bytes, int] = {
    **dict.fromkeys((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT"), _SHORT),
    **dict.fromkeys((b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"), _SHORT),
    **dict.fromkeys((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SV", b"UC", b"UR", b"UT", b"UV"), _LONG),
    b"SQ": _SQ,
    b"UN": _UN,
}

# Implicit VR carries no VR: which tags are sequences comes from the data
# dictionary (PS3.5 7.1.3, PS3.6). Private sequences of defined length are
# then only bounds-checked, as opaque values.
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

_UNDEFINED = 0xFFFFFFFF
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_SAMPLES_PER_PIXEL = 0x00280002
_PHOTOMETRIC = 0x00280004
_NUMBER_OF_FRAMES = 0x00280008
_ROWS = 0x00280010
_COLUMNS = 0x00280011
_BITS_ALLOCATED = 0x00280100
_PIXEL_DATA_PROVIDER_URL = 0x00287FE0
_FLOAT_PIXEL_DATA = 0x7FE00008
_DOUBLE_PIXEL_DATA = 0x7FE00009
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = {_FLOAT_PIXEL_DATA: 32, _DOUBLE_PIXEL_DATA: 64, _PIXEL_DATA: 0}
_FACT_TAGS = frozenset(
    {
        _SOP_CLASS_UID,
        _SOP_INSTANCE_UID,
        _SAMPLES_PER_PIXEL,
        _PHOTOMETRIC,
        _NUMBER_OF_FRAMES,
        _ROWS,
        _COLUMNS,
        _BITS_ALLOCATED,
        _PIXEL_DATA_PROVIDER_URL,
    }
)

# Element headers (PS3.5 7.1.2, 7.1.3) and item headers (PS3.5 7.5, never a VR).
_EXPLICIT = {False: struct.Struct("<HH2sH"), True: struct.Struct(">HH2sH")}
_TAG_LENGTH = {False: struct.Struct("<HHL"), True: struct.Struct(">HHL")}
_IMPLICIT = _TAG_LENGTH[False]  # implicit VR is little endian only
_U32 = {False: struct.Struct("<L"), True: struct.Struct(">L")}
_U16 = {False: struct.Struct("<H"), True: struct.Struct(">H")}

_PIXEL_CLASSES_NOT_NAMED_IMAGE = frozenset(
    {"Segmentation Storage", "Parametric Map Storage", "Ophthalmic Thickness Map Storage", "Corneal Topography Map Storage"}
)

DEFAULT_MAX_INFLATED = 1 << 30  # 1 GiB: a deflated dataset is held inflated in memory
DEFAULT_MAX_DEPTH = 64  # nested sequences; real SR content trees stay well below
_INFLATE_CHUNK = 1 << 20


class DatasetError(DicomIOError):
    """A dataset does not parse to its end in its transfer syntax; the message names the tag and byte offset."""


@dataclass(frozen=True, slots=True)
class DatasetFacts:
    """What walking a readable dataset found at its top level.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid
        SOP Class UID (0008,0016) and SOP Instance UID (0008,0018), without
        trailing NUL or space padding; None when absent.
    elements
        Number of top-level data elements.
    has_pixel_data
        Whether Pixel Data (7FE0,0010), Float or Double Float Pixel Data is present.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    elements: int
    has_pixel_data: bool


def _pixel_class_name(sop_class_uid: str | None) -> str | None:
    """The name of a SOP class whose IOD requires the Image Pixel module, or None.

    Every "... Image Storage" class has it (PS3.3 A.1.4), and so do a few
    classes named otherwise; RT Dose does not (its pixels are conditional).
    """
    if not sop_class_uid:
        return None
    uid = UID(sop_class_uid)
    name = uid.name
    if uid.type == "SOP Class" and ("Image Storage" in name or name in _PIXEL_CLASSES_NOT_NAMED_IMAGE):
        return name
    return None


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """One walk over one buffer; ``unit`` names the offsets in messages ("byte" or "inflated byte")."""

    __slots__ = ("buf", "big", "encapsulated", "max_depth", "unit", "found", "pixel", "explicit_header", "u32", "item")

    def __init__(self, buf: memoryview, big: bool, encapsulated: bool, max_depth: int, unit: str) -> None:
        self.buf = buf
        self.big = big
        self.encapsulated = encapsulated
        self.max_depth = max_depth
        self.unit = unit
        self.found: dict[int, tuple[int, int]] = {}  # top-level tag -> (value offset, length)
        self.pixel: tuple[int, int, int] | None = None  # (tag, header offset, length or _UNDEFINED)
        self.explicit_header = _EXPLICIT[big].unpack_from
        self.u32 = _U32[big].unpack_from
        self.item = _TAG_LENGTH[big].unpack_from

    def error(self, tag: int | None, pos: int, what: str) -> DatasetError:
        where = f"{_tag(tag)} at {self.unit} {pos}" if tag is not None else f"{self.unit} {pos}"
        return DatasetError(f"{where}: {what}")

    def past_end(self, tag: int, pos: int, length: int, left: int) -> DatasetError:
        return self.error(tag, pos, f"value length {length} runs past the end ({max(left, 0)} bytes left)")

    # -- datasets --------------------------------------------------------

    def explicit(self, pos: int, end: int, depth: int, in_item: bool) -> tuple[int, int]:
        """Walk explicit-VR elements from ``pos``; return (offset after, element count).

        ``in_item``: an undefined-length item, which ends at its Item
        Delimitation Item before ``end`` (PS3.5 7.5.2); otherwise the elements
        must fill ``end - pos`` exactly.
        """
        buf = self.buf
        header = self.explicit_header
        vr_kinds = _VR_KIND
        fact_tags = _FACT_TAGS
        found = self.found if depth == 0 else None
        count = 0
        while pos + 8 <= end:
            group, elem, vr, length = header(buf, pos)
            kind = vr_kinds.get(vr)
            if kind == _SHORT and group != 0xFFFE:
                # The common case, kept short: a 2-byte length (PS3.5 7.1.2).
                after = pos + 8 + length
                if after > end:
                    raise self.past_end(group << 16 | elem, pos, length, end - pos - 8)
                if found is not None and group << 16 | elem in fact_tags:
                    found[group << 16 | elem] = (pos + 8, length)
                pos = after
                count += 1
                continue
            tag = group << 16 | elem
            if group == 0xFFFE:
                if elem == 0xE00D and in_item:
                    return pos + 8, count
                raise self.error(tag, pos, "item or delimiter tag where a data element belongs (PS3.5 7.5)")
            if kind is None:
                raise self.error(tag, pos, f"unknown VR {bytes(vr)!r} for explicit VR (PS3.5 Table 6.2-1): is it implicit VR?")
            if pos + 12 > end:
                raise self.error(tag, pos, f"element header cut short ({end - pos} of 12 bytes left)")
            (length,) = self.u32(buf, pos + 8)
            value = pos + 12
            count += 1
            if length == _UNDEFINED:
                # PS3.5 7.1.2: undefined length only for SQ, UN (a sequence in
                # implicit VR little endian, PS3.5 6.2.2) and encapsulated Pixel Data.
                if kind == _SQ:
                    pos = self.sequence(tag, value, end, True, depth + 1, False)
                elif kind == _UN:
                    pos = self.sequence(tag, value, end, True, depth + 1, True)
                elif tag == _PIXEL_DATA:
                    if found is not None:
                        self.pixel = (_PIXEL_DATA, pos, _UNDEFINED)
                    pos = self.fragments(pos, value, end)
                else:
                    raise self.error(tag, pos, f"undefined length on a {vr.decode()} element (PS3.5 7.1.2)")
                continue
            after = value + length
            if after > end:
                raise self.past_end(tag, pos, length, end - value)
            if kind == _SQ and length:
                self.sequence(tag, value, after, False, depth + 1, False)
            if found is not None:
                if tag in fact_tags:
                    found[tag] = (value, length)
                elif tag in _PIXEL_TAGS:
                    self.pixel = (tag, pos, length)
            pos = after
        if pos < end:
            raise self.error(None, pos, f"element header cut short ({end - pos} of 8 bytes left)")
        if in_item:
            raise self.error(None, pos, "undefined-length item ends without its Item Delimitation Item (FFFE,E00D)")
        return pos, count

    def implicit(self, pos: int, end: int, depth: int, in_item: bool) -> tuple[int, int]:
        """As :meth:`explicit`, for implicit VR little endian (PS3.5 7.1.3)."""
        buf = self.buf
        header = _IMPLICIT.unpack_from
        sq_tags = _SQ_TAGS
        fact_tags = _FACT_TAGS
        found = self.found if depth == 0 else None
        count = 0
        while pos + 8 <= end:
            group, elem, length = header(buf, pos)
            tag = group << 16 | elem
            if group == 0xFFFE:
                if elem == 0xE00D and in_item:
                    return pos + 8, count
                raise self.error(tag, pos, "item or delimiter tag where a data element belongs (PS3.5 7.5)")
            count += 1
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:
                    if found is not None:
                        self.pixel = (_PIXEL_DATA, pos, _UNDEFINED)
                    pos = self.fragments(pos, pos + 8, end)
                else:  # SQ or UN: either way a sequence of implicit VR items (PS3.5 7.5.1)
                    pos = self.sequence(tag, pos + 8, end, True, depth + 1, True)
                continue
            after = pos + 8 + length
            if after > end:
                raise self.past_end(tag, pos, length, end - pos - 8)
            if length and tag in sq_tags:
                self.sequence(tag, pos + 8, after, False, depth + 1, True)
            if found is not None:
                if tag in fact_tags:
                    found[tag] = (pos + 8, length)
                elif tag in _PIXEL_TAGS:
                    self.pixel = (tag, pos, length)
            pos = after
        if pos < end:
            raise self.error(None, pos, f"element header cut short ({end - pos} of 8 bytes left)")
        if in_item:
            raise self.error(None, pos, "undefined-length item ends without its Item Delimitation Item (FFFE,E00D)")
        return pos, count

    # -- sequences and fragments ----------------------------------------

    def sequence(self, tag: int, pos: int, end: int, undefined: bool, depth: int, implicit: bool) -> int:
        """Walk the items of sequence ``tag``; return the offset after it.

        Defined length: the items fill ``end - pos`` exactly. Undefined: the
        items end with a Sequence Delimitation Item before ``end`` (PS3.5 7.5.2).
        Items inside an implicit-VR sequence are little endian whatever the
        transfer syntax (a UN sequence in big endian, PS3.5 6.2.2).
        """
        start = pos
        if depth > self.max_depth:
            raise self.error(tag, start, f"sequences nested deeper than {self.max_depth}")
        buf = self.buf
        item = _IMPLICIT.unpack_from if implicit else self.item
        walk = self.implicit if implicit else self.explicit
        while True:
            if not undefined and pos == end:
                return pos
            if pos + 8 > end:
                if undefined:
                    raise self.error(tag, start, "undefined-length sequence ends without its Sequence Delimitation Item (FFFE,E0DD)")
                raise self.error(tag, start, f"item header at {self.unit} {pos} cut short by the sequence's end")
            group, elem, length = item(buf, pos)
            if group == 0xFFFE and elem == 0xE000:
                if length == _UNDEFINED:
                    pos, _ = walk(pos + 8, end, depth, True)
                else:
                    after = pos + 8 + length
                    if after > end:
                        raise self.error(tag, start, f"item at {self.unit} {pos} of length {length} runs past the sequence's end")
                    walk(pos + 8, after, depth, False)
                    pos = after
            elif group == 0xFFFE and elem == 0xE0DD and undefined:
                return pos + 8
            else:
                raise self.error(tag, start, f"{_tag(group << 16 | elem)} at {self.unit} {pos} where an item belongs (PS3.5 7.5)")

    def fragments(self, header: int, pos: int, end: int) -> int:
        """Walk encapsulated Pixel Data: Basic Offset Table, fragments, delimiter (PS3.5 A.4)."""
        if not self.encapsulated:
            raise self.error(_PIXEL_DATA, header, "undefined length (encapsulated) Pixel Data in a native transfer syntax (PS3.5 A.4)")
        buf = self.buf
        item = _IMPLICIT.unpack_from  # encapsulated syntaxes are all little endian
        items = 0
        while True:
            if pos + 8 > end:
                raise self.error(_PIXEL_DATA, header, "encapsulated Pixel Data ends without its Sequence Delimitation Item (FFFE,E0DD)")
            group, elem, length = item(buf, pos)
            if group == 0xFFFE and elem == 0xE000 and length != _UNDEFINED:
                if pos + 8 + length > end:
                    what = "Basic Offset Table" if items == 0 else "fragment"
                    raise self.error(_PIXEL_DATA, header, f"{what} item at {self.unit} {pos} of length {length} runs past the end")
                items += 1
                pos += 8 + length
            elif group == 0xFFFE and elem == 0xE0DD:
                if items < 2:
                    raise self.error(
                        _PIXEL_DATA, header, "encapsulated Pixel Data without a Basic Offset Table item and a fragment (PS3.5 A.4)"
                    )
                return pos + 8
            else:
                raise self.error(
                    _PIXEL_DATA, header, f"{_tag(group << 16 | elem)} at {self.unit} {pos} where a fragment item belongs (PS3.5 A.4)"
                )

    # -- the image rules -------------------------------------------------

    def text(self, tag: int) -> str | None:
        spot = self.found.get(tag)
        if spot is None:
            return None
        value, length = spot
        return self.buf[value : value + length].tobytes().decode("ascii", "replace").rstrip("\x00 ") or None

    def us(self, tag: int) -> int | None:
        spot = self.found.get(tag)
        if spot is None or spot[1] < 2:
            return None
        return int(_U16[self.big].unpack_from(self.buf, spot[0])[0])

    def check_pixels(self, end: int, jpip: bool) -> None:
        """An image has pixel data, and native pixel data is long enough (PS3.3 C.7.6.3, PS3.5 8.1.1)."""
        rows, columns = self.us(_ROWS), self.us(_COLUMNS)
        if self.pixel is None:
            if jpip or _PIXEL_DATA_PROVIDER_URL in self.found:
                return  # the pixels are fetched by JPIP (PS3.5 A.6)
            # A dataset cut exactly at an element boundary parses: only what
            # is missing gives it away.
            if rows is not None or columns is not None:
                raise self.error(_PIXEL_DATA, end, "missing: the dataset has Rows or Columns but ends without Pixel Data (cut short?)")
            name = _pixel_class_name(self.text(_SOP_CLASS_UID))
            if name is not None:
                raise self.error(_PIXEL_DATA, end, f"missing: a {name} dataset ends without Pixel Data (cut short?)")
            return
        tag, header, length = self.pixel
        bits = _PIXEL_TAGS[tag] or self.us(_BITS_ALLOCATED)
        if length == _UNDEFINED or rows is None or columns is None or bits is None:
            return
        samples = self.us(_SAMPLES_PER_PIXEL) or 1
        if samples == 3 and (self.text(_PHOTOMETRIC) or "").strip() in ("YBR_FULL_422", "YBR_PARTIAL_422"):
            samples = 2  # native 4:2:2 stores two chroma samples per two pixels (PS3.3 C.7.6.3.1.2)
        frames_text = self.text(_NUMBER_OF_FRAMES)
        try:
            frames = int(frames_text.strip()) if frames_text and frames_text.strip() else 1
        except ValueError:
            raise self.error(
                _NUMBER_OF_FRAMES, self.found[_NUMBER_OF_FRAMES][0], f"Number of Frames {frames_text!r} is not an integer"
            ) from None
        need = (rows * columns * samples * frames * bits + 7) // 8  # bits allocated 1: packed across frames
        if length < need:
            raise self.error(
                tag,
                header,
                f"holds {length} bytes, fewer than the {need} that {rows} rows x {columns} columns"
                f" x {samples} samples x {frames} frames x {bits} bits need",
            )


def _inflate(view: memoryview, max_inflated: int) -> bytearray:
    """Raw-inflate a deflated dataset (PS3.5 A.5) in chunks, refusing more than ``max_inflated`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pos = 0

    def more(chunk: bytes) -> bytes:
        # max_length bounds memory: at most one byte past the limit is ever produced
        produced = inflater.decompress(chunk, max_inflated - len(out) + 1)
        if len(out) + len(produced) > max_inflated:
            raise DatasetError(f"deflated dataset inflates past {max_inflated} bytes (max_inflated)")
        return produced

    try:
        while pos < len(view) and not inflater.eof:
            # A copy, not a slice: no view of the caller's buffer (an mmap)
            # may outlive this call in an exception's traceback, or the caller
            # could not close it.
            out += more(view[pos : pos + _INFLATE_CHUNK].tobytes())
            pos = min(pos + _INFLATE_CHUNK, len(view))
            while inflater.unconsumed_tail and not inflater.eof:
                out += more(inflater.unconsumed_tail)
        while not inflater.eof:  # output zlib still holds after the last input
            produced = more(b"")
            if not produced:
                break
            out += produced
    except zlib.error as exc:
        raise DatasetError(f"deflated dataset: invalid deflate data before byte {pos}: {exc}") from None
    if not inflater.eof:
        raise DatasetError(f"deflated dataset: the deflate stream is cut short at byte {len(view)}")
    trailing_length = len(inflater.unused_data) + len(view) - pos
    trailing = inflater.unused_data + view[pos:].tobytes() if trailing_length <= 9 else b"?"
    # An odd-length deflate stream may be padded with one NUL to even length
    # (PS3.5 A.5); some encoders (the deflated sample in pydicom's test data)
    # leave gzip's trailer, CRC-32 and size of the inflated bytes (RFC 1952),
    # which is accepted only when it matches. Anything else after the stream
    # is not part of the dataset.
    gzip_trailer = struct.pack("<LL", zlib.crc32(out), len(out) & 0xFFFFFFFF)
    if trailing not in (b"", b"\x00", gzip_trailer, gzip_trailer + b"\x00"):
        raise DatasetError(
            f"deflated dataset: {trailing_length} bytes after the end of the deflate stream at byte {len(view) - trailing_length}"
        )
    return out


def check_dataset(
    data: bytes | bytearray | memoryview | mmap.mmap,
    transfer_syntax: str,
    *,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> DatasetFacts:
    """Walk a dataset to its end in its transfer syntax, without decoding pixels.

    Parameters
    ----------
    data
        The dataset as received over DIMSE: no preamble, no file meta.
    transfer_syntax
        Its transfer syntax UID: implicit VR little endian, explicit VR little
        or big endian, deflated (inflated here, then walked), or any other,
        walked as explicit VR little endian with encapsulated pixel data.
    max_inflated
        Most bytes a deflated dataset may inflate to.
    max_depth
        Most levels of nested sequences.

    Returns
    -------
    DatasetFacts
        The top-level SOP Class and Instance UIDs and element count.

    Raises
    ------
    DatasetError
        One line naming the tag and byte offset where the dataset stops being
        readable: cut short, a length past the end, an unknown VR, a sequence
        or item without its delimiter, pixel data too short or missing.
    """
    ts = transfer_syntax.rstrip("\x00 ")
    with memoryview(data) as raw, raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw as view:
        if ts in _DEFLATED:
            with memoryview(_inflate(view, max_inflated)) as inflated:
                return _walk(inflated, ts, max_depth, "inflated byte")
        return _walk(view, ts, max_depth, "byte")


def _walk(view: memoryview, ts: str, max_depth: int, unit: str) -> DatasetFacts:
    if len(view) == 0:
        raise DatasetError("empty dataset")
    walker = _Walker(view, ts == EXPLICIT_VR_BIG_ENDIAN, ts not in _NATIVE, max_depth, unit)
    if ts == IMPLICIT_VR_LITTLE_ENDIAN:
        end, count = walker.implicit(0, len(view), 0, False)
    else:
        end, count = walker.explicit(0, len(view), 0, False)
    walker.check_pixels(end, ts in _JPIP_REFERENCED)
    return DatasetFacts(
        sop_class_uid=walker.text(_SOP_CLASS_UID),
        sop_instance_uid=walker.text(_SOP_INSTANCE_UID),
        elements=count,
        has_pixel_data=walker.pixel is not None,
    )
