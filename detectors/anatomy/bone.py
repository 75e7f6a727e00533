"""Bone: where a fracture can be, on an extremity radiograph and on CT.

A fracture detector trained on phantoms fires on collimator edges and
burned-in markers; a fracture is always in bone. Both masks are classical and
deliberately generous: dilated by ``MARGIN_MM`` so that a cortical break, a
lucent line and a displaced fragment next to the shaft are inside.

Radiograph (:func:`bone_mask_radiograph`)
    1. A copy on a grid of about ``XR_GRID_MM``, lightly smoothed.
    2. Collimator shutters and unexposed plate are bright and flat (no noise,
       no texture) and reach the image edge: flat bright regions touching the
       edge, widened by their blurred rim, are never bone.
    3. Bone is the brightest of three intensity classes (Otsu) of what is
       left: background (direct exposure), soft tissue, bone.
    4. Components smaller than ``MIN_BONE_MM2`` (text, lead markers, noise)
       are dropped unless they lie within ``MARGIN_MM`` of a kept one (a
       small fragment); the rest is dilated by ``MARGIN_MM``.

CT (:func:`bone_mask_ct`)
    Above ``BONE_HU`` on a max-pooled grid (so thin cortex is kept),
    specks under ``MIN_SPECK_MM3`` dropped, dilated by ``MARGIN_MM``
    in-plane and by the nearest whole number of slices across.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from detectors.anatomy.grid import block_reduce, check_spacing, disk, grid_factor, lookup, upsample

MARGIN_MM = 3.0
# --- radiograph
XR_GRID_MM = 0.7
FLAT_WINDOW_MM = 3.0
FLAT_FRACTION = 0.003  # local std below this fraction of the intensity range: no noise, no texture
SHUTTER_RIM_MM = 25.0
SHUTTER_SIDE = 0.25  # of the shorter side: the least a shutter runs along the edge
MIN_BONE_MM2 = 150.0  # a 12 x 12 mm letter is smaller; a phalanx or a fibula is larger
# --- CT
BONE_HU = 200.0
CT_GRID_MM = 1.0
MIN_SPECK_MM3 = 20.0


def bone_mask_radiograph(image: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """(rows, cols) bool: dense bone on an extremity radiograph, widened by ``MARGIN_MM``.

    Parameters
    ----------
    image
        (rows, cols) float, bright = dense, any range (thresholds are relative).
    spacing_mm
        (row, col) pixel spacing in mm; an estimate is good enough.

    Returns
    -------
    numpy.ndarray
        True on and within ``MARGIN_MM`` of bone; never on a flat collimator or
        unexposed border, nor on small bright marks away from bone. All False
        on a blank image.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f'Argument "image" must be (rows, cols), got shape {image.shape}')
    dy, dx = check_spacing(spacing_mm, 2)
    factor = grid_factor(min(dy, dx), XR_GRID_MM, min(image.shape))
    py, px = dy * factor, dx * factor
    small = np.nan_to_num(block_reduce(image, factor))  # (rows/f, cols/f)
    lo, hi = (float(v) for v in np.quantile(small, (0.001, 0.999)))
    if hi - lo <= 1e-6:
        return np.zeros(image.shape, dtype=bool)
    window = (max(3, int(round(FLAT_WINDOW_MM / py))), max(3, int(round(FLAT_WINDOW_MM / px))))
    mean = ndimage.uniform_filter(small, window)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(small * small, window) - mean * mean, 0.0))
    smooth = ndimage.gaussian_filter(small, sigma=1.0)

    # Shutters: flat, brighter than the middle of the range, touching the edge. Their
    # penumbra is a ramp tens of mm wide (focal spot blur, edge enhancement), as bright
    # as bone at its inner end: nothing within SHUTTER_RIM_MM of a shutter is bone.
    flat_bright = (std < FLAT_FRACTION * (hi - lo)) & (smooth > 0.5 * (lo + hi))
    labels, _ = ndimage.label(flat_bright)
    # A shutter runs along a good part of a side; a saturated bone shaft that leaves
    # the image (windowed to white, as flat as a shutter) crosses the edge briefly.
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    run = np.bincount(edge, minlength=int(labels.max()) + 1)
    run[0] = 0
    shutter = lookup(labels, np.flatnonzero(run >= SHUTTER_SIDE * min(labels.shape)))
    if shutter.any():
        shutter = ndimage.distance_transform_edt(~shutter, sampling=(py, px)) <= SHUTTER_RIM_MM
    field = smooth[~shutter]
    if field.size < 64 or float(field.max() - field.min()) <= 1e-6:
        return np.zeros(image.shape, dtype=bool)
    _, upper = _otsu3(field)
    bone = (smooth > upper) & ~shutter
    labels, count = ndimage.label(bone)
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    area = np.bincount(labels.ravel()) * (py * px)
    big = area >= MIN_BONE_MM2
    big[0] = False
    kept = big[labels]
    margin = disk(MARGIN_MM / min(py, px))
    near = ndimage.binary_dilation(kept, structure=margin) if kept.any() else kept
    fragments = np.unique(labels[near & bone & ~kept])  # small pieces next to a bone
    keep = big.copy()
    keep[fragments[fragments > 0]] = True
    mask = ndimage.binary_dilation(keep[labels], structure=margin) & ~shutter
    return upsample(mask, image.shape, factor)


def _otsu3(values: np.ndarray, bins: int = 128) -> tuple[float, float]:
    """The two thresholds that split ``values`` into three classes of least within-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w = np.concatenate([[0.0], np.cumsum(p)])  # w[i]: weight of bins < i
    m = np.concatenate([[0.0], np.cumsum(p * centres)])
    total = m[-1]
    i, j = np.meshgrid(np.arange(1, bins), np.arange(1, bins), indexing="ij")  # class edges i < j
    w0, w1, w2 = w[i], w[j] - w[i], 1.0 - w[j]
    m0, m1, m2 = m[i], m[j] - m[i], total - m[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = m0**2 / w0 + m1**2 / w1 + m2**2 / w2  # maximising this minimises within-class variance
    between[(i >= j) | (w0 <= 0) | (w1 <= 0) | (w2 <= 0)] = -np.inf
    a, b = np.unravel_index(int(np.argmax(between)), between.shape)
    return float(edges[i[a, b]]), float(edges[j[a, b]])


def bone_mask_ct(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(slices, rows, cols) bool: bone above ``BONE_HU``, dilated by ``MARGIN_MM``.

    Parameters
    ----------
    hu
        (slices, rows, cols) HU.
    spacing_mm
        (slice, row, col) spacing in mm.

    Returns
    -------
    numpy.ndarray
        True on and near bone (contrast-filled vessels above ``BONE_HU`` too:
        the mask bounds where a fracture may be, it does not label bone).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f'Argument "hu" must be (slices, rows, cols), got shape {hu.shape}')
    dz, dy, dx = check_spacing(spacing_mm, 3)
    factor = grid_factor(min(dy, dx), CT_GRID_MM, min(hu.shape[1:]))
    py, px = dy * factor, dx * factor
    # Max-pooling keeps a cortex thinner than a block, which a mean would average away.
    bone = block_reduce(hu, factor, how="max") > BONE_HU
    labels, count = ndimage.label(bone)
    if count == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel()) * (dz * py * px)
    keep = sizes >= MIN_SPECK_MM3
    keep[0] = False
    bone = keep[labels]
    bone = ndimage.binary_dilation(bone, structure=disk(MARGIN_MM / min(py, px))[None])
    across = int(math.floor(MARGIN_MM / dz + 0.5))
    if across > 0:
        bone = ndimage.maximum_filter1d(bone, size=2 * across + 1, axis=0)
    return upsample(bone, hu.shape, factor)
