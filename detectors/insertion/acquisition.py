"""Acquisition variation applied to a real CT volume: what other scanners would have made of it.

Geometry (slice thickness, gantry tilt, matrix) changes where voxels are, so
lesion masks must follow: :func:`apply_geometry` applies a variant's geometry
to any volume, bool masks included (resampled as fractions, kept where >= 0.5).
Kernel and noise change only values: :func:`apply_variant` adds them after
the geometry. Volumes are (slices, rows, cols), slice 0 the lowest.

How the pixels are stored (rescale slope and intercept, MONOCHROME1/2) is the
DICOM writer's business: :func:`storage_variants` draws the values a writer
uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

THICKNESS_MM = (0.6, 7.0)
MATRICES = (256, 512)
THICKNESSES_MM = (0.625, 1.0, 1.25, 2.5, 3.0, 5.0, 7.0)  # what draw_variant picks from
TILT_DEG = (8.0, 25.0)  # a drawn tilt's magnitude; head CT is often acquired with the gantry tilted
NOISE_HU = (2.0, 10.0)

Spacing = tuple[float, float, float]


def _spacing(spacing_mm: Sequence[float]) -> Spacing:
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f'Argument "spacing_mm" must be three positive mm, got {tuple(spacing_mm)}')
    return float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2])


def _as_float(volume: np.ndarray) -> tuple[np.ndarray, bool]:
    is_mask = volume.dtype == bool
    return volume.astype(np.float32), is_mask


def _back(volume: np.ndarray, is_mask: bool) -> np.ndarray:
    return volume >= 0.5 if is_mask else volume.astype(np.float32)


def resample_slices(hu: np.ndarray, spacing_mm: Sequence[float], thickness_mm: float) -> tuple[np.ndarray, Spacing]:
    """Contiguous slices of ``thickness_mm`` (0.6-7 mm) over the same z range.

    Thicker slices average the slab they cover (each old slice weighted by
    its overlap, the rectangular slice profile); thinner ones interpolate
    linearly. A bool mask comes back as a bool mask (fraction >= 0.5).

    Returns
    -------
    (volume, spacing_mm)
        The new (slices, rows, cols) volume and its (thickness, row, col) spacing.
    """
    spacing = _spacing(spacing_mm)
    if not THICKNESS_MM[0] <= thickness_mm <= THICKNESS_MM[1]:
        raise ValueError(f'Argument "thickness_mm" must be in {THICKNESS_MM[0]}-{THICKNESS_MM[1]} mm, got {thickness_mm}')
    data, is_mask = _as_float(hu)
    old_dz, n_old = spacing[0], hu.shape[0]
    extent = n_old * old_dz  # mm, from the bottom edge of slice 0 to the top edge of the last
    n_new = max(1, int(round(extent / thickness_mm)))
    centres_new = (np.arange(n_new) + 0.5) * extent / n_new  # mm from the bottom edge
    centres_old = (np.arange(n_old) + 0.5) * old_dz
    weights = np.zeros((n_new, n_old), np.float64)
    if thickness_mm >= old_dz:
        lo_new, hi_new = centres_new - thickness_mm / 2, centres_new + thickness_mm / 2
        lo_old, hi_old = centres_old - old_dz / 2, centres_old + old_dz / 2
        weights = np.clip(np.minimum(hi_new[:, None], hi_old[None, :]) - np.maximum(lo_new[:, None], lo_old[None, :]), 0, None)
    else:
        pos = np.clip(centres_new / old_dz - 0.5, 0, n_old - 1)
        k0 = np.minimum(np.floor(pos).astype(int), max(n_old - 2, 0))
        w = pos - k0
        weights[np.arange(n_new), k0] += 1 - w
        weights[np.arange(n_new), np.minimum(k0 + 1, n_old - 1)] += w
    weights /= weights.sum(axis=1, keepdims=True)
    out = np.tensordot(weights.astype(np.float32), data, axes=(1, 0))
    return _back(out, is_mask), (extent / n_new, spacing[1], spacing[2])


@dataclass(frozen=True, eq=False)
class Tilted:
    """A gantry-tilted volume and the geometry a DICOM writer needs for it.

    ``image_orientation`` is ImageOrientationPatient (row then column
    direction cosines, PS3.3 C.7.6.2.1.1); ``image_positions_mm`` is each
    slice's ImagePositionPatient of its first pixel, relative to the original
    volume's first voxel, with x along columns, y along rows and z along slices.
    """

    hu: np.ndarray  # (slices, rows, cols)
    image_orientation: tuple[float, float, float, float, float, float]
    image_positions_mm: np.ndarray  # (slices, 3)
    shift_px: np.ndarray  # (slices,), the row shift applied to each slice


def gantry_tilt(hu: np.ndarray, spacing_mm: Sequence[float], degrees: float) -> Tilted:
    """The volume as a gantry tilted by ``degrees`` about the left-right axis acquires it.

    Each slice is shifted along rows by ``-(z - z_mid) * tan(tilt)`` (the middle
    slice stays, so the head stays in the field of view): stacked naively, the
    slices are sheared, as tilted acquisitions are. The geometry returned
    makes it exact: with column direction ``(0, cos t, sin t)`` and the
    positions returned, every pixel lands on the original anatomy rotated
    rigidly by the tilt, and the positions step along z only (the table).
    """
    spacing = _spacing(spacing_mm)
    if not -30.0 <= degrees <= 30.0:
        raise ValueError(f'Argument "degrees" must be within +-30, got {degrees}')
    data, is_mask = _as_float(hu)
    tilt = math.radians(degrees)
    k = np.arange(hu.shape[0], dtype=np.float64)
    k_mid = (hu.shape[0] - 1) / 2
    shift_px = -(k - k_mid) * spacing[0] * math.tan(tilt) / spacing[1]
    out = np.empty_like(data)
    for i, shift in enumerate(shift_px):
        out[i] = ndimage.shift(data[i], (shift, 0.0), order=1, mode="constant", cval=float(data.min()) if not is_mask else 0.0)
    # The first pixel of slice k shows the original voxel (k, -shift_k); rotating the
    # original by the tilt about the x axis puts it here (x, y, z in mm).
    rotation = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    original = np.stack([np.zeros_like(k), -shift_px * spacing[1], (k - k_mid) * spacing[0]], axis=1)
    positions = original @ rotation.T
    positions[:, 2] += k_mid * spacing[0]
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), math.sin(tilt))
    return Tilted(_back(out, is_mask), orientation, positions, shift_px)


def matrix(hu: np.ndarray, spacing_mm: Sequence[float], size: int) -> tuple[np.ndarray, Spacing]:
    """Resample in-plane to ``size`` x ``size`` (256 or 512) over the same field of view.

    Downsampling first blurs by about half the new pixel (no aliasing);
    sampling is linear at the new pixel centres. Returns the volume and its
    spacing (slice, row, col), the pixel grown or shrunk by the ratio.
    """
    spacing = _spacing(spacing_mm)
    if size not in MATRICES:
        raise ValueError(f'Argument "size" must be one of {MATRICES}, got {size}')
    data, is_mask = _as_float(hu)
    rows, cols = hu.shape[1:]
    zoom = (size / rows, size / cols)
    if min(zoom) < 1 and not is_mask:
        data = ndimage.gaussian_filter(data, (0.0, 0.4 / zoom[0] if zoom[0] < 1 else 0.0, 0.4 / zoom[1] if zoom[1] < 1 else 0.0))
    # New pixel j's centre, in old pixel units, keeping the field of view's edges fixed.
    r = (np.arange(size) + 0.5) / zoom[0] - 0.5
    c = (np.arange(size) + 0.5) / zoom[1] - 0.5
    out = np.empty((hu.shape[0], size, size), np.float32)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    for i in range(hu.shape[0]):
        out[i] = ndimage.map_coordinates(data[i], [rr, cc], order=1, mode="nearest")
    return _back(out, is_mask), (spacing[0], spacing[1] * rows / size, spacing[2] * cols / size)


def kernel(hu: np.ndarray, sharpness: float) -> np.ndarray:
    """A reconstruction kernel's look, in-plane: ``sharpness`` in [-1, 1].

    Negative smooths (a Gaussian of up to 1.2 pixels, a soft-tissue kernel),
    positive sharpens (an unsharp mask of up to 1.5 times the detail under a
    1-pixel Gaussian, a bone kernel), 0 leaves the volume as it is.
    """
    if not -1.0 <= sharpness <= 1.0:
        raise ValueError(f'Argument "sharpness" must be in [-1, 1], got {sharpness}')
    data = hu.astype(np.float32)
    if sharpness < 0:
        return ndimage.gaussian_filter(data, (0.0, -1.2 * sharpness, -1.2 * sharpness))
    if sharpness > 0:
        return data + 1.5 * sharpness * (data - ndimage.gaussian_filter(data, (0.0, 1.0, 1.0)))
    return data


def add_noise(hu: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Add CT-like noise of standard deviation ``sigma_hu``: correlated in-plane, not white.

    Filtered back-projection noise has a band-pass power spectrum (none at
    zero frequency, a peak at mid frequencies): white noise through a
    difference of Gaussians (0.7 and 2.5 pixels) has that shape. Slices are
    independent, as contiguous slices nearly are.
    """
    if sigma_hu < 0:
        raise ValueError(f'Argument "sigma_hu" must be >= 0, got {sigma_hu}')
    data = hu.astype(np.float32)
    if sigma_hu == 0:
        return data
    white = rng.standard_normal(hu.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white, (0.0, 0.7, 0.7)) - ndimage.gaussian_filter(white, (0.0, 2.5, 2.5))
    return data + noise * (sigma_hu / float(noise.std()))


@dataclass(frozen=True)
class Variant:
    """One simulated acquisition: every field at its neutral value leaves the volume unchanged."""

    thickness_mm: float | None = None  # None: keep the slices
    tilt_deg: float = 0.0
    matrix: int | None = None  # None: keep the in-plane matrix
    sharpness: float = 0.0  # [-1, 1], see kernel()
    noise_hu: float = 0.0  # added noise, HU


def apply_geometry(volume: np.ndarray, spacing_mm: Sequence[float], variant: Variant) -> tuple[np.ndarray, Spacing]:
    """A variant's geometry (tilt, then slice thickness, then matrix) applied to a volume or a bool mask.

    The tilt acts on the original thin slices, as the gantry sees the
    anatomy before the slices are thickened.
    """
    spacing = _spacing(spacing_mm)
    out = volume
    if variant.tilt_deg:
        out = gantry_tilt(out, spacing, variant.tilt_deg).hu
    if variant.thickness_mm is not None:
        out, spacing = resample_slices(out, spacing, variant.thickness_mm)
    if variant.matrix is not None:
        out, spacing = matrix(out, spacing, variant.matrix)
    return out, spacing


def apply_variant(hu: np.ndarray, spacing_mm: Sequence[float], variant: Variant, rng: np.random.Generator) -> tuple[np.ndarray, Spacing]:
    """A CT volume as ``variant`` acquires it: geometry, then kernel, then noise.

    Lesion masks go through :func:`apply_geometry` with the same variant.
    Returns the (slices, rows, cols) float32 HU volume and its spacing.
    """
    out, spacing = apply_geometry(hu.astype(np.float32), spacing_mm, variant)
    out = kernel(out, variant.sharpness)
    out = add_noise(out, variant.noise_hu, rng)
    return out.astype(np.float32), spacing


def draw_variant(rng: np.random.Generator) -> Variant:
    """A random acquisition: thin to 7 mm slices, tilted or not, 256 or 512, soft to sharp, quiet to noisy."""
    thickness = None if rng.random() < 0.25 else float(rng.choice(THICKNESSES_MM))
    tilt = 0.0 if rng.random() < 0.5 else float(rng.uniform(*TILT_DEG)) * float(rng.choice([-1.0, 1.0]))
    size = int(rng.choice(MATRICES))
    sharpness = float(rng.uniform(-1.0, 1.0))
    noise = 0.0 if rng.random() < 0.3 else float(rng.uniform(*NOISE_HU))
    return Variant(thickness, round(tilt, 1), size, round(sharpness, 2), round(noise, 1))


# (RescaleSlope, RescaleIntercept, PixelRepresentation, BitsStored): each keeps -1024..3071 HU representable.
_RESCALES = (
    (1.0, -1024.0, 0, 12),  # the common unsigned 12-bit CT
    (1.0, -1024.0, 0, 16),
    (1.0, 0.0, 1, 16),  # signed, HU stored as they are
    (0.5, -1024.0, 0, 16),  # half-HU steps
    (1.0, -8192.0, 0, 16),  # an offset some scanners use
    (0.5, -8192.0, 0, 16),
)


def storage_variants(rng: np.random.Generator) -> dict[str, float | int | str]:
    """How a writer stores the pixels, drawn: plain values for the DICOM headers.

    Returns
    -------
    dict
        ``rescale_slope``, ``rescale_intercept`` (CT: stored = round((HU -
        intercept) / slope), PS3.3 C.11.1.1.2), ``pixel_representation``
        (0 unsigned, 1 signed) and ``bits_stored``, chosen so that -1024..3071
        HU fit; ``photometric`` for radiographs, "MONOCHROME1" (inverted:
        the writer stores ``max - value``) or "MONOCHROME2" (PS3.3 C.7.6.3.1.2).
    """
    slope, intercept, signed, bits = _RESCALES[int(rng.integers(len(_RESCALES)))]
    photometric = "MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2"
    return {
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "pixel_representation": signed,
        "bits_stored": bits,
        "photometric": photometric,
    }
