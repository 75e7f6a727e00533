"""Classical candidate proposals: lesions a threshold finds where the network is unsure.

The phantom-trained networks see large bleeds on real anatomy but miss thin
subdural, epidural and subarachnoid blood and most bleeds under 1 mL: their
heatmap never rises there, so no candidate exists for the filter to score.
The oldest rule in head CT reading finds them: acute blood is denser than the
brain around it. A card's ``[filter] proposals = ["hyperdense"]`` adds, to the
heatmap's candidates, the components of intracranial pixels that are clearly
denser than the scan's own brain; the learned filter then decides which are
blood (its dense_* features, :data:`detectors.features.DENSE_FEATURES`).

Everything is measured relative to the scan itself (the median brain density),
not in absolute HU, because calibration differs between scanners (the real
head this project has puts white matter at 22 HU). Pixels next to bone are
left out: partial volume of the inner table is as dense as blood.

Pure numpy and scipy, on the network's own items (1 mm pixels for bleed-ct):
nothing is read or resampled twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from detectors.anatomy.grid import block_reduce, grow_in_plane

ABOVE_BRAIN_HU = 20.0  # acute blood (50-90 HU) is >= 25 HU above brain; grey matter ~10-15 HU
BLOOD_SPAN_HU = 80.0  # above brain + this the density is bone, calcification or contrast, not blood
MIDLINE_CAP_MM = 30.0  # further out, being off the midline says nothing more (the convexities)
# What counts towards the scan's brain density: parenchyma, not CSF (0-15 HU); then twice only what lies
# within BRAIN_WINDOW_HU of the estimate (the partial volume of CSF and parenchyma falls away). With CSF
# counted, an atrophic head (wide sulci and ventricles) would lower the reference, and the proposal
# threshold with it, until normal grey matter was proposed as blood.
BRAIN_RANGE_HU = (15.0, 60.0)
BRAIN_WINDOW_HU = 8.0
BONE_HU = 300.0
BONE_MARGIN_PX = 2  # pixels this close to bone are partial volume of it
SMOOTH_PX = 1.0  # Gaussian sigma in-plane: noise is 3-10 HU per pixel, blood contrast 25+
MAX_SLICE_MM = 10.0
MIN_ML = 0.02  # smaller specks are noise (a 0.3 mL bleed leaves well over this above threshold)


@dataclass(frozen=True)
class Hyperdense:
    """Pixels denser than the brain, on the item grid, and what the features need."""

    mask: np.ndarray  # (n, H, W) bool: proposed pixels (components >= MIN_ML only)
    smoothed_hu: np.ndarray  # (n, H, W) float32, HU after the in-plane Gaussian
    brain_hu: float  # the scan's median brain density
    candidate_pixels: np.ndarray  # (n, H, W) bool: inside the anatomy and away from bone (the ring's ground)
    voxel_ml: float
    midline_col: np.ndarray  # (n,) float: the middle of the intracranial space's columns per slice (falx, sinuses)
    pixel_mm: float

    def cells(self, stride: int) -> np.ndarray:
        """(n, H/stride, W/stride) bool: cells holding any proposed pixel."""
        return block_reduce(self.mask, stride, how="max") > 0

    def features(self, region: np.ndarray, box: tuple[slice, slice, slice], stride: int) -> dict[str, float]:
        """The dense_* features of a candidate: ``region`` (bool cells) within ``box`` on the heatmap grid."""
        pad = 3  # pixels: the ring below
        _, h, w = self.mask.shape
        r0, c0 = max(box[1].start * stride - pad, 0), max(box[2].start * stride - pad, 0)
        r1, c1 = min(box[1].stop * stride + pad, h), min(box[2].stop * stride + pad, w)
        window = (box[0], slice(r0, r1), slice(c0, c1))
        pixels = np.zeros((region.shape[0], r1 - r0, c1 - c0), dtype=bool)
        up = np.repeat(np.repeat(region, stride, axis=1), stride, axis=2)
        pr, pc = box[1].start * stride - r0, box[2].start * stride - c0
        pixels[:, pr : pr + up.shape[1], pc : pc + up.shape[2]] = up[:, : r1 - r0 - pr, : c1 - c0 - pc]
        dense = self.mask[window]
        inside = pixels & dense
        count = int(inside.sum())
        zs, _, cols = np.nonzero(inside if count else pixels)
        midline = float(np.abs(cols + c0 - self.midline_col[box[0].start + zs]).mean()) * self.pixel_mm
        midline = min(midline, MIDLINE_CAP_MM)  # the dural sinuses and the falx lie on it; blood anywhere
        if not count:
            return {
                "dense_log_ml": float(np.log(1e-3)),
                "dense_hu": 0.0,
                "dense_calcified_share": 0.0,
                "dense_contrast_hu": 0.0,
                "midline_mm": midline,
            }
        hu = self.smoothed_hu[window]
        values = hu[inside]
        top = float(np.percentile(values, 90)) - self.brain_hu
        # The ring: tissue that is not dense, within 3 pixels in-plane: what the lesion stands out from.
        ring = grow_in_plane(inside, pad)
        ring &= ~dense & self.candidate_pixels[window]
        around = float(np.median(hu[ring])) if ring.any() else self.brain_hu
        return {
            "dense_log_ml": float(np.log(1e-3 + count * self.voxel_ml)),
            "dense_hu": min(top, BLOOD_SPAN_HU),
            # A share, not a peak: blood that touches a calcified plexus is still mostly blood.
            "dense_calcified_share": float((values > self.brain_hu + BLOOD_SPAN_HU).mean()),
            "dense_contrast_hu": float(np.median(values)) - around,
            "midline_mm": midline,
        }


def hyperdense(hu: np.ndarray, bone: np.ndarray, allowed_cells: np.ndarray, stride: int, slice_mm: float, pixel_mm: float) -> Hyperdense:
    """Proposals from ``hu`` (n, H, W) HU on the item grid, ``bone`` (n, H, W) bool and the anatomy's cells.

    ``slice_mm`` is the slice spacing (a voxel's depth), ``pixel_mm`` the items' pixel size.
    """
    n, h, w = hu.shape
    anatomy = np.zeros((n, h, w), dtype=bool)
    ch, cw = allowed_cells.shape[1:]
    anatomy[:, : ch * stride, : cw * stride] = np.repeat(np.repeat(allowed_cells, stride, axis=1), stride, axis=2)
    near_bone = grow_in_plane(bone, BONE_MARGIN_PX)
    ground = anatomy & ~near_bone
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma=(0.0, SMOOTH_PX, SMOOTH_PX), mode="nearest")
    # The slice spacing comes from the series' headers: bounded, so that a nonsense value cannot turn a
    # speck into a large "bleed" (head CT slices are at most 10 mm; a single slice has none).
    depth_mm = min(max(slice_mm, pixel_mm), MAX_SLICE_MM) if math.isfinite(slice_mm) else pixel_mm
    voxel_ml = depth_mm * pixel_mm * pixel_mm / 1000.0
    brain = smooth[ground]
    brain = brain[(brain > BRAIN_RANGE_HU[0]) & (brain < BRAIN_RANGE_HU[1])]
    slices, cols = np.nonzero(anatomy.any(axis=1))  # the columns holding anatomy, per slice
    counts = np.bincount(slices, minlength=n)
    midline = np.bincount(slices, weights=cols, minlength=n) / np.maximum(counts, 1)
    midline = np.where(counts > 0, midline, (w - 1) / 2)
    if brain.size < 100:  # no brain to compare with: propose nothing
        return Hyperdense(np.zeros((n, h, w), bool), smooth, 0.0, ground, voxel_ml, midline, pixel_mm)
    brain_hu = float(np.median(brain))
    for _ in range(2):
        near = brain[np.abs(brain - brain_hu) < BRAIN_WINDOW_HU]
        brain_hu = float(np.median(near)) if near.size >= 100 else brain_hu
    dense = (smooth >= brain_hu + ABOVE_BRAIN_HU) & ground
    structure = ndimage.generate_binary_structure(3, 1)
    structure[0] = structure[2] = structure[1]
    labels, count = ndimage.label(dense, structure=structure)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:] * voxel_ml
        keep = np.concatenate([[False], sizes >= MIN_ML])
        dense = keep[labels]
    return Hyperdense(dense, smooth, brain_hu, ground, voxel_ml, midline, pixel_mm)
