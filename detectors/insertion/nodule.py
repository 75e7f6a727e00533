"""Pulmonary nodules inserted into lungs: on CT as a sub-voxel solid, on a radiograph as its projection.

CT: a solid nodule (-50..+50 HU) or a part-solid one (a ground-glass halo at
-700..-400 HU around a solid core), slightly lobulated and optionally
spiculated, entirely inside the caller's lung mask. Its edges are
partial-volume and the lung's own noise is kept.

Radiograph: a sphere's projected attenuation, its chord length times a
contrast per mm, ADDED in the image's log-like display domain (bright =
dense), so it is densest in the middle with soft edges, and the image's noise
is untouched. The contrast scale is :data:`CONTRAST_PER_MM`:

- physics: soft tissue replacing aerated lung raises the attenuation
  coefficient by about 0.017/mm at chest-radiograph energies, so the centre
  of a 10 mm nodule adds about 0.17 to ln(I0/I); scatter behind the lungs (a
  scatter-to-primary ratio near 0.5) takes a third of that away;
- display: a processed chest radiograph spreads roughly 3 units of
  ln(I0/I) (lung to mediastinum) over its [0, 1] range;
- hence about 0.004 display units per mm of chord: a 10 mm nodule peaks at
  0.04 (subtle: the size of the rib-edge and vessel texture of the lung
  fields), a 30 mm one at 0.12 (obvious: more than a rib).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import numpy as np
from scipy import ndimage

from detectors.insertion.common import (
    Inserted,
    Inserted2D,
    blend,
    check_volume,
    class_local_mean,
    crop_of,
    occupancy,
    random_rotation,
    truth,
)

logger = logging.getLogger(__name__)

DIAMETER_MM = (3.0, 30.0)
SOLID_HU = (-50.0, 50.0)
GROUND_GLASS_HU = (-700.0, -400.0)
CORE_FRACTION = (0.35, 0.6)  # part-solid: the solid core's diameter over the whole nodule's
LUNG_CLASS_EDGE_HU = -500.0  # aerated parenchyma | vessels and walls: the classes a nodule's local mean replaces
NODULE_KINDS = ("solid", "part-solid")
CONTRAST_PER_MM = 0.004  # radiograph display units per mm of chord (see the module docstring)
XR_BLUR_MM = 0.3  # focal spot and detector unsharpness


def _check_diameter(diameter_mm: float) -> None:
    if not DIAMETER_MM[0] <= diameter_mm <= DIAMETER_MM[1]:
        raise ValueError(f'Argument "diameter_mm" must be in {DIAMETER_MM[0]}-{DIAMETER_MM[1]} mm, got {diameter_mm}')


def insert_nodule_ct(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    lungs: np.ndarray,
    diameter_mm: float,
    rng: np.random.Generator,
    *,
    kind: str = "solid",
    spiculated: bool | None = None,
) -> Inserted:
    """Insert one lung nodule into a chest CT.

    Parameters
    ----------
    hu
        (slices, rows, cols) HU, slice 0 the lowest.
    spacing_mm
        (slice, row, col) spacing in mm.
    lungs
        (slices, rows, cols) bool lung mask; the whole nodule lies inside it.
    diameter_mm
        The nodule's diameter, 3-30 mm (before lobulation, which is +-6 %).
    rng
        Draws every choice; the same state gives the same result.
    kind
        "solid" or "part-solid".
    spiculated
        Add 5-10 thin spicules; drawn (1 in 4 solid nodules) when None.

    Returns
    -------
    Inserted
        ``density_hu`` is the solid part's HU; ``params`` holds the
        ground-glass HU and core diameter of a part-solid nodule.

    Raises
    ------
    ValueError
        For an argument out of range, or when no point of the lung mask lies
        deep enough to hold the nodule.
    """
    if kind not in NODULE_KINDS:
        raise ValueError(f'Argument "kind" must be one of {NODULE_KINDS}, got {kind!r}')
    _check_diameter(diameter_mm)
    spacing = check_volume(hu, spacing_mm, lungs, "lungs")
    lungs = lungs.astype(bool)
    radius = diameter_mm / 2
    solid_hu = float(rng.uniform(*SOLID_HU))
    glass_hu = float(rng.uniform(*GROUND_GLASS_HU))
    core = float(rng.uniform(*CORE_FRACTION)) if kind == "part-solid" else 1.0
    if spiculated is None:
        spiculated = kind == "solid" and rng.random() < 0.25
    axes = rng.uniform(0.92, 1.08, 3)
    axes /= np.prod(axes) ** (1 / 3)
    rotation = random_rotation(rng)
    lobe_dirs = rng.normal(size=(3, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=1, keepdims=True)
    lobe_amp = rng.uniform(0.0, 0.02, 3) * rng.choice([-1.0, 1.0], 3)
    spikes = rng.normal(size=(int(rng.integers(5, 11)) if spiculated else 0, 3))
    spikes /= np.maximum(np.linalg.norm(spikes, axis=1, keepdims=True), 1e-9)
    spike_len = rng.uniform(0.4, 0.9, len(spikes)) * radius
    reach = radius * 1.1 + (float(spike_len.max()) if len(spikes) else 0.0)

    # The whole nodule inside the lungs: its centre at least ``reach`` (plus a margin) from the mask's edge.
    crop = crop_of(lungs, (1, 1, 1))
    depth = np.zeros(hu.shape, np.float32)
    depth[crop] = ndimage.distance_transform_edt(np.pad(lungs[crop], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(lungs & (depth > reach + 1.5 * max(spacing)))
    if not len(candidates):
        raise ValueError(
            f"cannot place a {diameter_mm:.1f} mm nodule: no point of the lung mask lies {reach + 1.5 * max(spacing):.1f} mm inside it"
        )
    centre = candidates[int(rng.integers(len(candidates)))]
    half = np.ceil((reach + 2) / np.asarray(spacing)).astype(int) + 1
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, hu.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    c_mm = centre * np.asarray(spacing)
    rows = np.arange(box[1].start, box[1].stop)[None, :, None] * spacing[1] - c_mm[1]
    cols = np.arange(box[2].start, box[2].stop)[None, None, :] * spacing[2] - c_mm[2]

    def shape(scale: float, with_spikes: bool):
        def sd(z: np.ndarray) -> np.ndarray:
            p = np.stack(np.broadcast_arrays(z[:, None, None] * spacing[0] - c_mm[0], rows, cols))
            q = np.tensordot(rotation.T, p, axes=1) / axes[:, None, None, None]
            rho = np.sqrt((q**2).sum(axis=0)) + 1e-9
            lobes = 1.0 + sum(
                a * np.polynomial.chebyshev.chebval(np.tensordot(d, q, axes=1) / rho, [0, 0, 0, 1])
                for d, a in zip(lobe_dirs, lobe_amp, strict=True)
            )
            dist = rho - scale * lobes
            if with_spikes:
                for direction, length in zip(spikes, spike_len, strict=True):
                    # A spicule: a segment from inside the surface outwards, tapering from 0.6 to 0.2 mm radius.
                    start, end = 0.8 * scale * direction, (scale + length) * direction
                    seg = end - start
                    t = np.clip(np.tensordot(seg, p - start[:, None, None, None], axes=1) / (seg @ seg), 0, 1)
                    gap = np.sqrt(((p - start[:, None, None, None] - seg[:, None, None, None] * t) ** 2).sum(axis=0))
                    dist = np.minimum(dist, gap - (0.6 - 0.4 * t))
            return dist

        return occupancy(sd, range(box[0].start, box[0].stop), spacing) * lungs[box]

    whole = shape(radius, True)
    solid = whole if kind == "solid" else shape(radius * core, False)
    old = hu[box].astype(np.float32)
    # The solid part engulfs vessels (per-class local mean: a vessel's excess is removed);
    # ground glass lets them show through (the parenchyma's local mean only).
    out = hu.astype(np.float32, copy=True)
    if kind == "part-solid":
        parenchyma = _parenchyma_mean(old, lungs[box], spacing)
        old = old + whole * (glass_hu - parenchyma)
    local = class_local_mean(hu[box], lungs[box], (LUNG_CLASS_EDGE_HU,), spacing)
    out[box] = blend(old, solid, solid_hu, local + (old - hu[box]), lungs[box])
    frac = np.zeros(hu.shape, np.float32)
    frac[box] = whole
    mask, volume, centre_vox, box2d, slices = truth(frac, spacing)
    params: dict[str, float | str] = {"spiculated": str(bool(spiculated))}
    if kind == "part-solid":
        params |= {"ground_glass_hu": round(glass_hu, 1), "core_diameter_mm": round(diameter_mm * core, 2)}
    logger.debug("inserted %s nodule %.1f mm at %s", kind, diameter_mm, centre_vox)
    return Inserted(out, mask, frac, volume, solid_hu, kind, centre_vox, box2d, slices, float(diameter_mm), params)


def _parenchyma_mean(hu: np.ndarray, lungs: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The local mean of aerated parenchyma only (vessels excluded), for every voxel."""
    aerated = lungs & (ndimage.gaussian_filter(hu, (0.0, 0.7, 0.7)) < LUNG_CLASS_EDGE_HU)
    sigma = (max(0.5, 1.0 / spacing[0]), 2.0 / spacing[1], 2.0 / spacing[2])
    den = ndimage.gaussian_filter(aerated.astype(np.float32), sigma)
    num = ndimage.gaussian_filter(np.where(aerated, hu, 0.0).astype(np.float32), sigma)
    fallback = float(hu[aerated].mean()) if aerated.any() else -850.0
    return np.where(den > 0.05, num / np.maximum(den, 1e-6), fallback).astype(np.float32)


def insert_nodule_radiograph(
    image: np.ndarray,
    spacing_mm: float | Sequence[float],
    lung_fields: np.ndarray,
    diameter_mm: float,
    rng: np.random.Generator,
    *,
    contrast_per_mm: float | None = None,
) -> Inserted2D:
    """Add one nodule's projection to a radiograph, inside the lung fields.

    Parameters
    ----------
    image
        (rows, cols) float, bright = dense, in a log-attenuation-like display domain ([0, 1]).
    spacing_mm
        Pixel spacing, one value or (row, col).
    lung_fields
        (rows, cols) bool; the nodule's centre and all of its disc lie in it
        when the fields are wide enough, else its centre and at least 60 %
        of its radius.
    diameter_mm
        3-30 mm.
    rng
        Draws the position and the contrast.
    contrast_per_mm
        Display units added per mm of chord; :data:`CONTRAST_PER_MM` times
        0.8-1.25 when None.

    Returns
    -------
    Inserted2D
        ``contrast`` is the peak added (the chord's maximum is the diameter);
        ``mask`` is the nodule's disc.
    """
    _check_diameter(diameter_mm)
    if image.ndim != 2 or lung_fields.shape != image.shape:
        raise ValueError(
            f'Arguments "image" and "lung_fields" must be (rows, cols) of one shape, got {image.shape} and {lung_fields.shape}'
        )
    if not lung_fields.any():
        raise ValueError('Argument "lung_fields" is empty: there is nowhere to place a nodule')
    # np.isscalar's TypeGuard narrows to numpy's scalar union, not to float / Sequence[float].
    if np.isscalar(spacing_mm):
        dy = dx = float(cast(float, spacing_mm))
    else:
        pair = cast(Sequence[float], spacing_mm)
        dy, dx = float(pair[0]), float(pair[1])
    radius = diameter_mm / 2
    k = float(contrast_per_mm) if contrast_per_mm is not None else CONTRAST_PER_MM * float(rng.uniform(0.8, 1.25))
    depth = ndimage.distance_transform_edt(np.pad(lung_fields, 1), sampling=(dy, dx))[1:-1, 1:-1]
    candidates = np.argwhere(depth >= radius + 1.0)
    if not len(candidates):
        candidates = np.argwhere(depth >= 0.6 * radius)
    if not len(candidates):
        raise ValueError(f"cannot place a {diameter_mm:.1f} mm nodule: the lung fields are nowhere {0.6 * radius:.1f} mm deep")
    r0, c0 = candidates[int(rng.integers(len(candidates)))]
    reach = radius + 3 * XR_BLUR_MM + 1
    lo = (max(int(r0 - reach / dy) - 1, 0), max(int(c0 - reach / dx) - 1, 0))
    hi = (min(int(r0 + reach / dy) + 2, image.shape[0]), min(int(c0 + reach / dx) + 2, image.shape[1]))
    # The chord through a sphere, averaged over 4x4 sub-pixels for a smooth edge.
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    rr = (np.arange(lo[0], hi[0])[:, None] + sub[None, :]).ravel()
    cc = (np.arange(lo[1], hi[1])[:, None] + sub[None, :]).ravel()
    r2 = ((rr[:, None] - r0) * dy) ** 2 + ((cc[None, :] - c0) * dx) ** 2
    chord = 2 * np.sqrt(np.clip(radius**2 - r2, 0, None))
    chord = chord.reshape(hi[0] - lo[0], 4, hi[1] - lo[1], 4).mean(axis=(1, 3))
    chord = ndimage.gaussian_filter(chord, (XR_BLUR_MM / dy, XR_BLUR_MM / dx))
    out = image.astype(np.float32, copy=True)
    # Kept in the display range; lung fields sit mid-range, so nothing near a nodule saturates in practice.
    out[lo[0] : hi[0], lo[1] : hi[1]] = np.clip(out[lo[0] : hi[0], lo[1] : hi[1]] + k * chord, 0.0, 1.0)
    mask = np.zeros(image.shape, bool)
    rows, cols = np.ogrid[lo[0] : hi[0], lo[1] : hi[1]]
    mask[lo[0] : hi[0], lo[1] : hi[1]] = ((rows - r0) * dy) ** 2 + ((cols - c0) * dx) ** 2 <= radius**2
    where = np.argwhere(mask)
    box = (int(where[:, 0].min()), int(where[:, 1].min()), int(where[:, 0].max()) + 1, int(where[:, 1].max()) + 1)
    return Inserted2D(
        out, mask, "nodule", (float(r0), float(c0)), box, k * diameter_mm, float(diameter_mm), {"contrast_per_mm": round(k, 5)}
    )
