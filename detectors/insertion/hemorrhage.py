"""Intracranial haemorrhage inserted into a real non-contrast head CT, with exact truth.

Each kind is placed where a radiologist expects it, using only the caller's
intracranial mask and the scan's own HU:

- intraparenchymal: a lobulated, randomly oriented ellipsoid centred in brain
  tissue and kept well away from the inner table;
- subdural: a crescent of smoothly tapering thickness hugging the inner table
  of one convexity (its outer surface is the mask's boundary, so it follows
  the skull and is concave towards the brain), wide and thin, free to cross
  sutures but not the midline;
- epidural: a biconvex lens against the inner table (an elliptical thickness
  profile: short, thick, steep-edged), not crossing the midline;
- subarachnoid: CSF-density voxels near the brain surface (within 12 mm of
  the inner table) or in the basal cisterns, filled within a patch, so blood
  outlines sulci and cisterns;
- intraventricular: the ventricles (large CSF spaces away from the surface)
  filled from their most dependent part up to a fluid level, as blood layers
  in the occipital horns of a supine patient.

The lesion's occupancy comes from a sub-voxel shape (see
:mod:`detectors.insertion.common`), clipped to the intracranial mask, and its
size is fitted to the requested volume. Blending keeps the scan's noise.
Brain and CSF are classed by the scan's own densities: calibration differs
between scanners (nominally brain 20-45 HU, CSF 0-20 HU; the project's real
head has white matter at 22 HU and CSF at -5 HU), so CSF is whatever lies
10 HU or more below the modal intracranial density.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage

from detectors.insertion.common import (
    Inserted,
    along_z,
    blend,
    check_volume,
    class_local_mean,
    crop_of,
    fit_scale,
    occupancy,
    random_rotation,
    truth,
)

logger = logging.getLogger(__name__)

VOLUME_ML = (0.3, 50.0)
DENSITY_HU = (50.0, 90.0)  # acute blood; clotted and haematocrit-dependent
BRAIN_HU = (20.0, 45.0)  # nominal; each scan's own brain density is measured (calibration differs)
CSF_HU = (0.0, 20.0)  # nominal; this scan's CSF is what lies CSF_BELOW_BRAIN_HU under its brain
CSF_BELOW_BRAIN_HU = 10.0  # CSF is 20-30 HU below brain on every scanner, though both shift together
MASS_EFFECT_MIN_ML = 10.0  # smaller bleeds do not visibly displace the brain
DENSE_HU = 100.0  # above: calcification or bone, a class of its own for the local mean


class HemorrhageKind(str, Enum):
    INTRAPARENCHYMAL = "intraparenchymal"
    SUBDURAL = "subdural"
    EPIDURAL = "epidural"
    SUBARACHNOID = "subarachnoid"
    INTRAVENTRICULAR = "intraventricular"


KINDS = tuple(k.value for k in HemorrhageKind)

Crop = tuple[slice, slice, slice]


@dataclass(frozen=True, eq=False)
class _Head:
    """What every placement needs, computed once per insertion."""

    hu: np.ndarray  # (slices, rows, cols), HU
    spacing: tuple[float, float, float]
    inside: np.ndarray  # (slices, rows, cols) bool, the intracranial mask
    depth_mm: np.ndarray  # distance from the inner table, mm, on a 2x coarser grid (about 1 mm off): for choosing
    smooth: np.ndarray  # HU smoothed in-plane, for tissue classes robust to noise
    midline_mm: float  # column position of the midline plane (the mask's centroid), mm
    brain_hu: float  # the modal density of the intracranial space: brain parenchyma on this scanner
    csf_max_hu: float  # the upper end of CSF density on this scanner

    def csf(self, smooth: np.ndarray) -> np.ndarray:
        """How CSF-like each (smoothed) voxel is: 1 up to 4 HU below ``csf_max_hu``, 0 from 4 HU above it."""
        return (np.clip((smooth + 20) / 6, 0, 1) * np.clip((self.csf_max_hu + 4 - smooth) / 8, 0, 1)).astype(np.float32)

    def depth_in(self, crop: Crop, up_to_mm: float) -> np.ndarray:
        """The exact distance from the inner table (the mask's boundary surface) on a crop, mm; 0 outside.

        Exact up to ``up_to_mm``: the transform runs on the crop grown by that much.
        """
        grow = np.ceil(up_to_mm / np.asarray(self.spacing)).astype(int) + 1
        big = tuple(slice(max(c.start - g, 0), min(c.stop + g, n)) for c, g, n in zip(crop, grow, self.hu.shape, strict=True))
        edt = ndimage.distance_transform_edt(np.pad(self.inside[big], 1), sampling=self.spacing)[1:-1, 1:-1, 1:-1]
        inner = tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(crop, big, strict=True))
        return np.where(self.inside[crop], edt[inner] - 0.5 * min(self.spacing[1:]), 0.0).astype(np.float32)

    def coords_mm(self, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
        """Row and column positions (mm) of a crop, shaped to broadcast as (1, rows, 1) and (1, 1, cols)."""
        rows = np.arange(crop[1].start, crop[1].stop, dtype=np.float64)[None, :, None] * self.spacing[1]
        cols = np.arange(crop[2].start, crop[2].stop, dtype=np.float64)[None, None, :] * self.spacing[2]
        return rows, cols


def insert_hemorrhage(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    intracranial: np.ndarray,
    kind: HemorrhageKind | str,
    volume_ml: float,
    rng: np.random.Generator,
    *,
    density_hu: float | None = None,
    mass_effect: bool = False,
    dependent: int = 1,
) -> Inserted:
    """Insert one acute intracranial haemorrhage into a head CT.

    Parameters
    ----------
    hu
        (slices, rows, cols) HU, slice 0 the lowest (skull base).
    spacing_mm
        (slice, row, col) spacing in mm.
    intracranial
        (slices, rows, cols) bool, the intracranial space; every lesion voxel lies in it.
    kind
        One of :data:`KINDS`.
    volume_ml
        Requested volume, 0.3-50 mL; the truth reports the volume reached
        (within 3 % of the request unless the space is too small).
    rng
        Draws every choice; the same generator state gives the same result.
    density_hu
        The bleed's HU; drawn uniformly in 50-90 HU when None.
    mass_effect
        Displace the surrounding brain away from the lesion (only for
        lesions of at least 10 mL; smaller ones are left as they are).
    dependent
        +1 when rows increase towards the patient's back (the DICOM axial
        convention for a supine patient), -1 otherwise; intraventricular
        blood layers on that side.

    Returns
    -------
    Inserted
        The new volume and its truth.

    Raises
    ------
    ValueError
        For an argument out of range, or when the mask cannot hold the lesion
        (the message says which space is too small).
    """
    kind = HemorrhageKind(kind)
    spacing = check_volume(hu, spacing_mm, intracranial, "intracranial")
    if not VOLUME_ML[0] <= volume_ml <= VOLUME_ML[1]:
        raise ValueError(f'Argument "volume_ml" must be in {VOLUME_ML[0]}-{VOLUME_ML[1]} mL, got {volume_ml}')
    if density_hu is None:
        density_hu = float(rng.uniform(*DENSITY_HU))
    if dependent not in (1, -1):
        raise ValueError(f'Argument "dependent" must be +1 or -1, got {dependent}')
    head = _head(hu, spacing, intracranial.astype(bool))
    place = {
        HemorrhageKind.INTRAPARENCHYMAL: _intraparenchymal,
        HemorrhageKind.SUBDURAL: _subdural,
        HemorrhageKind.EPIDURAL: _epidural,
        HemorrhageKind.SUBARACHNOID: _subarachnoid,
        HemorrhageKind.INTRAVENTRICULAR: lambda h, v, r: _intraventricular(h, v, r, dependent),
    }[kind]
    frac, params = place(head, float(volume_ml), rng)
    frac *= head.inside

    background = head.hu
    if mass_effect and volume_ml >= MASS_EFFECT_MIN_ML:
        background, params["mass_effect_mm"] = _displace(head, frac, volume_ml)

    crop = crop_of(frac > 1e-3, (2, 6, 6))
    local = class_local_mean(background[crop], head.inside[crop], (head.csf_max_hu, DENSE_HU), spacing)
    out = background.astype(np.float32, copy=True)
    out[crop] = blend(background[crop], frac[crop], density_hu, local, head.inside[crop])
    mask, volume, centre, box, slices = truth(frac, spacing)
    logger.debug("inserted %s %.2f mL (asked %.2f) at %s", kind.value, volume, volume_ml, centre)
    return Inserted(out, mask, frac, volume, float(density_hu), kind.value, centre, box, slices, params=params)


def _head(hu: np.ndarray, spacing: tuple[float, float, float], inside: np.ndarray) -> _Head:
    # Choosing a site needs depth everywhere but not exactly: a 2x coarser grid is 8x faster. The
    # mask is padded so that a mask touching the array's edge still has a boundary there.
    coarse = np.pad(inside[::2, ::2, ::2], 1)
    edt = ndimage.distance_transform_edt(coarse, sampling=tuple(2 * s for s in spacing))[1:-1, 1:-1, 1:-1]
    depth = np.repeat(np.repeat(np.repeat(edt, 2, 0), 2, 1), 2, 2)[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    # Distance from voxel centre to the nearest outside centre, less half a pixel: to the boundary surface.
    depth = np.where(inside, depth - 0.5 * min(spacing[1:]), 0.0).astype(np.float32)
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), (0.0, 0.7, 0.7))
    cols = np.nonzero(inside)[2]
    # Calibration differs between scanners (this project's real head has CSF at -5 HU and
    # white matter at 22 HU), so the tissue classes follow the scan's own brain density.
    counts, edges = np.histogram(smooth[inside], bins=np.arange(BRAIN_HU[0] - 15, BRAIN_HU[1] + 1.0, 1.0))
    brain_hu = float(edges[int(np.argmax(counts))] + 0.5)
    return _Head(hu, spacing, inside, depth, smooth, float(cols.mean()) * spacing[2], brain_hu, brain_hu - CSF_BELOW_BRAIN_HU)


def _full(head: _Head, crop: Crop, frac_crop: np.ndarray) -> np.ndarray:
    frac = np.zeros(head.hu.shape, np.float32)
    frac[crop] = frac_crop
    return frac


def _ball_crop(head: _Head, centre_vox: np.ndarray, radius_mm: float) -> Crop:
    half = np.ceil(radius_mm / np.asarray(head.spacing)).astype(int) + 2
    lo = np.maximum(centre_vox - half, 0)
    hi = np.minimum(centre_vox + half + 1, head.hu.shape)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2]))


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    where = np.argwhere(candidates)
    return where[int(rng.integers(len(where)))]


def _volume_ml(frac: np.ndarray, head: _Head) -> float:
    return float(frac.sum()) * float(np.prod(head.spacing)) / 1000.0


def _intraparenchymal(head: _Head, volume_ml: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    r_eq = (3 * volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)  # mm
    axes = rng.uniform(0.75, 1.3, 3)
    axes /= np.prod(axes) ** (1 / 3)
    rotation = random_rotation(rng)
    lobe_dirs = rng.normal(size=(4, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=1, keepdims=True)
    lobe_freq = rng.integers(2, 5, 4)
    lobe_amp = rng.uniform(0.03, 0.08, 4) * rng.choice([-1.0, 1.0], 4)
    reach = 1.3 * r_eq * float(axes.max()) * (1 + np.abs(lobe_amp).sum())  # the largest radius the fit may reach

    brain = (head.smooth >= head.brain_hu - 6) & (head.smooth <= head.brain_hu + 20) & head.inside
    candidates = np.argwhere(brain & (head.depth_mm > reach + 4.0))
    if not len(candidates):
        raise ValueError(
            f"cannot place a {volume_ml:.1f} mL intraparenchymal haematoma: no brain tissue "
            f"({head.brain_hu - 6:.0f}-{head.brain_hu + 20:.0f} HU) lies {reach + 4:.0f} mm inside the intracranial mask"
        )
    # Prefer a centre whose surroundings are mostly brain (not a ventricle or a cistern).
    for _ in range(30):
        centre = candidates[int(rng.integers(len(candidates)))]
        near = _ball_crop(head, centre, r_eq)
        if brain[near].mean() > 0.6:
            break
    crop = _ball_crop(head, centre, reach + 2)
    rows, cols = head.coords_mm(crop)
    c_mm = centre * np.asarray(head.spacing)

    def frac_at(scale: float) -> np.ndarray:
        def sd(z: np.ndarray) -> np.ndarray:
            p = np.stack(np.broadcast_arrays(z[:, None, None] * head.spacing[0] - c_mm[0], rows - c_mm[1], cols - c_mm[2]))
            q = np.tensordot(rotation.T, p, axes=1) / axes[:, None, None, None]
            rho = np.sqrt((q**2).sum(axis=0)) + 1e-9
            # Lobulation: Chebyshev polynomials of the cosine to random axes, i.e. cos(f * angle).
            lobes = 1.0 + sum(
                a * np.polynomial.chebyshev.chebval(np.tensordot(d, q, axes=1) / rho, [0] * int(f) + [1])
                for d, f, a in zip(lobe_dirs, lobe_freq, lobe_amp, strict=True)
            )
            return rho - scale * lobes

        return occupancy(sd, range(crop[0].start, crop[0].stop), head.spacing) * head.inside[crop]

    scale = fit_scale(lambda s: _volume_ml(frac_at(s), head), volume_ml, r_eq, 1.3 * r_eq, "the brain around the chosen centre", power=3.0)
    return _full(head, crop, frac_at(scale)), {"radius_mm": round(scale, 2)}


def _extra_axial(head: _Head, volume_ml: float, rng: np.random.Generator, *, lens: bool) -> tuple[np.ndarray, dict]:
    # A site whose convexity is too tight for the volume (temporal fossa, near the vertex) is
    # replaced by another, with a wider spread.
    failure = ValueError("unreachable")
    for attempt in range(3):
        try:
            return _extra_axial_at(head, volume_ml, rng, lens=lens, widen=1.25**attempt)
        except ValueError as exc:
            failure = exc
    raise failure


def _extra_axial_at(head: _Head, volume_ml: float, rng: np.random.Generator, *, lens: bool, widen: float) -> tuple[np.ndarray, dict]:
    name = "epidural" if lens else "subdural"
    # Convexity slices: where the intracranial section is large, above the skull base.
    area = head.inside.sum(axis=(1, 2))
    slices = np.nonzero(area >= 0.6 * area.max())[0]
    k = int(slices[int(rng.integers(len(slices)))])
    side = 1 if rng.random() < 0.5 else -1
    theta = math.radians(float(rng.uniform(-55, 55)))  # from the lateral direction, forwards or backwards
    rr, cc = np.nonzero(head.inside[k])
    r, c = float(rr.mean()), float(cc.mean())
    dr, dc = math.sin(theta) * 0.5, side * math.cos(theta) * 0.5
    while 0 <= round(r + dr) < head.hu.shape[1] and 0 <= round(c + dc) < head.hu.shape[2] and head.inside[k, round(r + dr), round(c + dc)]:
        r, c = r + dr, c + dc
    point_mm = np.array([k, r, c]) * np.asarray(head.spacing)

    # A subdural spreads thin over the convexity; an epidural is held short by the
    # dura's attachment at the sutures, so it is thick and lens-shaped.
    spread = (9.0 if lens else 14.0) * volume_ml ** (1 / 3) * float(rng.uniform(0.85, 1.15)) * widen  # mm
    thick_max = 40.0 if lens else 25.0
    reach = spread + 2 * max(head.spacing)
    crop = _ball_crop(head, np.round(point_mm / np.asarray(head.spacing)).astype(int), reach + thick_max)
    z = np.arange(crop[0].start, crop[0].stop, dtype=np.float64)[:, None, None] * head.spacing[0]
    rows, cols = head.coords_mm(crop)
    depth = head.depth_in(crop, thick_max + 2)
    # Distance along the inner table from the chosen point (locally flat: the 3D distance less the depth).
    g = np.sqrt(np.maximum((z - point_mm[0]) ** 2 + (rows - point_mm[1]) ** 2 + (cols - point_mm[2]) ** 2 - depth**2, 0))
    u = np.clip(1 - (g / spread) ** 2, 0, None)
    profile = np.sqrt(u) if lens else u
    profile = np.where(g < spread, profile, -1.0)  # beyond the spread the thickness is negative: outside
    # Neither crosses the falx: keep one hemisphere, 1.5 mm clear of the midline.
    hemisphere = np.clip((side * (cols - head.midline_mm) - 1.5) / head.spacing[2] + 0.5, 0, 1)
    keep = head.inside[crop] * hemisphere

    def frac_at(thickness: float) -> np.ndarray:
        return occupancy(along_z(depth - thickness * profile, crop[0].start), range(crop[0].start, crop[0].stop), head.spacing) * keep

    thickness = fit_scale(
        lambda t: _volume_ml(frac_at(t), head),
        volume_ml,
        0.5 * volume_ml * 1000 / (math.pi * spread**2) + 1,
        thick_max,
        f"the {name} space of one convexity",
        power=1.0,
    )
    return _full(head, crop, frac_at(thickness)), {
        "thickness_mm": round(thickness, 2),
        "spread_mm": round(spread, 1),
        "side": "left" if side > 0 else "right",
    }


def _subdural(head: _Head, volume_ml: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    return _extra_axial(head, volume_ml, rng, lens=False)


def _epidural(head: _Head, volume_ml: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    return _extra_axial(head, volume_ml, rng, lens=True)


def _subarachnoid(head: _Head, volume_ml: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    csf = (head.csf(head.smooth) >= 0.5) & head.inside
    near_surface = head.depth_mm < 12.0
    # Basal cisterns: the lowest third of the intracranial space, near its centre.
    ks = np.nonzero(head.inside.any(axis=(1, 2)))[0]
    basal = np.zeros_like(csf)
    for k in range(ks[0], ks[0] + max(1, int(0.35 * (ks[-1] - ks[0])))):
        rr, cc = np.nonzero(head.inside[k])
        if rr.size:
            rows = (np.arange(csf.shape[1])[:, None] - rr.mean()) * head.spacing[1]
            cols = (np.arange(csf.shape[2])[None, :] - cc.mean()) * head.spacing[2]
            basal[k] = rows**2 + cols**2 < 35.0**2
    candidates = csf & (near_surface | basal)
    if candidates.sum() * np.prod(head.spacing) / 1000 < volume_ml:
        held_ml = candidates.sum() * np.prod(head.spacing) / 1000
        raise ValueError(
            f"cannot place {volume_ml:.2f} mL of subarachnoid blood: the sulci and cisterns "
            f"(CSF-density voxels near the surface) hold {held_ml:.2f} mL"
        )
    start = 6.0 * volume_ml ** (1 / 3) + 3
    # Sulci are sparse in places: a patch that cannot hold the volume moves and grows (up to 70 mm).
    failure = ValueError("unreachable")
    for attempt in range(4):
        centre = _pick(candidates, rng)
        reach = min(70.0, 2.5 * start * 1.6**attempt)
        try:
            return _sulcal_patch(head, candidates, centre, volume_ml, start, reach)
        except ValueError as exc:
            failure = exc
    raise failure


def _sulcal_patch(
    head: _Head, candidates: np.ndarray, centre: np.ndarray, volume_ml: float, start: float, reach: float
) -> tuple[np.ndarray, dict]:
    c_mm = centre * np.asarray(head.spacing)
    crop = _ball_crop(head, centre, reach)
    spaces = head.csf(head.smooth[crop]) * ndimage.binary_dilation(candidates[crop])
    rows, cols = head.coords_mm(crop)

    def frac_at(radius: float) -> np.ndarray:
        def sd(z: np.ndarray) -> np.ndarray:
            return np.sqrt((z[:, None, None] * head.spacing[0] - c_mm[0]) ** 2 + (rows - c_mm[1]) ** 2 + (cols - c_mm[2]) ** 2) - radius

        return occupancy(sd, range(crop[0].start, crop[0].stop), head.spacing) * spaces

    radius = fit_scale(
        lambda s: _volume_ml(frac_at(s), head),
        volume_ml,
        min(start, reach),
        reach,
        f"the sulci and cisterns within {reach:.0f} mm",
        power=2.0,
    )
    return _full(head, crop, frac_at(radius)), {"patch_radius_mm": round(radius, 2)}


def _intraventricular(head: _Head, volume_ml: float, rng: np.random.Generator, dependent: int) -> tuple[np.ndarray, dict]:
    # Stronger smoothing than for sulci: a ventricle is big, and white matter noise must not join it.
    smoother = ndimage.gaussian_filter(head.hu.astype(np.float32), (0.5, 1.5, 1.5))
    core = (head.csf(smoother) >= 0.99) & head.inside & (head.depth_mm > 12.0)
    labels, count = ndimage.label(core)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:] * np.prod(head.spacing) / 1000
    if count == 0 or sizes.max() < 0.3:
        raise ValueError("cannot place intraventricular blood: no CSF space of 0.3 mL or more lies 12 mm inside the intracranial mask")
    # The ventricles are the large central CSF spaces; small ones are sulci seen end-on.
    keep = np.nonzero(sizes >= max(0.3, 0.2 * sizes.max()))[0] + 1
    ventricles = np.isin(labels, keep)
    crop = crop_of(ndimage.binary_dilation(ventricles), (1, 1, 1))
    spaces = head.csf(head.smooth[crop]) * ndimage.binary_dilation(ventricles[crop])
    rows, cols = head.coords_mm(crop)
    sides = ("both", "left", "right")[int(rng.integers(3))]
    if sides != "both":
        sign = 1 if sides == "left" else -1
        one = spaces * np.clip(sign * (cols - head.midline_mm) / head.spacing[2] + 0.5, 0, 1)
        if _volume_ml(one, head) >= 1.5 * volume_ml:
            spaces = one
        else:
            sides = "both"
    along = dependent * rows  # mm, increasing towards the dependent side
    deepest = float(along.max())
    span = float(along.max() - along.min())

    def frac_at(level: float) -> np.ndarray:
        # Blood fills the ventricles up to a fluid level ``level`` mm above their most dependent point.
        return (
            occupancy(
                lambda z: np.broadcast_to(deepest - level - along, (len(z), *along.shape[1:])),
                range(crop[0].start, crop[0].stop),
                head.spacing,
            )
            * spaces
        )

    level = fit_scale(lambda s: _volume_ml(frac_at(s), head), volume_ml, 0.3 * span, span + 2, "the ventricles", power=1.5)
    return _full(head, crop, frac_at(level)), {"fluid_level_mm": round(level, 2), "sides": sides}


def _displace(head: _Head, frac: np.ndarray, volume_ml: float) -> tuple[np.ndarray, float]:
    """The background with brain pushed away from the lesion: a smooth radial displacement.

    The displacement peaks at the lesion's equivalent-sphere surface, fades
    over about 1.5 radii, and is zero at and beyond the inner table, so the
    skull and scalp never move.
    """
    r_eq = (3 * volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    amplitude = min(0.3 * r_eq, 6.0)  # mm; well below the falloff length, so the map never folds
    falloff = 1.5 * r_eq
    spacing = np.asarray(head.spacing)
    crop = crop_of(frac > 1e-3, tuple(int(v) for v in np.ceil(2.5 * falloff / spacing)))  # beyond: < 5 % of it
    grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in crop], indexing="ij"))
    nz = np.nonzero(frac)
    centre = np.array([(g * frac[nz]).sum() / frac[nz].sum() for g in nz], dtype=np.float32)
    vec = (grid - centre[:, None, None, None]) * spacing[:, None, None, None].astype(np.float32)
    dist = np.sqrt((vec**2).sum(axis=0)) + 1e-3
    weight = (
        ndimage.gaussian_filter(ndimage.binary_erosion(head.inside[crop], iterations=2).astype(np.float32), 2.0 / spacing)
        * head.inside[crop]
    )
    shift_mm = amplitude * np.exp(-0.5 * (np.maximum(dist - r_eq, 0) / falloff) ** 2) * weight
    source = grid - (vec / dist) * shift_mm / spacing[:, None, None, None]
    out = head.hu.astype(np.float32, copy=True)
    # Cubic, not linear: linear interpolation at a varying sub-voxel shift smooths the noise
    # by varying amounts, which shows as rings around the lesion. Where nothing moves (the skull
    # and beyond), the original stays bit for bit.
    moved = ndimage.map_coordinates(head.hu.astype(np.float32), source, order=3, mode="nearest")
    out[crop] = np.where(shift_mm > 1e-3, moved, out[crop])
    return out, round(float(amplitude), 2)
