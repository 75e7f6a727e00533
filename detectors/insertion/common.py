"""What every insertion shares: the truth records, sub-voxel occupancy, noise-preserving blending.

A lesion is described by a signed distance in mm (negative inside). Its
fractional occupancy of each voxel is the average, over sub-planes spread
across the slice thickness, of a one-pixel linear ramp of that distance: the
rectangular slice profile, so thick slices blur the lesion more along z.
Blending replaces the local mean and keeps the background's texture:
``new = old + frac * (density - local_mean(old))``, where the local mean is
taken per tissue class so that a sulcus or a vessel under the lesion leaves
its noise, not its shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from detectors.phantoms.truth import box_of

# Fraction of the volume a fitted lesion may miss by before the fit gives up; the
# insertion truth reports the measured volume either way.
VOLUME_TOLERANCE = 0.03

SignedDistance = Callable[[np.ndarray], np.ndarray]  # fractional slice indices (n,) -> (n, rows, cols) mm


@dataclass(frozen=True, eq=False)
class Inserted:
    """A CT volume with one inserted lesion and its truth.

    ``mask`` is where the lesion's fraction is >= 0.5 (the voxel with the
    largest fraction when none reaches it); ``volume_ml`` is the fraction map
    summed times the voxel volume, so partial voxels count by how much they
    hold. ``box`` is ``(row0, col0, row1, col1)``, half-open, over all slices;
    ``slices`` is (first, last), inclusive.
    """

    hu: np.ndarray  # (slices, rows, cols), float32, HU
    mask: np.ndarray  # (slices, rows, cols), bool
    fraction: np.ndarray  # (slices, rows, cols), float32 in [0, 1], lesion occupancy
    volume_ml: float
    density_hu: float  # the lesion's HU (part-solid nodules: the solid core's)
    kind: str
    centre: tuple[float, float, float]  # (slice, row, col), voxels, occupancy-weighted
    box: tuple[int, int, int, int]
    slices: tuple[int, int]
    diameter_mm: float | None = None  # nodules: the requested diameter of the whole nodule
    params: dict[str, float | str] = field(default_factory=dict)  # what was drawn


@dataclass(frozen=True, eq=False)
class Inserted2D:
    """A radiograph with one inserted finding and its truth.

    ``box`` is ``(row0, col0, row1, col1)``, half-open, in pixels.
    """

    image: np.ndarray  # (rows, cols), float32, bright = dense (log-attenuation-like display)
    mask: np.ndarray  # (rows, cols), bool
    kind: str  # "nodule" | "fracture"
    centre: tuple[float, float]  # (row, col), pixels
    box: tuple[int, int, int, int]
    contrast: float  # nodules: peak added, display units; fractures: depth of the lucency
    diameter_mm: float | None = None
    params: dict[str, float | str] = field(default_factory=dict)


def check_volume(hu: np.ndarray, spacing_mm: Sequence[float], region: np.ndarray, what: str) -> tuple[float, float, float]:
    """Validate a (slices, rows, cols) volume, its spacing and a same-shaped bool mask."""
    if hu.ndim != 3:
        raise ValueError(f'Argument "hu" must be (slices, rows, cols), got shape {hu.shape}')
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f'Argument "spacing_mm" must be three positive mm, got {tuple(spacing_mm)}')
    if region.shape != hu.shape:
        raise ValueError(f'Argument "{what}" must have the volume\'s shape {hu.shape}, got {region.shape}')
    if not region.any():
        raise ValueError(f'Argument "{what}" is empty: there is nowhere to place a lesion')
    return float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2])


def sub_planes(slice_mm: float, pixel_mm: float) -> np.ndarray:
    """Offsets (in slices, within +-0.5) of the sub-planes that sample one slice's thickness."""
    # About one sub-plane per half pixel of thickness: enough for a smooth slice profile.
    count = min(9, 2 * math.ceil(slice_mm / (2 * pixel_mm)) + 1)
    return (np.arange(count) + 0.5) / count - 0.5


def occupancy(sd: SignedDistance, slices: range, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The fractional occupancy of a shape given by its signed distance, on ``slices`` of a crop.

    Each slice averages ``sub_planes`` of a one-pixel ramp (the rectangular
    slice profile), then a 0.4-pixel Gaussian stands in for the in-plane PSF.
    Returns (len(slices), rows, cols) float32 in [0, 1].
    """
    pixel_mm = min(spacing_mm[1], spacing_mm[2])
    offsets = sub_planes(spacing_mm[0], pixel_mm)
    z = (np.asarray(slices, dtype=np.float64)[:, None] + offsets[None, :]).ravel()
    ramp = np.clip(0.5 - sd(z) / pixel_mm, 0.0, 1.0)
    frac = ramp.reshape(len(slices), len(offsets), *ramp.shape[1:]).mean(axis=1)
    return ndimage.gaussian_filter(frac, (0.0, 0.4, 0.4), mode="nearest").astype(np.float32)


def along_z(field_mm: np.ndarray, first_slice: int) -> SignedDistance:
    """A signed distance sampled on a crop's voxels, interpolated linearly between slices."""

    def sd(z: np.ndarray) -> np.ndarray:
        k = np.clip(z - first_slice, 0, field_mm.shape[0] - 1)
        k0 = np.minimum(np.floor(k).astype(int), field_mm.shape[0] - 2) if field_mm.shape[0] > 1 else np.zeros_like(k, int)
        w = (k - k0)[:, None, None]
        k1 = np.minimum(k0 + 1, field_mm.shape[0] - 1)
        return (1 - w) * field_mm[k0] + w * field_mm[k1]

    return sd


def class_local_mean(
    hu: np.ndarray, region: np.ndarray, edges_hu: Sequence[float], spacing_mm: Sequence[float], sigma_mm: float = 2.0
) -> np.ndarray:
    """The local mean of each voxel's own tissue class: the smooth background a lesion replaces.

    Classes are bins of lightly smoothed HU split at ``edges_hu``; each class's
    mean is a Gaussian average (``sigma_mm`` in-plane, about one slice along z)
    over that class's voxels in ``region``. Subtracting it leaves the noise and
    removes anatomy (a sulcus, a vessel), so that the lesion looks uniform.
    """
    sigma = (max(0.5, sigma_mm / 2 / spacing_mm[0]), sigma_mm / spacing_mm[1], sigma_mm / spacing_mm[2])
    smooth = ndimage.gaussian_filter(hu, (0.0, 0.7, 0.7))
    label = np.digitize(smooth, np.asarray(edges_hu, dtype=np.float64))
    weight_all = ndimage.gaussian_filter(region.astype(np.float32), sigma)
    fallback = ndimage.gaussian_filter(np.where(region, hu, 0.0).astype(np.float32), sigma) / np.maximum(weight_all, 1e-3)
    out = fallback.copy()
    for cls in np.unique(label):
        w = (label == cls) & region
        if not w.any():
            continue
        den = ndimage.gaussian_filter(w.astype(np.float32), sigma)
        num = ndimage.gaussian_filter(np.where(w, hu, 0.0).astype(np.float32), sigma)
        here = (label == cls) & (den > 0.05)
        out[here] = num[here] / den[here]
    return out


def blend(old: np.ndarray, frac: np.ndarray, density_hu: float, local: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``old`` with ``frac`` of each voxel replaced by ``density_hu`` plus the voxel's own noise.

    The noise is ``old - local``, clipped to three robust standard deviations
    (measured in ``region``): where the tissue classes misjudge a voxel at an
    anatomical edge, its residual is anatomy, not noise, and must not show
    through the lesion.
    """
    residual = old - local
    inside = residual[region & (frac > 0)] if (region & (frac > 0)).any() else residual[region]
    sigma = 1.4826 * float(np.median(np.abs(inside - np.median(inside)))) if inside.size else 0.0
    noise = np.clip(residual, -3 * sigma, 3 * sigma)
    return ((1 - frac) * old + frac * (density_hu + noise)).astype(np.float32)


def fit_scale(volume_of: Callable[[float], float], target: float, start: float, hi: float, what: str, *, power: float = 1.0) -> float:
    """The scale in (0, hi] at which a monotone ``volume_of(scale)`` meets ``target``.

    Secant steps in log-log space (starting as if the volume grew as
    ``scale ** power``), kept inside the bracket found so far, with bisection
    when a step would land near its ends. Returns the closest scale tried.
    Raises ValueError naming ``what`` when even ``hi`` holds too little.
    """
    lo_b, hi_b = 0.0, math.inf
    scale = min(start, hi)
    previous: tuple[float, float] | None = None
    best, best_err = scale, math.inf
    for _ in range(40):
        got = volume_of(scale)
        err = abs(got - target)
        if err < best_err:
            best, best_err = scale, err
        if err <= VOLUME_TOLERANCE * target:
            return scale
        if got < target:
            if scale >= hi:
                raise ValueError(f"cannot place {target:.2f} mL: {what} holds at most {got:.2f} mL")
            lo_b = max(lo_b, scale)
        else:
            hi_b = min(hi_b, scale)
        if previous is not None and got > 0 and previous[1] > 0 and previous[0] != scale:
            power = min(max(math.log(got / previous[1]) / math.log(scale / previous[0]), 0.5), 8.0)
        previous = (scale, got)
        step = min(scale * (target / max(got, 1e-9)) ** (1.0 / power), hi)
        if lo_b > 0 and hi_b < math.inf:
            width = math.log(hi_b / lo_b)
            if not 0.1 * width < math.log(step / lo_b) < 0.9 * width:
                step = math.sqrt(lo_b * hi_b)
        elif not lo_b < step < hi_b:
            step = hi if hi_b == math.inf else 0.5 * hi_b
        scale = step
    return best


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def truth(
    frac: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, float, tuple[float, float, float], tuple[int, int, int, int], tuple[int, int]]:
    """``(mask, volume_ml, centre, box, slices)`` of a full-volume occupancy map."""
    mask = frac >= 0.5
    if not mask.any():
        mask = np.zeros_like(mask)
        mask[np.unravel_index(int(np.argmax(frac)), frac.shape)] = True
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    crop = crop_of(frac > 0, (0, 0, 0)) if (frac > 0).any() else crop_of(mask, (0, 0, 0))
    part = frac[crop]
    total = float(part.sum())
    grids = np.nonzero(part > 0)
    weights = part[grids]
    centre = tuple(float((g * weights).sum() / max(total, 1e-9)) + c.start for g, c in zip(grids, crop, strict=True))
    slices, box = box_of(mask)
    return mask, total * voxel_ml, (centre[0], centre[1], centre[2]), box, slices


def crop_of(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, slice, slice]:
    """The bounding box of a 3D mask grown by ``margin`` voxels per axis, clipped to the array."""
    where = np.argwhere(mask)
    lo = np.maximum(where.min(axis=0) - np.asarray(margin), 0)
    hi = np.minimum(where.max(axis=0) + np.asarray(margin) + 1, mask.shape)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2]))
