"""Series -> fixed-size network items, and the geometry to map heatmaps back.

Every item of a detector has one shape (its card's ``input.height`` x
``input.width`` at ``input.spacing_mm``), whatever the scanner's matrix and
field of view: slices are resampled to the card's pixel size (so a 5 mm bleed
is the same number of pixels on every scanner), then cropped or padded around
the body's centre. Pure functions of their arguments; torch is used only for
antialiased resampling on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.base import DetectionError, Family, Prepared, SeriesArrays
from detectors.spec import DetectorSpec, InputSpec

AIR_HU = -1024.0
BODY_HU = -500.0  # above this is the patient (or the table); below is air


@dataclass(frozen=True)
class Geometry:
    """How item pixel (r, c) relates to source pixel (row, col): row = (r + origin_r) / scale_r."""

    scale: tuple[float, float]  # resampled pixels per source pixel (rows, cols)
    origin: tuple[int, int]  # top-left of the item in resampled pixels (may be negative: padding)
    source_shape: tuple[int, int]  # (rows, cols) of the series

    def to_source_box(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """An item-pixel box (row0, col0, row1, col1) -> a clipped source-pixel box."""
        r0, c0, r1, c1 = box
        sr, sc = self.scale
        rows, cols = self.source_shape
        out = (
            int(np.floor((r0 + self.origin[0]) / sr)),
            int(np.floor((c0 + self.origin[1]) / sc)),
            int(np.ceil((r1 + self.origin[0]) / sr)),
            int(np.ceil((c1 + self.origin[1]) / sc)),
        )
        return (min(max(out[0], 0), rows), min(max(out[1], 0), cols), min(max(out[2], 0), rows), min(max(out[3], 0), cols))

    def valid_mask(self, height: int, width: int) -> np.ndarray:
        """(height, width) bool: item pixels that come from the image, not from padding."""
        rows = np.arange(height) + self.origin[0]
        cols = np.arange(width) + self.origin[1]
        in_r = (rows >= 0) & (rows < round(self.source_shape[0] * self.scale[0]))
        in_c = (cols >= 0) & (cols < round(self.source_shape[1] * self.scale[1]))
        return in_r[:, None] & in_c[None, :]


def resample(pixels: np.ndarray, spacing_rc: tuple[float, float], target_mm: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Resample (slices, rows, cols) in-plane to ``target_mm`` pixels; returns (array, scale)."""
    import torch
    import torch.nn.functional as F

    sr, sc = (float(s) for s in spacing_rc)
    if not (sr > 0 and sc > 0):
        raise DetectionError(f"pixel spacing must be positive, got {spacing_rc}")
    rows, cols = pixels.shape[1:]
    out_rows, out_cols = max(1, round(rows * sr / target_mm)), max(1, round(cols * sc / target_mm))
    scale = (out_rows / rows, out_cols / cols)
    if (out_rows, out_cols) == (rows, cols):
        return np.ascontiguousarray(pixels, dtype=np.float32), scale
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[:, None]
        # Antialiasing when shrinking keeps thin high-contrast edges (skull,
        # cortex) from aliasing into bright specks that look like findings.
        out = F.interpolate(
            t, size=(out_rows, out_cols), mode="bilinear", align_corners=False, antialias=out_rows < rows or out_cols < cols
        )
    return out[:, 0].numpy(), scale


def body_centre(pixels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Centroid (row, col) of everything above ``threshold`` in any slice; the image centre if none."""
    mask = (pixels > threshold).any(axis=0)
    if not mask.any():
        return ((pixels.shape[1] - 1) / 2, (pixels.shape[2] - 1) / 2)
    rows, cols = np.nonzero(mask)
    return (float(rows.mean()), float(cols.mean()))


def crop_or_pad(
    pixels: np.ndarray, centre: tuple[float, float], height: int, width: int, fill: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """A (slices, height, width) window of (slices, rows, cols) centred on ``centre``; returns (window, origin)."""
    n, rows, cols = pixels.shape
    r0 = int(round(centre[0] - height / 2))
    c0 = int(round(centre[1] - width / 2))
    # Keep the image inside the window when it fits, so nothing is cut for an off-centre body.
    r0 = min(max(r0, rows - height), 0) if rows <= height else min(max(r0, 0), rows - height)
    c0 = min(max(c0, cols - width), 0) if cols <= width else min(max(c0, 0), cols - width)
    return crop_at(pixels, (r0, c0), height, width, fill), (r0, c0)


def crop_at(pixels: np.ndarray, origin: tuple[int, int], height: int, width: int, fill: float) -> np.ndarray:
    """The (slices, height, width) window of ``pixels`` whose top-left is ``origin``, padded with ``fill``."""
    n, rows, cols = pixels.shape
    r0, c0 = origin
    out = np.full((n, height, width), fill, dtype=np.float32)
    sr0, sc0 = max(r0, 0), max(c0, 0)
    sr1, sc1 = min(r0 + height, rows), min(c0 + width, cols)
    if sr1 > sr0 and sc1 > sc0:
        out[:, sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = pixels[:, sr0:sr1, sc0:sc1]
    return out


def neighbour_step(spec: InputSpec, slice_spacing_mm: float) -> int:
    """Slices between an item's slice and its nearest context slice.

    With ``context_mm`` set, neighbours are that far away whatever the slice
    thickness (0.625 mm slices look 3 mm away, like 3 mm slices do), so a
    detector sees the same anatomy around a slice on every scanner.
    """
    if spec.context_mm <= 0 or slice_spacing_mm <= 0:
        return 1
    return max(1, round(spec.context_mm / slice_spacing_mm))


def window_channels(hu: np.ndarray, spec: InputSpec, slice_spacing_mm: float = 0.0) -> np.ndarray:
    """(slices, h, w) HU -> (slices, channels, h, w) in [0, 1]: windows of each slice and its neighbours.

    Edge slices repeat themselves as their missing neighbours.
    """
    n = hu.shape[0]
    k = spec.context_slices
    step = neighbour_step(spec, slice_spacing_mm)
    windowed = np.stack([np.clip((hu - (w.center - w.width / 2)) / w.width, 0.0, 1.0) for w in spec.windows], axis=1).astype(
        np.float32
    )  # (slices, windows, h, w)
    index = np.clip(np.arange(n)[:, None] + step * np.arange(-k, k + 1)[None, :], 0, n - 1)  # (slices, 2k+1)
    return windowed[index].reshape(n, -1, *hu.shape[1:])


def normalise_radiograph(image: np.ndarray) -> np.ndarray:
    """Scale (…, rows, cols) to its 1st-99th percentile range: robust to window/LUT and exposure."""
    lo, hi = np.percentile(image, [1.0, 99.0])
    if hi - lo < 1e-6:
        raise DetectionError("the radiograph is blank (no contrast)")
    return np.clip((image - lo) / (hi - lo), -0.5, 1.5).astype(np.float32)


def prepare(series: SeriesArrays, spec: DetectorSpec) -> Prepared:
    """The items for ``spec`` from ``series``; ``context["geometry"]`` maps them back."""
    if series.family is not spec.family:
        raise DetectionError(f"{spec.name} reads {spec.family.value} series, got {series.family.value}")
    pixels = series.pixels
    if pixels.size == 0:
        raise DetectionError("the series has no pixels")
    if not np.isfinite(pixels).all():
        raise DetectionError("the series has non-finite pixel values")
    inp = spec.input
    resampled, scale = resample(pixels, series.spacing_mm[1:], inp.spacing_mm)
    if spec.family is Family.CT:
        centre = body_centre(resampled, BODY_HU)
        window, origin = crop_or_pad(resampled, centre, inp.height, inp.width, AIR_HU)
        items = window_channels(window, inp, series.spacing_mm[0])
    else:
        image = normalise_radiograph(resampled)
        window, origin = crop_or_pad(image, ((image.shape[1] - 1) / 2, (image.shape[2] - 1) / 2), inp.height, inp.width, 0.0)
        items = window[:, None]
    geometry = Geometry(scale=scale, origin=origin, source_shape=pixels.shape[1:])
    context: dict[str, object] = {"geometry": geometry}
    if spec.anatomy != "none":
        context["anatomy"] = anatomy_cells(series, geometry, spec)
    return Prepared(series=series, items=np.ascontiguousarray(items), context=context)


def anatomy_cells(series: SeriesArrays, geometry: Geometry, spec: DetectorSpec) -> np.ndarray:
    """(slices, h/stride, w/stride) bool: heatmap cells at least half inside the card's anatomy.

    Raises :class:`DetectionError` when the anatomy is not found at all: a
    head CT with no closed skull or a chest radiograph without lung fields is
    reported as not assessed, never as negative.
    """
    from detectors.anatomy import mask_for

    mask = mask_for(spec.anatomy, series.pixels, series.spacing_mm, spec.family.value)
    if mask is None:
        return np.ones((series.pixels.shape[0], spec.input.height // spec.stride, spec.input.width // spec.stride), bool)
    if not mask.any():
        what = {"intracranial": "no intracranial space (no closed skull ring)", "lungs": "no lung fields", "bone": "no bone"}.get(
            spec.anatomy, f"no {spec.anatomy}"
        )
        raise DetectionError(f"anatomy not found: {what}; not assessed")
    return map_mask(mask, series, geometry, spec) >= 0.5


def map_mask(mask: np.ndarray, series: SeriesArrays, geometry: Geometry, spec: DetectorSpec) -> np.ndarray:
    """A (slices, rows, cols) source mask -> (slices, h/stride, w/stride) float target fractions (training)."""
    import torch
    import torch.nn.functional as F

    resampled, _ = resample(mask.astype(np.float32), series.spacing_mm[1:], spec.input.spacing_mm)
    window = crop_at(resampled, geometry.origin, spec.input.height, spec.input.width, 0.0)
    with torch.inference_mode():
        pooled = F.avg_pool2d(torch.from_numpy(window)[:, None], spec.stride)[:, 0]
    return pooled.numpy()
