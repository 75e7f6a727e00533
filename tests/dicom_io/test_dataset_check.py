"""check_dataset: real files pass in their own transfer syntax, broken ones and the probes fail."""

from __future__ import annotations

import functools
import mmap
import struct
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset

from dicom_io.dataset_check import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DatasetError,
    check_dataset,
)
from tests.support import REPO_ROOT, bundled_file

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG2000 = "1.2.840.10008.1.2.4.91"

# Bundled files pydicom reads without complaint that are not readable datasets.
BROKEN = {
    "MR_truncated.dcm": r"\(7FE0,0010\) at byte 1154: value length 8192 runs past the end",
    "rtplan_truncated.dcm": r"\(300A,00B0\) at byte 1110: value length 976 runs past the end",
    # Its file meta says JPEG Baseline (explicit VR) but the dataset is implicit VR;
    # pydicom silently switches.
    "SC_rgb_jpeg.dcm": r"\(0008,0008\) at byte 0: unknown VR",
    # A stray byte before the first element: pydicom reads one over-long element.
    "no_meta.dcm": r"\(0820,0500\) at byte 0: value length \d+ runs past the end",
    # Number of Frames "1A": how many frames the pixel data holds cannot be known.
    "badVR.dcm": r"\(0028,0008\) at byte 674: Number of Frames '1A' is not an integer",
}
BUNDLED = sorted(path.name for path in bundled_file("CT_small.dcm").parent.glob("*.dcm"))
SAMPLES = sorted((REPO_ROOT / "sample_studies").rglob("*.dcm"))


def split_part10(raw: bytes) -> tuple[bytes, str | None]:
    """The dataset bytes after the preamble and file meta, and the meta's Transfer Syntax UID."""
    pos = 132 if raw[128:132] == b"DICM" else 0
    transfer_syntax = None
    while pos + 8 <= len(raw):
        group, element = struct.unpack_from("<HH", raw, pos)
        if group != 0x0002:
            break
        if raw[pos + 4 : pos + 6] in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length, value = struct.unpack_from("<L", raw, pos + 8)[0], pos + 12
        else:
            length, value = struct.unpack_from("<H", raw, pos + 6)[0], pos + 8
        if element == 0x0010:
            transfer_syntax = raw[value : value + length].rstrip(b"\x00 ").decode()
        pos = value + length
    return raw[pos:], transfer_syntax


def dataset_of(path: Path) -> tuple[bytes, str]:
    """A file's dataset and its transfer syntax; without one in the meta, the encoding pydicom guessed."""
    data, transfer_syntax = split_part10(path.read_bytes())
    if transfer_syntax is None:
        implicit, little = dcmread(path, force=True, stop_before_pixels=True).original_encoding
        transfer_syntax = IMPLICIT_VR_LITTLE_ENDIAN if implicit else EXPLICIT_VR_LITTLE_ENDIAN if little else EXPLICIT_VR_BIG_ENDIAN
    return data, transfer_syntax


def encode(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def explicit(group: int, element: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the encoded length."""
    length = len(value) if length is None else length
    if vr in (b"OB", b"OD", b"OF", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, element, vr, 0, length) + value
    return struct.pack("<HH2sH", group, element, vr, length) + value


def item(value: bytes, *, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + value + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(value)) + value


SEQ_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
BASIC_TEXT_SR = b"1.2.840.10008.5.1.4.1.1.88.11"  # not an image: no pixel data required
UIDS = explicit(0x0008, 0x0016, b"UI", BASIC_TEXT_SR + b"\x00") + explicit(0x0008, 0x0018, b"UI", b"1.2.3.4 ")


def image(rows: int, columns: int, bits: int, pixels: int, *, frames: str | None = None, samples: int = 1) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, "MONOCHROME2" if samples == 1 else "RGB"
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = rows, columns, bits, bits, bits - 1, 0
    ds.PixelData = bytes(pixels)
    ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    return ds


@functools.cache
def ct_slice(implicit: bool) -> bytes:
    """A real CT slice (pydicom's CT_small, 128 x 128 x 16 bits) without its trailing padding."""
    ds = dcmread(bundled_file("CT_small.dcm"))
    del ds[0xFFFCFFFC]  # a cut just before optional trailing padding leaves a complete dataset
    return encode(ds, implicit=implicit)


@pytest.fixture
def ct() -> tuple[bytes, bytes]:
    """The CT slice, explicit and implicit VR little endian."""
    return ct_slice(False), ct_slice(True)


# -- real files ------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name in BUNDLED if name not in BROKEN])
def test_bundled_file_passes_in_its_own_transfer_syntax(name: str) -> None:
    path = bundled_file(name)
    data, transfer_syntax = dataset_of(path)
    facts = check_dataset(data, transfer_syntax)
    ds = dcmread(path, force=True)
    assert facts.elements == len(ds)
    assert facts.sop_class_uid == (ds.get("SOPClassUID") or None)
    assert facts.sop_instance_uid == (ds.get("SOPInstanceUID") or None)
    assert facts.has_pixel_data == ("PixelData" in ds)


@pytest.mark.parametrize(("name", "message"), sorted(BROKEN.items()))
def test_broken_bundled_file_fails(name: str, message: str) -> None:
    data, transfer_syntax = dataset_of(bundled_file(name))
    with pytest.raises(DatasetError, match=message):
        check_dataset(data, transfer_syntax)


def test_sample_studies_pass() -> None:
    assert SAMPLES, "no sample studies found"
    syntaxes = set()
    for path in SAMPLES:
        data, transfer_syntax = dataset_of(path)
        facts = check_dataset(data, transfer_syntax)
        assert facts.has_pixel_data and facts.sop_instance_uid, path
        syntaxes.add(transfer_syntax)
    assert len(syntaxes) >= 3  # native, RLE and JPEG 2000 are all there


def test_mmap_input_and_no_view_left_behind(tmp_path: Path, ct: tuple[bytes, bytes]) -> None:
    """The listener checks an mmap of the spooled file: it must close after a failure too."""
    path = tmp_path / "cut.bin"
    path.write_bytes(ct[0][:-3])
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with pytest.raises(DatasetError, match=r"\(7FE0,0010\)"):
            check_dataset(mapped, EXPLICIT_VR_LITTLE_ENDIAN)
        with pytest.raises(DatasetError, match="deflated dataset: invalid deflate data"):
            check_dataset(mapped, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)  # not deflate data at all
    assert mapped.closed


def test_facts_strip_padding_and_accept_group_lengths_and_trailing_padding() -> None:
    group_length = explicit(0x0008, 0x0000, b"UL", struct.pack("<L", 9999))  # wrong on purpose: not trusted
    padding = explicit(0xFFFC, 0xFFFC, b"OB", bytes(6))
    facts = check_dataset(group_length + UIDS + padding, EXPLICIT_VR_LITTLE_ENDIAN)
    assert (facts.sop_class_uid, facts.sop_instance_uid, facts.elements, facts.has_pixel_data) == (
        BASIC_TEXT_SR.decode(),
        "1.2.3.4",
        4,
        False,
    )


# -- probes ----------------------------------------------------------------


def test_cut_in_the_middle_of_an_element(ct: tuple[bytes, bytes]) -> None:
    # (0008,0005) is 18 bytes; (0008,0008) follows with a 22-byte value.
    with pytest.raises(DatasetError, match=r"^\(0008,0008\) at byte 18: value length 22 runs past the end \(4 bytes left\)$"):
        check_dataset(ct[0][:30], EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match=r"^byte 18: element header cut short \(2 of 8 bytes left\)$"):
        check_dataset(ct[0][:20], EXPLICIT_VR_LITTLE_ENDIAN)


def test_one_byte_short(ct: tuple[bytes, bytes]) -> None:
    for data, transfer_syntax in ((ct[0], EXPLICIT_VR_LITTLE_ENDIAN), (ct[1], IMPLICIT_VR_LITTLE_ENDIAN)):
        check_dataset(data, transfer_syntax)
        with pytest.raises(DatasetError, match=r"\(7FE0,0010\) at byte \d+: value length 32768 runs past the end \(32767 bytes left\)"):
            check_dataset(data[:-1], transfer_syntax)


def test_pixel_data_longer_than_what_follows() -> None:
    ds = image(4, 4, 16, 32)
    data = bytearray(encode(ds))
    at = data.index(b"\xe0\x7f\x10\x00OW")
    struct.pack_into("<L", data, at + 8, 34)
    with pytest.raises(DatasetError, match=rf"\(7FE0,0010\) at byte {at}: value length 34 runs past the end \(32 bytes left\)"):
        check_dataset(data, EXPLICIT_VR_LITTLE_ENDIAN)


def test_un_longer_than_what_follows() -> None:
    data = UIDS + explicit(0x0009, 0x1001, b"UN", b"0123456789", length=100)
    with pytest.raises(DatasetError, match=r"\(0009,1001\) at byte \d+: value length 100 runs past the end \(10 bytes left\)"):
        check_dataset(data, EXPLICIT_VR_LITTLE_ENDIAN)


def test_wrong_vr_mode_is_caught() -> None:
    explicit_data, _ = dataset_of(bundled_file("MR_small.dcm"))
    implicit_data, _ = dataset_of(bundled_file("MR_small_implicit.dcm"))
    with pytest.raises(DatasetError, match=r"\(0008,0008\) at byte 0: value length \d+ runs past the end"):
        check_dataset(explicit_data, IMPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match=r"\(0008,0008\) at byte 0: unknown VR"):
        check_dataset(implicit_data, EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="unknown VR"):
        check_dataset(explicit_data, EXPLICIT_VR_BIG_ENDIAN)  # byte-swapped header: VR lands elsewhere


def test_encapsulated_without_its_delimiter() -> None:
    data, _ = dataset_of(bundled_file("JPEG2000.dcm"))
    assert data.endswith(SEQ_DELIMITER)
    with pytest.raises(DatasetError, match=r"\(7FE0,0010\) at byte \d+: encapsulated Pixel Data ends without its Sequence Delimitation"):
        check_dataset(data[: -len(SEQ_DELIMITER)], JPEG2000)


def test_incomplete_fragment() -> None:
    data, _ = dataset_of(bundled_file("JPEG2000.dcm"))
    with pytest.raises(DatasetError, match=r"\(7FE0,0010\) at byte \d+: fragment item at byte \d+ of length \d+ runs past the end"):
        check_dataset(data[:-20], JPEG2000)


def test_encapsulated_structure_rules() -> None:
    rows = explicit(0x0028, 0x0010, b"US", b"\x02\x00") + explicit(0x0028, 0x0011, b"US", b"\x02\x00")
    pixel_header = explicit(0x7FE0, 0x0010, b"OB", b"", length=0xFFFFFFFF)
    good = UIDS + rows + pixel_header + item(b"") + item(b"\xff\xd8\xff\xd9") + SEQ_DELIMITER
    assert check_dataset(good, JPEG_BASELINE).has_pixel_data
    with pytest.raises(DatasetError, match="without a Basic Offset Table item and a fragment"):
        check_dataset(UIDS + rows + pixel_header + item(b"") + SEQ_DELIMITER, JPEG_BASELINE)
    with pytest.raises(DatasetError, match=r"\(0008,0016\) at byte \d+ where a fragment item belongs"):
        check_dataset(UIDS + rows + pixel_header + item(b"") + UIDS + SEQ_DELIMITER, JPEG_BASELINE)
    with pytest.raises(DatasetError, match="encapsulated\\) Pixel Data in a native transfer syntax"):
        check_dataset(good, EXPLICIT_VR_LITTLE_ENDIAN)


def test_native_pixel_data_shorter_than_the_image() -> None:
    check_dataset(encode(image(4, 4, 16, 32)), EXPLICIT_VR_LITTLE_ENDIAN)
    check_dataset(encode(image(4, 4, 16, 34)), EXPLICIT_VR_LITTLE_ENDIAN)  # padding past the need is accepted
    with pytest.raises(DatasetError, match=r"\(7FE0,0010\) at byte \d+: holds 30 bytes, fewer than the 32"):
        check_dataset(encode(image(4, 4, 16, 30)), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="holds 64 bytes, fewer than the 96 that 4 rows x 4 columns x 1 samples x 3 frames"):
        check_dataset(encode(image(4, 4, 16, 64, frames="3 ")), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="holds 46 bytes, fewer than the 48"):
        check_dataset(encode(image(4, 4, 8, 46, samples=3), implicit=True), IMPLICIT_VR_LITTLE_ENDIAN)
    # Rows and Columns are read in the dataset's byte order: 0x0100 little endian would be 256.
    check_dataset(encode(image(1, 1, 16, 2), little=False), EXPLICIT_VR_BIG_ENDIAN)
    with pytest.raises(DatasetError, match="fewer than the 2"):
        check_dataset(encode(image(1, 1, 16, 0), little=False), EXPLICIT_VR_BIG_ENDIAN)
    # Bits Allocated 1 packs the whole frame set: 10 x 10 x 3 frames = 300 bits = 38 bytes.
    check_dataset(encode(image(10, 10, 1, 38, frames="3")), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="fewer than the 38"):
        check_dataset(encode(image(10, 10, 1, 36, frames="3")), EXPLICIT_VR_LITTLE_ENDIAN)


def test_float_pixel_data_sized_by_its_own_bits() -> None:
    header = UIDS + explicit(0x0028, 0x0010, b"US", b"\x02\x00") + explicit(0x0028, 0x0011, b"US", b"\x02\x00")
    check_dataset(header + explicit(0x7FE0, 0x0008, b"OF", bytes(16)), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match=r"\(7FE0,0009\) at byte \d+: holds 16 bytes, fewer than the 32"):
        check_dataset(header + explicit(0x7FE0, 0x0009, b"OD", bytes(16)), EXPLICIT_VR_LITTLE_ENDIAN)


def test_cut_at_the_element_boundary_before_pixel_data(ct: tuple[bytes, bytes]) -> None:
    rows = ct[0].index(b"\x28\x00\x02\x00US")  # Samples per Pixel, the image pixel module's first
    with pytest.raises(DatasetError, match=rf"\(7FE0,0010\) at byte {rows}: missing: a CT Image Storage dataset ends without Pixel Data"):
        check_dataset(ct[0][:rows], EXPLICIT_VR_LITTLE_ENDIAN)
    at = ct[0].index(b"\xe0\x7f\x10\x00OW")
    with pytest.raises(
        DatasetError, match=rf"\(7FE0,0010\) at byte {at}: missing: the dataset has Rows or Columns but ends without Pixel Data"
    ):
        check_dataset(ct[0][:at], EXPLICIT_VR_LITTLE_ENDIAN)


def test_deflated(ct: tuple[bytes, bytes]) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(ct[0]) + compressor.flush()
    assert check_dataset(deflated, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).elements == check_dataset(ct[0], EXPLICIT_VR_LITTLE_ENDIAN).elements
    with pytest.raises(DatasetError, match=r"inflates past 10000 bytes \(max_inflated\)"):
        check_dataset(deflated, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, max_inflated=10_000)
    with pytest.raises(DatasetError, match="deflate stream is cut short"):
        check_dataset(deflated[:-10], DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="5 bytes after the end of the deflate stream"):
        check_dataset(deflated + b"extra", DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    # A whole deflate stream of a cut dataset: the walk of the inflated bytes refuses it.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with pytest.raises(DatasetError, match=r"\(7FE0,0010\) at inflated byte \d+: value length"):
        check_dataset(compressor.compress(ct[0][:-1]) + compressor.flush(), DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)


def nested(levels: int, *, undefined: bool) -> bytes:
    """``levels`` Content Sequences (0040,A730), each in an item of the one above."""
    body = explicit(0x0040, 0xA040, b"CS", b"TEXT")
    for _ in range(levels):
        if undefined:
            body = explicit(0x0040, 0xA730, b"SQ", item(body, undefined=True) + SEQ_DELIMITER, length=0xFFFFFFFF)
        else:
            body = explicit(0x0040, 0xA730, b"SQ", item(body))
    return UIDS + body


def test_deep_nesting() -> None:
    check_dataset(nested(20, undefined=True), EXPLICIT_VR_LITTLE_ENDIAN)
    check_dataset(nested(20, undefined=False), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match=r"\(0040,A730\) at byte \d+: sequences nested deeper than 64"):
        check_dataset(nested(65, undefined=True), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="nested deeper than 5"):
        check_dataset(nested(6, undefined=False), EXPLICIT_VR_LITTLE_ENDIAN, max_depth=5)
    check_dataset(nested(5, undefined=False), EXPLICIT_VR_LITTLE_ENDIAN, max_depth=5)


def test_sequence_and_item_rules() -> None:
    content = explicit(0x0040, 0xA040, b"CS", b"TEXT")
    seq_header = explicit(0x0040, 0xA730, b"SQ", b"", length=0xFFFFFFFF)
    with pytest.raises(DatasetError, match=r"\(0040,A730\) at byte \d+: undefined-length sequence ends without its Sequence Delimitation"):
        check_dataset(UIDS + seq_header + item(content), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="undefined-length item ends without its Item Delimitation"):
        check_dataset(UIDS + seq_header + item(content, undefined=True)[:-8], EXPLICIT_VR_LITTLE_ENDIAN)
    # A defined-length sequence must be filled by its items exactly.
    with pytest.raises(DatasetError, match=r"\(0040,A730\) at byte \d+: \(0040,A040\) at byte \d+ where an item belongs"):
        check_dataset(UIDS + explicit(0x0040, 0xA730, b"SQ", item(content) + content), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match="item at byte \\d+ of length 30 runs past the sequence's end"):
        check_dataset(
            UIDS + explicit(0x0040, 0xA730, b"SQ", item(content, undefined=False)[:4] + struct.pack("<L", 30) + content),
            EXPLICIT_VR_LITTLE_ENDIAN,
        )
    with pytest.raises(DatasetError, match=r"\(0040,A040\) at byte \d+: value length 4 runs past the end \(2 bytes left\)"):
        check_dataset(
            UIDS + explicit(0x0040, 0xA730, b"SQ", struct.pack("<HHL", 0xFFFE, 0xE000, 10) + content[:10]), EXPLICIT_VR_LITTLE_ENDIAN
        )
    with pytest.raises(DatasetError, match=r"\(0040,A160\) at byte \d+: undefined length on a UT element"):
        check_dataset(UIDS + explicit(0x0040, 0xA160, b"UT", b"", length=0xFFFFFFFF), EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(DatasetError, match=r"\(FFFE,E0DD\) at byte \d+: item or delimiter tag where a data element belongs"):
        check_dataset(UIDS + SEQ_DELIMITER, EXPLICIT_VR_LITTLE_ENDIAN)


def test_undefined_length_un_holds_implicit_items_even_in_big_endian() -> None:
    """PS3.5 6.2.2: the items of an undefined-length UN are implicit VR little endian."""
    inner = struct.pack("<HHL", 0x0040, 0xA040, 4) + b"TEXT"
    un = struct.pack(">HH2sHL", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF) + item(inner, undefined=True) + SEQ_DELIMITER
    check_dataset(un, EXPLICIT_VR_BIG_ENDIAN)
    with pytest.raises(DatasetError, match="runs past the end"):
        check_dataset(un.replace(inner, struct.pack("<HHL", 0x0040, 0xA040, 40) + b"TEXT"), EXPLICIT_VR_BIG_ENDIAN)


def test_implicit_dictionary_sequences_are_walked(ct: tuple[bytes, bytes]) -> None:
    """Implicit VR has no VR: a defined-length sequence is known by its tag (PS3.6)."""
    seq = struct.pack("<HHL", 0x0008, 0x1140, 16) + struct.pack("<HHL", 0xFFFE, 0xE000, 8) + struct.pack("<HHL", 0x0008, 0x1150, 4)
    with pytest.raises(DatasetError, match=r"\(0008,1150\) at byte 16: value length 4 runs past the end \(0 bytes left\)"):
        check_dataset(seq, IMPLICIT_VR_LITTLE_ENDIAN)
    check_dataset(seq[:4] + struct.pack("<L", 20) + seq[8:12] + struct.pack("<L", 12) + seq[16:] + b"1.2 ", IMPLICIT_VR_LITTLE_ENDIAN)


def test_empty_dataset() -> None:
    with pytest.raises(DatasetError, match="empty dataset"):
        check_dataset(b"", EXPLICIT_VR_LITTLE_ENDIAN)


# -- property: every cut of a real CT slice is refused -----------------------


def element_starts(data: bytes, implicit: bool) -> list[int]:
    """Top-level element offsets, found by pydicom (independent of the code under test)."""
    starts = []
    for raw in data_element_generator(BytesIO(data), implicit, True):
        long_header = not implicit and raw.VR in ("OB", "OW", "SQ", "UN", "UT")
        starts.append(raw.value_tell - (12 if long_header else 8))
    return starts


def refused(data: bytes, transfer_syntax: str) -> bool:
    """What the listener does: refuse what does not parse, or lacks the SOP Instance UID of the request."""
    try:
        facts = check_dataset(data, transfer_syntax)
    except DatasetError:
        return True
    # A cut at an element boundary before (0008,0018) parses; the request's UID is then missing.
    return facts.sop_instance_uid != "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


@pytest.mark.parametrize("implicit", [False, True])
def test_every_element_boundary_cut_is_refused(implicit: bool) -> None:
    data = ct_slice(implicit)
    transfer_syntax = IMPLICIT_VR_LITTLE_ENDIAN if implicit else EXPLICIT_VR_LITTLE_ENDIAN
    starts = element_starts(data, implicit)
    assert len(starts) > 200
    assert not refused(data, transfer_syntax)
    for cut in starts:
        assert refused(data[:cut], transfer_syntax), cut
        if cut > 120:  # past the SOP Instance UID: check_dataset itself refuses
            with pytest.raises(DatasetError, match="missing"):
                check_dataset(data[:cut], transfer_syntax)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(implicit=st.booleans(), draw=st.data())
def test_every_truncation_is_refused(implicit: bool, draw: st.DataObject) -> None:
    data = ct_slice(implicit)
    transfer_syntax = IMPLICIT_VR_LITTLE_ENDIAN if implicit else EXPLICIT_VR_LITTLE_ENDIAN
    # Half the cuts in the header (the first ~7 kB), where the elements are dense.
    cut = draw.draw(st.integers(0, 7_000) | st.integers(0, len(data) - 1), label="cut")
    assert not refused(data, transfer_syntax)
    assert refused(data[:cut], transfer_syntax)
