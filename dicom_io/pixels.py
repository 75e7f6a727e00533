"""Reading pixels: a CT/MR series as a HU volume, a radiograph as a display image.

Compressed transfer syntaxes are decoded by pydicom with the pylibjpeg plugins.
Every failure to read or decode becomes a ``PixelDataError`` whose one-line
message names the file (and the transfer syntax, for decoding), so a worker can
log it and move on.

In-plane pixel spacing is never assumed silently. Real headers carry ``0\\0``,
nothing, or values no scanner makes; such a Pixel Spacing falls back to Imager
Pixel Spacing (radiographs), then Reconstruction Diameter / Columns (CT), then
an estimate. ``spacing_source`` names which one was used and ``notes`` says so
in words, for the result a reader or researcher sees.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_io.errors import PixelDataError

# Direction cosines closer than this are the same orientation (they are stored
# as decimal strings of varying precision).
_ORIENTATION_TOL = 1e-3
# A gap that differs from the median gap by more than this fraction is reported.
_GAP_TOL = 0.1
_DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Plausible in-plane pixel spacing, mm. Radiographs: mammography detectors reach
# 0.05 mm, the coarsest CR plates about 0.2-0.3. CT: a 1024 matrix over a 100 mm
# field is 0.1 mm, a 256 matrix over 500 mm is 2 mm. Outside these the value is
# a placeholder (0\0) or a unit error, not a measurement.
XR_SPACING_RANGE_MM = (0.02, 5.0)
CT_SPACING_RANGE_MM = (0.1, 5.0)
# With no usable spacing tag, a radiograph's longer side is taken to span 430 mm:
# the long side of the 35x43 cm and 43x43 cm plates and flat panels that chest
# and most other films use. A smaller extremity plate then reads as coarser than
# it is (anatomy looks smaller), which the note says.
RADIOGRAPH_ESTIMATE_MM = 430.0
# CT without Pixel Spacing or Reconstruction Diameter: the display field of view
# usual for an adult head (220-250 mm) or body (320-400 mm). A header text naming
# the head decides; dicom_io does not depend on detectors.routing, hence the
# small word list here.
CT_HEAD_FOV_MM = 250.0
CT_BODY_FOV_MM = 350.0
_HEAD_WORDS = frozenset({"HEAD", "BRAIN", "SKULL", "CRANIUM", "CRANIAL", "NEURO", "CTH"})


@dataclass(frozen=True, slots=True)
class Volume:
    """A series as a volume in Hounsfield units (or the modality's rescaled values, for MR)."""

    hu: np.ndarray  # (slices, rows, cols), float32
    spacing_mm: tuple[float, float, float]  # (slice, row, col)
    sop_instance_uids: list[str]  # one per slice, in volume order (repeated for multi-frame)
    series_uid: str
    warnings: list[str] = field(default_factory=list)
    # Where the in-plane spacing came from: "PixelSpacing", "ReconstructionDiameter"
    # or "estimate"; ``notes`` says so in words whenever it is not Pixel Spacing.
    spacing_source: str = "PixelSpacing"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Radiograph:
    """A projection image for display and detection: bright means dense."""

    image: np.ndarray  # (rows, cols) float32 in [0, 1]
    pixel_spacing_mm: tuple[float, float] | None  # (row, col); load_radiograph always sets it
    sop_instance_uid: str
    photometric: str  # as stored, before MONOCHROME1 inversion
    # "PixelSpacing", "ImagerPixelSpacing" or "estimate"; ``notes`` says so in
    # words when the spacing is estimated or a Pixel Spacing was unusable.
    spacing_source: str = "PixelSpacing"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Frame:
    """Geometry and rescale of one slice, read from the header before decoding."""

    path: Path
    index: int  # frame index within the file
    sop_uid: str
    position: np.ndarray  # (3,), mm, Image Position (Patient)
    orientation: tuple[float, ...]  # (6,), row then column direction cosines
    shape: tuple[int, int]  # (rows, cols)
    pixel_spacing: tuple[float, float]  # (row, col), mm
    rescale: tuple[float, float] | None  # (slope, intercept) per frame; None: whole-dataset modality LUT
    spacing_source: str = "PixelSpacing"
    spacing_note: str | None = None  # set when the spacing is not the frame's Pixel Spacing


def _read(path: Path) -> Dataset:
    try:
        ds = dcmread(path)
    except Exception as exc:  # pydicom raises many types for bad files; all are "unreadable" to us
        raise PixelDataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise PixelDataError(f"{path}: has no Pixel Data")
    return ds


def _transfer_syntax(ds: Dataset) -> str:
    uid = getattr(ds.file_meta, "TransferSyntaxUID", None)
    return f"{uid.name} ({uid})" if uid else "unknown transfer syntax"


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """The stored values, decoded; any decoder failure becomes a PixelDataError."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError, ValueError, NotImplementedError, ...
        # Plugin errors span several lines; the message must stay on one.
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise PixelDataError(f"{path}: cannot decode pixel data in {_transfer_syntax(ds)}: {detail}") from exc
    return arr


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _shown(value: Any) -> str:
    """A tag value as the header shows it, for a note: ``0\\0``, ``missing``."""
    if value is None or value == "":
        return "missing"
    if isinstance(value, (str, bytes)):
        return str(value)
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


def _plausible_pair(value: Any, limits: tuple[float, float] | None) -> tuple[float, float] | None:
    """(row, col) spacing from a 2-valued tag if finite, positive and (given ``limits``) within them."""
    pair = _floats(value, 2)
    if pair is None or not all(np.isfinite(pair)) or min(pair) <= 0:
        return None
    if limits is not None and not all(limits[0] <= v <= limits[1] for v in pair):
        return None
    return pair[0], pair[1]


def _unusable(keyword: str, value: Any, limits: tuple[float, float] | None) -> str:
    if value is None or value == "":
        return f"{keyword} missing"
    allowed = f"{limits[0]:g}-{limits[1]:g} mm" if limits else "finite and > 0"
    return f"{keyword} {_shown(value)} unusable, must be {allowed}"


def _mm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3g} mm" if abs(pair[0] - pair[1]) < 1e-6 else f"{pair[0]:.3g} x {pair[1]:.3g} mm"


def radiograph_spacing(ds: Dataset) -> tuple[tuple[float, float], str, str | None]:
    """A projection image's (row, col) pixel spacing in mm, where it came from, and a note.

    Pixel Spacing (0028,0030) is the spacing in the patient plane when the
    equipment calibrated it; Imager Pixel Spacing (0018,1164) is at the
    detector's front plane, so anatomy is magnified by source-to-detector over
    source-to-patient distance, about 1.1 for a chest PA (PS3.3 C.8.11.7,
    10.7.1.3). The first usable of the two is taken; else the longer side is
    taken to span ``RADIOGRAPH_ESTIMATE_MM``.

    Returns
    -------
    tuple
        ``(spacing, source, note)``: source is "PixelSpacing",
        "ImagerPixelSpacing" or "estimate"; note is a sentence for the result
        when the spacing is estimated or Pixel Spacing was present but
        unusable, else None.
    """
    limits = XR_SPACING_RANGE_MM
    raw = ds.get("PixelSpacing")
    spacing = _plausible_pair(raw, limits)
    if spacing is not None:
        return spacing, "PixelSpacing", None
    why = _unusable("Pixel Spacing", raw, limits)
    imager_raw = ds.get("ImagerPixelSpacing")
    spacing = _plausible_pair(imager_raw, limits)
    if spacing is not None:
        # A DX without Pixel Spacing is the norm (it is Type 1C, present only
        # once calibrated; Imager Pixel Spacing is Type 1, PS3.3 C.8.11.7):
        # nothing to tell. A Pixel Spacing that is there but wrong is worth a note.
        note = (
            None
            if raw is None or raw == ""
            else (f"pixel spacing {_mm(spacing)} from Imager Pixel Spacing (measured at the detector: sizes read about 10% large): {why}")
        )
        return spacing, "ImagerPixelSpacing", note
    why += "; " + _unusable("Imager Pixel Spacing", imager_raw, limits)
    longer = max(int(ds.Rows), int(ds.Columns))
    # Clipped so that a thumbnail-sized image does not get a spacing no detector has.
    estimate = float(np.clip(RADIOGRAPH_ESTIMATE_MM / longer, *limits))
    return (
        (estimate, estimate),
        "estimate",
        (
            f"pixel spacing estimated as {estimate:.3g} mm (longer side of {longer} pixels taken to span a "
            f"{RADIOGRAPH_ESTIMATE_MM:.0f} mm detector; sizes approximate): {why}"
        ),
    )


def _ct_spacing(
    ds: Dataset, measures: Dataset | None, frame: int, enhanced: bool, shape: tuple[int, int]
) -> tuple[tuple[float, float], str, str | None]:
    """A CT/MR frame's (row, col) spacing, its source and a note; see ``load_volume``."""
    # Only CT has a plausible range worth enforcing: NM and PET pixels of 4-10 mm are real.
    limits = CT_SPACING_RANGE_MM if str(ds.get("Modality", "")).upper() == "CT" else None
    raw = measures.get("PixelSpacing") if measures else None
    spacing = _plausible_pair(raw, limits)
    if spacing is not None:
        return spacing, "PixelSpacing", None
    why = _unusable("Pixel Spacing", raw, limits)
    # Reconstruction Diameter (0018,1100) spans the reconstructed field, i.e. the
    # matrix's columns for the square fields CT reconstructs (PS3.3 C.8.2.1);
    # Enhanced CT keeps it in the CT Reconstruction functional group (C.8.15.3.4).
    reconstruction = _group(ds, frame, "CTReconstructionSequence") if enhanced else ds
    diameter_raw = reconstruction.get("ReconstructionDiameter") if reconstruction else None
    try:
        diameter = float(diameter_raw) if diameter_raw not in (None, "") else None
    except (TypeError, ValueError):
        diameter = None
    if diameter is not None and np.isfinite(diameter) and diameter > 0:
        step = diameter / shape[1]
        if limits is None or limits[0] <= step <= limits[1]:
            return (
                (step, step),
                "ReconstructionDiameter",
                (f"in-plane pixel spacing {step:.3g} mm from Reconstruction Diameter {diameter:g} mm / {shape[1]} columns: {why}"),
            )
    if diameter_raw in (None, ""):
        why += "; Reconstruction Diameter missing"
    else:
        why += f"; Reconstruction Diameter {_shown(diameter_raw)} unusable"
    texts = " ".join(str(ds.get(k, "") or "") for k in ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName"))
    head = bool(_HEAD_WORDS & set(re.sub(r"[^A-Z0-9]+", " ", texts.upper()).split()))
    fov = CT_HEAD_FOV_MM if head else CT_BODY_FOV_MM
    step = fov / shape[1]
    return (
        (step, step),
        "estimate",
        (
            f"in-plane pixel spacing estimated as {step:.3g} mm (a {fov:.0f} mm {'head' if head else 'body'} "
            f"field of view over {shape[1]} columns; sizes approximate): {why}"
        ),
    )


def _group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The functional group ``keyword`` for one frame: per-frame, else shared (PS3.3 C.7.6.16)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for item in (per_frame[frame] if per_frame else None, shared[0] if shared else None):
        if item is not None and item.get(keyword):
            return item.get(keyword)[0]
    return None


def _normal(orientation: Sequence[float]) -> np.ndarray:
    # The slice normal is row cosine x column cosine (PS3.3 C.7.6.2.1.1).
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def _frames(ds: Dataset, path: Path, warnings: list[str]) -> list[_Frame]:
    """One ``_Frame`` per slice in the dataset.

    Enhanced multi-frame objects take position, orientation, spacing and rescale
    from their functional groups. A plain multi-frame object (e.g. RT Dose, NM)
    has one Image Position for its first frame: the others are placed along the
    normal at Grid Frame Offset Vector, else at Spacing Between Slices / Slice
    Thickness steps.
    """
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PixelDataError(f"{path}: is a colour image ({ds.get('PhotometricInterpretation')}), not a CT/MR slice")
    n = int(ds.get("NumberOfFrames") or 1)
    shape = (int(ds.Rows), int(ds.Columns))
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    frames = []
    for k in range(n):
        plane = _group(ds, k, "PlanePositionSequence") if enhanced else ds
        orient = _group(ds, k, "PlaneOrientationSequence") if enhanced else ds
        measures = _group(ds, k, "PixelMeasuresSequence") if enhanced else ds
        value = _group(ds, k, "PixelValueTransformationSequence") if enhanced else None
        position = _floats(plane.get("ImagePositionPatient") if plane else None, 3)
        orientation = _floats(orient.get("ImageOrientationPatient") if orient else None, 6)
        if orientation is None:
            warnings.append(f"{path}: no Image Orientation (Patient); assuming axial")
            orientation = _DEFAULT_ORIENTATION
        if position is None:
            raise PixelDataError(f"{path}: frame {k + 1} has no Image Position (Patient); cannot place the slice")
        pos = np.asarray(position)
        if not enhanced and k > 0:
            offsets = _floats(ds.get("GridFrameOffsetVector"), n)
            step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
            pos = pos + _normal(orientation) * (offsets[k] - offsets[0] if offsets else k * step)
        rescale = None
        if enhanced:
            rescale = (float(value.get("RescaleSlope", 1.0)), float(value.get("RescaleIntercept", 0.0))) if value else (1.0, 0.0)
        row_col, source, note = _ct_spacing(ds, measures, k, enhanced, shape)
        frames.append(_Frame(path, k, sop_uid, pos, orientation, shape, row_col, rescale, source, note))
    return frames


def _check_consistent(frames: list[_Frame]) -> None:
    """Raise if the slices cannot form one volume: mixed orientation, matrix or pixel spacing."""
    first = frames[0]
    for f in frames[1:]:
        if not np.allclose(f.orientation, first.orientation, atol=_ORIENTATION_TOL):
            raise PixelDataError(f"inconsistent orientation: {f.path} has {f.orientation}, {first.path} has {first.orientation}")
        if f.shape != first.shape:
            raise PixelDataError(f"inconsistent matrix size: {f.path} is {f.shape}, {first.path} is {first.shape}")
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise PixelDataError(f"inconsistent pixel spacing: {f.path} has {f.pixel_spacing}, {first.path} has {first.pixel_spacing}")


def _drop_duplicates(frames: list[_Frame], along: np.ndarray, warnings: list[str]) -> list[_Frame]:
    """Keep one frame per SOP Instance UID + frame, and one per position, with a warning for each dropped."""
    kept: list[_Frame] = []
    seen: dict[tuple[str, int], float] = {}
    for f in frames:
        key, where = (f.sop_uid, f.index), float(f.position @ along)
        if f.sop_uid and key in seen:
            if abs(seen[key] - where) >= 1e-3:  # one UID, two places: which is the instance?
                raise PixelDataError(f"SOP Instance UID {f.sop_uid} occurs at two positions ({f.path})")
            warnings.append(f"duplicate SOP Instance UID {f.sop_uid} ({f.path}); kept one copy")
            continue
        seen[key] = where
        if kept and abs(float(f.position @ along) - float(kept[-1].position @ along)) < 1e-3:
            warnings.append(
                f"two slices at the same position {float(f.position @ along):.3f} mm "
                f"({kept[-1].sop_uid} and {f.sop_uid}); kept {kept[-1].sop_uid}"
            )
            continue
        kept.append(f)
    return kept


def _slice_spacing(frames: list[_Frame], along: np.ndarray, datasets: dict[Path, Dataset], warnings: list[str]) -> float:
    if len(frames) == 1:
        # A lone slice stands for the slab it was reconstructed from: its thickness. Spacing Between
        # Slices is the distance to neighbours it no longer has (a 5 mm slice from a 20 mm-spaced series).
        # Both are header values: a zero, negative or non-finite one is skipped.
        ds = datasets[frames[0].path]
        for value in (ds.get("SliceThickness"), ds.get("SpacingBetweenSlices")):
            try:
                mm = float(value) if value is not None else 0.0
            except (TypeError, ValueError):
                continue
            if math.isfinite(mm) and mm > 0:
                return mm
        return 1.0
    gaps = np.diff([float(f.position @ along) for f in frames])
    median = float(np.median(gaps))
    if np.any(np.abs(gaps - median) > _GAP_TOL * median):
        warnings.append(f"inconsistent slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm; using the median {median:.3f} mm")
    return median


def _report_shear(frames: list[_Frame], along: np.ndarray, slice_mm: float, warnings: list[str]) -> None:
    """Warn when consecutive slices are offset in-plane (a gantry tilt): the volume is read unsheared."""
    if len(frames) < 2:
        return
    step = frames[1].position - frames[0].position
    in_plane = float(np.linalg.norm(step - (step @ along) * along))
    if in_plane > 0.1 * min(frames[0].pixel_spacing):
        degrees = float(np.degrees(np.arctan2(in_plane, abs(slice_mm))))
        warnings.append(
            f"slices are offset {in_plane:.2f} mm in-plane from one to the next (gantry tilt about {degrees:.1f} "
            f"degrees); read as a stack along the slice normal, not resampled"
        )


def load_volume(paths: Iterable[str | Path]) -> Volume:
    """Assemble a CT/MR series (single-frame files, or multi-frame files) into a volume.

    Slices are ordered by their position along the slice normal (PS3.3
    C.7.6.2.1.1), never by Instance Number. Slice spacing is the median gap
    between positions measured along that normal, so a gantry-tilted series
    (rows and columns not axial, positions stepping along the table) is a
    stack like any other, its slice spacing the distance between the tilted
    planes; the in-plane offset between neighbours is reported in
    ``Volume.warnings``, as are uneven gaps and dropped duplicates. Slices of
    different orientation, matrix size, pixel spacing or series raise
    ``PixelDataError``: they are never mixed.

    In-plane spacing is Pixel Spacing when finite and, for CT, within
    ``CT_SPACING_RANGE_MM``; else Reconstruction Diameter / Columns (PS3.3
    C.8.2.1); else a ``CT_HEAD_FOV_MM`` or ``CT_BODY_FOV_MM`` field of view
    over the columns. ``Volume.spacing_source`` and ``Volume.notes`` say which.

    Parameters
    ----------
    paths
        The series' files, in any order.

    Returns
    -------
    Volume
        Rescaled values (Rescale Slope/Intercept or Modality LUT), float32.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise PixelDataError("no files given for the volume")
    warnings: list[str] = []
    datasets = {p: _read(p) for p in dict.fromkeys(files)}
    if len(datasets) < len(files):
        warnings.append("the same file was given more than once; read once")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets.values()}
    if len(series) > 1:
        raise PixelDataError(f"files from {len(series)} different series: {sorted(series)}")
    frames = [f for p, ds in datasets.items() for f in _frames(ds, p, warnings)]
    _check_consistent(frames)
    along = _normal(frames[0].orientation)
    # Ties broken by UID so that the slice kept of a duplicated pair is reproducible.
    frames.sort(key=lambda f: (float(f.position @ along), f.sop_uid, f.index))
    frames = _drop_duplicates(frames, along, warnings)
    slice_mm = _slice_spacing(frames, along, datasets, warnings)
    _report_shear(frames, along, slice_mm, warnings)

    decoded: dict[Path, np.ndarray] = {}
    hu = np.empty((len(frames), *frames[0].shape), dtype=np.float32)
    for i, f in enumerate(frames):
        if f.path not in decoded:
            ds = datasets[f.path]
            stored = _decode(ds, f.path)
            stored = stored.reshape(-1, *f.shape)  # (frames, rows, cols) even for one frame
            decoded[f.path] = stored if f.rescale else apply_modality_lut(stored, ds)
        values = decoded[f.path][f.index]
        if f.rescale:
            values = values * f.rescale[0] + f.rescale[1]
        hu[i] = values
    row_mm, col_mm = frames[0].pixel_spacing
    return Volume(
        hu=hu,
        spacing_mm=(slice_mm, row_mm, col_mm),
        sop_instance_uids=[f.sop_uid for f in frames],
        series_uid=series.pop(),
        warnings=warnings,
        spacing_source=frames[0].spacing_source,
        # One note for the series, not one per slice: the slices agree (checked above).
        notes=tuple(dict.fromkeys(f.spacing_note for f in frames if f.spacing_note)),
    )


def _has_voi(ds: Dataset) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def _to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:  # a flat image: nothing to show, and no division by zero
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def load_radiograph(path: str | Path) -> Radiograph:
    """Read a projection radiograph (CR, DX, MG or similar) as a [0, 1] display image.

    The Modality LUT (rescale or LUT) is applied, then the first VOI LUT or
    window (PS3.3 C.11.2), else a min/max window. The result is scaled to
    [0, 1] over the VOI output range, and MONOCHROME1 is inverted so that bright
    always means dense (PS3.3 C.7.6.3.1.2). The inversion comes after the VOI
    step because a MONOCHROME1 window is defined on the stored values, whose
    low end is the dense one.

    Pixel spacing is always set: see :func:`radiograph_spacing` for the order
    of fallbacks; ``spacing_source`` and ``notes`` say which was used.
    """
    path = Path(path)
    ds = _read(path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PixelDataError(f"{path}: is a colour image ({photometric}), not a radiograph")
    if int(ds.get("NumberOfFrames") or 1) != 1:
        raise PixelDataError(f"{path}: has {ds.NumberOfFrames} frames; a radiograph has one (use load_volume)")
    stored = _decode(ds, path)
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if _has_voi(ds):
        if "VOILUTSequence" in ds:  # a LUT is indexed by integer input values (PS3.3 C.11.2.1.1)
            values = np.rint(values).astype(np.int64)
        shown = apply_voi_lut(values, ds, index=0).astype(np.float64)
        # The VOI output range is what the window (or LUT) maps its ends to:
        # evaluate it at values far below and above every pixel.
        span = values.max() - values.min() + 1
        ends = np.array([values.min() - span, values.max() + span], dtype=values.dtype)
        lo, hi = (float(v) for v in apply_voi_lut(ends, ds, index=0))
        image = _to_unit(shown, min(lo, hi), max(lo, hi))
    else:
        image = _to_unit(values, float(values.min()), float(values.max()))
    if photometric == "MONOCHROME1":
        image = (1.0 - image).astype(np.float32)
    pixel_spacing, source, note = radiograph_spacing(ds)
    return Radiograph(
        image=image,
        pixel_spacing_mm=pixel_spacing,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        photometric=photometric,
        spacing_source=source,
        notes=(note,) if note else (),
    )
