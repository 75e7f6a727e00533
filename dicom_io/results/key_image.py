"""Key images: a Secondary Capture of a finding's strongest region with its box and label burned in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_io.results.common import (
    AI_LABEL,
    KEY_IMAGE_SERIES_DESCRIPTION,
    KEY_IMAGE_SERIES_NUMBER,
    KEY_IMAGE_TEXT,
    FindingLike,
    ResultBuildError,
    check_study,
    finish,
    get,
    names_as_received,
    sex,
)

# --- key images: Secondary Capture with the region burned in ------------------------------------

# (center, width) of the display window per finding kind, for CT (HU).
KEY_IMAGE_WINDOWS: Mapping[str, tuple[float, float]] = {
    "bleed": (40.0, 80.0),  # brain
    "fracture": (500.0, 2000.0),  # bone
    "nodule": (-600.0, 1500.0),  # lung
}
_DEFAULT_WINDOW = (40.0, 400.0)  # soft tissue
_VOLUME_MODALITIES = {"CT", "MR", "PT"}

# A 5 x 7 bitmap font: the characters of the burned-in labels.
_FONT: Mapping[str, tuple[str, ...]] = {
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "C": (" ####", "#    ", "#    ", "#    ", "#    ", "#    ", " ####"),
    "D": ("#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ####", "#    ", "#    ", "#  ##", "#   #", "#   #", " ####"),
    "I": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "#####"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "N": ("#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    "=": ("     ", "     ", "#####", "     ", "#####", "     ", "     "),
    " ": ("     ",) * 7,
}


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """``text`` (upper-cased) in the 5 x 7 font, one blank column between characters: (7s, 6s·n) bool.

    Characters the font lacks are drawn as blanks.
    """
    if scale < 1:
        raise ValueError(f'Argument "scale" must be a positive integer, got {scale}')
    glyphs = [_FONT.get(ch, _FONT[" "]) for ch in text.upper()]
    if not glyphs:
        return np.zeros((7 * scale, 0), dtype=bool)
    cells = [np.array([[c == "#" for c in row] + [False] for row in g], dtype=bool) for g in glyphs]
    mask = np.concatenate(cells, axis=1)[:, :-1]  # no trailing gap
    return np.kron(mask, np.ones((scale, scale), dtype=bool))


def burn_in(image: np.ndarray, box: Sequence[int] | None, lines: Sequence[str]) -> np.ndarray:
    """A copy of an 8-bit grey ``image`` (rows, cols) with ``box`` outlined and ``lines`` written top left.

    The box, ``(row0, col0, row1, col1)`` half-open in pixels, is drawn in white
    just outside its edges (clipped to the image), so the marked pixels stay
    visible; the text is white on a black band so it reads on any anatomy.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f'Argument "image" must be a 2D uint8 array, got {image.dtype} {image.shape}')
    out = image.copy()
    rows, cols = out.shape
    thick = max(1, min(rows, cols) // 256)
    if box is not None:
        r0, c0, r1, c1 = (int(v) for v in box)
        top, left = max(0, r0 - thick), max(0, c0 - thick)
        bottom, right = min(rows, r1 + thick), min(cols, c1 + thick)
        out[top : min(rows, max(0, r0)), left:right] = 255
        out[max(0, min(rows, r1)) : bottom, left:right] = 255
        out[top:bottom, left : min(cols, max(0, c0))] = 255
        out[top:bottom, max(0, min(cols, c1)) : right] = 255
    scale = max(1, cols // 256)
    pad = 2 * scale
    y = pad
    for line in lines:
        mask = text_mask(line, scale)
        h, w = mask.shape
        w = min(w, cols - 2 * pad)
        if y + h + pad > rows or w <= 0:
            break
        out[y - scale : y + h + scale, pad - scale : pad + w + scale] = 0
        region = out[y : y + h, pad : pad + w]
        region[mask[:, :w]] = 255
        y += h + 3 * scale
    return out


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    scaled = (values.astype(np.float64) - lo) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class KeyImageSource:
    """The slice a key image shows, ready to draw on."""

    pixels: np.ndarray  # (rows, cols) uint8, display grey
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    pixel_spacing: tuple[float, float] | None  # (row, col) mm
    patient_orientation: tuple[str, str] | None  # None: not known


def _orientation(header: Dataset) -> tuple[str, str] | None:
    """Patient Orientation of the slice: from the header, else from Image Orientation (Patient)."""
    stored = header.get("PatientOrientation")
    if stored and len(stored) == 2 and all(str(v) for v in stored):
        return str(stored[0]), str(stored[1])
    cosines = header.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return None

    def letters(v: Sequence[float]) -> str:
        # PS3.3 C.7.6.1.1.1: +x left, +y posterior, +z head; the dominant axis first.
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        order = np.argsort(-np.abs(np.asarray(v, dtype=float)))
        return "".join(names[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) > 0.25) or "L"

    return letters([float(c) for c in cosines[:3]]), letters([float(c) for c in cosines[3:]])


def key_image_source(path: str | Path, kind: str, slice_index: int | None = None) -> KeyImageSource:
    """Read the slice a key image shows (``dicom_io.pixels``), windowed for ``kind`` on CT.

    ``slice_index`` picks the frame of a multi-frame file; single-frame files have one.

    Raises
    ------
    dicom_io.pixels.PixelDataError
        If the pixels cannot be read.
    """
    from dicom_io.pixels import load_radiograph, load_volume

    header = dcmread(path, stop_before_pixels=True)
    modality = str(header.get("Modality", "")).upper()
    if modality in _VOLUME_MODALITIES:
        volume = load_volume([path])
        index = slice_index if slice_index is not None and 0 <= slice_index < volume.hu.shape[0] else 0
        values = volume.hu[index if volume.hu.shape[0] > 1 else 0]
        if modality == "CT":
            pixels = _window(values, *KEY_IMAGE_WINDOWS.get(kind, _DEFAULT_WINDOW))
        else:  # no HU: the 1st to 99th percentile
            lo, hi = np.percentile(values, [1, 99])
            pixels = _window(values, (lo + hi) / 2.0, max(float(hi - lo), 1e-6))
        spacing: tuple[float, float] | None = (float(volume.spacing_mm[1]), float(volume.spacing_mm[2]))
    else:
        radiograph = load_radiograph(path)
        pixels = (np.clip(radiograph.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        spacing = radiograph.pixel_spacing_mm
    return KeyImageSource(
        pixels=pixels,
        sop_class_uid=str(header.SOPClassUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        series_uid=str(header.SeriesInstanceUID),
        pixel_spacing=spacing,
        patient_orientation=_orientation(header),
    )


def key_image_lines(finding: FindingLike) -> list[str]:
    """The burned-in label: that it is an AI suggestion, the finding kind and its probability."""
    return [KEY_IMAGE_TEXT, f"{finding.kind} P={finding.probability:.2f}"]


def build_key_image(
    study: Mapping[str, Any],
    finding: FindingLike,
    source: KeyImageSource,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int = 1,
    manufacturer: str = "triage",
    content_time: datetime | None = None,
    zone: tzinfo | None = None,
) -> Dataset:
    """A Secondary Capture of the finding's strongest region: the box and "AI SUGGESTION" burned in.

    ``source`` is that region's slice (:func:`key_image_source`); the region is
    the finding's first (regions are stored strongest first).
    ``content_time`` (aware, default now) and ``zone`` (the site's) are as for
    :func:`dicom_io.results.ai_sr.build_ai_sr`.

    Raises
    ------
    ResultBuildError
        If the finding has no region, or its region is not on ``source``.
    """
    check_study(study)
    if not finding.regions:
        raise ResultBuildError(f"finding {finding.id}: no region to show in a key image")
    region = finding.regions[0]
    if str(region.get("sop_instance_uid")) != source.sop_instance_uid:
        raise ResultBuildError(
            f"finding {finding.id}: its strongest region is on {region.get('sop_instance_uid')}, "
            f"not on the image given ({source.sop_instance_uid})"
        )
    pixels = burn_in(source.pixels, region["box"], key_image_lines(finding))
    with names_as_received():
        sc = _sc_image(study, pixels, source, sop_instance_uid, series_instance_uid, instance_number, manufacturer)
    if source.patient_orientation is None:
        sc.PatientOrientation = ""  # Type 2: present and empty when not known (PS3.3 C.7.6.1)
    sc.SpecificCharacterSet = "ISO_IR 192"
    sc.BurnedInAnnotation = "YES"  # PS3.3 C.7.6.1.1.7: the label and box are in the pixels
    sc.ImageComments = f"{AI_LABEL}: {finding.kind}, probability {finding.probability:.2f}"
    sc.DerivationDescription = f"{AI_LABEL}; {finding.model_name} {finding.model_version}"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uid
    sc.SourceImageSequence = [reference]
    return finish(sc, KEY_IMAGE_SERIES_DESCRIPTION, content_time or datetime.now(UTC), zone)


def _sc_image(
    study: Mapping[str, Any],
    pixels: np.ndarray,
    source: KeyImageSource,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int,
    manufacturer: str,
) -> Dataset:
    return hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=check_study(study),
        series_instance_uid=series_instance_uid,
        series_number=KEY_IMAGE_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_id=get(study, "patient_id") or None,
        patient_name=get(study, "patient_name") or None,
        patient_birth_date=get(study, "patient_birth_date") or None,
        patient_sex=sex(get(study, "patient_sex")) or None,
        accession_number=get(study, "accession_number") or None,
        study_id=get(study, "study_id") or None,
        study_date=get(study, "study_date") or None,
        study_time=get(study, "study_time") or None,
        referring_physician_name=get(study, "referring_physician") or None,
        pixel_spacing=source.pixel_spacing,
        # highdicom wants an orientation for patient coordinates; an unknown one is written empty after.
        patient_orientation=source.patient_orientation or ("L", "P"),
    )
