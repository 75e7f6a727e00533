"""The lungs: parenchyma on chest CT, lung fields on a frontal chest radiograph.

Nodule detectors trained on phantoms fire on collimator edges, the
mediastinum and bowel gas; a nodule can only be in a lung. Both masks are
classical (thresholds, morphology, connected components), work on a coarse
grid for speed and are upsampled to the input's matrix.

CT (:func:`lung_mask_ct`)
    1. Air is below ``AIR_HU``. Per slice, air connected to the matrix edge
       is outside the body and dropped.
    2. Of the air left, 3D components of at least ``MIN_COMPONENT_FRACTION``
       of the largest are lungs (the lungs are linked by the bronchi, or are
       the two largest): stomach and colon gas below the diaphragm, a few
       per cent of the lung volume, are not linked to them.
    3. Per slice, small round air components near the midline (trachea,
       main bronchi, oesophagus) are dropped.
    4. Per slice, each side is closed with a square of half-width ``BAY_MM``
       (the two sides apart, so the mediastinum is never a bay): holes and
       bays up to ``MAX_BAY_MM`` across (vessels, nodules, a juxtapleural
       nodule against the chest wall) join the lung; larger bays (heart,
       spine) do not. A margin of ``CT_MARGIN_MM`` covers the partial-volume
       rim at the pleura and the working grid. Known gap: a juxtapleural
       nodule over ~20 mm where the pleura curves sharply (posterior gutter,
       heart border) can be left partly outside.

Radiograph (:func:`lung_fields_radiograph`)
    1. A copy on a grid of about ``XR_GRID_MM``; a grey opening with a
       vertical line of ``RIB_MM`` removes ribs and clavicles (bright, thinner
       than that vertically) but keeps the chest wall, mediastinum and
       diaphragm, which are taller.
    2. What is bright before the opening (bones of the shoulder, mediastinum:
       above ``BARRIER_QUANTILE``) and what lies within ``BACKGROUND_MM`` of
       the direct-exposure background is never lung.
       Dark regions below a sweep of intensity quantiles, split at corridors
       narrower than ``2 * NECK_MM`` (neck, shoulder soft tissue) and not
       touching the image edge (background, collimator), are candidates; a candidate is a
       lung if its size, position and shape are plausible. At each
       threshold the best pair (one left, one right of the image centre,
       overlapping vertically) is scored, and the threshold with the largest
       plausible pair wins: lower thresholds give fragments, higher ones
       leak into the mediastinum, abdomen or background and stop being
       plausible.
    3. Each field is closed and its holes filled (nodules, hila), then
       widened by ``XR_MARGIN_MM`` so a nodule at the pleura or over a rib
       is inside, and kept ``CLEAR_EDGE_MM`` from the image edge.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from detectors.anatomy.grid import block_reduce, check_spacing, disk, grid_factor, lookup, touching_edge, upsample

logger = logging.getLogger(__name__)

# --- CT
AIR_HU = -400.0  # aerated lung is -950..-500; soft tissue, nodules and vessels are above
CT_GRID_MM = 2.0  # in-plane pixels of the working grid, about (the margin hides its blocks)
MIN_COMPONENT_FRACTION = 0.15  # of the largest internal air component's volume
AIRWAY_MAX_MM2 = 500.0  # a trachea or main bronchus cross-section (<= ~25 mm across)
AIRWAY_MIDLINE = 0.2  # within this fraction of the air's left-right extent from its centre
BAY_MM = 30.0  # closing half-width: bays narrower than ~60 mm are candidates
MAX_BAY_MM = 40.0  # a bay or hole up to about this diameter joins the lung (nodules are <= 30 mm)
CT_MARGIN_MM = 4.0  # the partial-volume rim at the pleura, and the working grid's blocks

# --- radiograph
XR_GRID_MM = 3.0
RIB_MM = 24.0  # ribs are 8-15 mm tall on a PA view; the chest wall and mediastinum are far taller
XR_SMOOTH_MM = 3.0
BACKGROUND_QUANTILE = 0.03  # of the whole image: direct exposure, where there is any
BACKGROUND_MM = 10.0
BARRIER_QUANTILE = 0.6  # before the opening, brighter than this is never lung (bone, mediastinum)
THRESHOLD_QUANTILES = np.linspace(0.06, 0.6, 13)  # of the image inside the edge margin
NECK_MM = 10.0  # corridors narrower than twice this join a lung to the neck, shoulder or background
EDGE_MM = 4.0  # a candidate within this distance of the image edge is background or collimator
CLEAR_EDGE_MM = 10.0  # the widened fields never come closer to the image edge than this
LUNG_AREA = (0.02, 0.3)  # fraction of the image, one lung
XR_CLOSE_MM = 10.0
XR_MARGIN_MM = 5.0


# --------------------------------------------------------------------------- CT


def lung_mask_ct(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(slices, rows, cols) bool: the lung parenchyma of a chest CT.

    Parameters
    ----------
    hu
        (slices, rows, cols) HU.
    spacing_mm
        (slice, row, col) spacing in mm.

    Returns
    -------
    numpy.ndarray
        True in the lungs, with vessels, nodules (juxtapleural ones included)
        and a ``CT_MARGIN_MM`` rim; the trachea, the outside air, the
        mediastinum and gas below the diaphragm are False. Slices without
        lung are all False, and so is the whole mask when the series has no
        air inside the body. The series is assumed to be a chest CT: on an
        abdomen-only series the largest internal air (bowel) would be taken.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f'Argument "hu" must be (slices, rows, cols), got shape {hu.shape}')
    dz, dy, dx = check_spacing(spacing_mm, 3)
    factor = grid_factor(min(dy, dx), CT_GRID_MM, min(hu.shape[1:]))
    py, px = dy * factor, dx * factor  # working pixel, mm
    small = block_reduce(hu, factor)  # (slices, rows/f, cols/f) HU
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)

    air = small < AIR_HU
    labels, _ = ndimage.label(air, structure=in_plane)
    air[lookup(labels, touching_edge(labels))] = False  # outside the body, slice by slice
    lungs = _largest_components(air)
    if not lungs.any():
        return np.zeros(hu.shape, dtype=bool)
    # The rest is in-plane and local: work inside the lungs' bounding box, padded.
    pad = int(math.ceil((BAY_MM + CT_MARGIN_MM) / min(py, px))) + 2
    rr, cc = np.flatnonzero(lungs.any(axis=(0, 2))), np.flatnonzero(lungs.any(axis=(0, 1)))
    r0, r1 = max(rr[0] - pad, 0), min(rr[-1] + pad + 1, lungs.shape[1])
    c0, c1 = max(cc[0] - pad, 0), min(cc[-1] + pad + 1, lungs.shape[2])
    box = lungs[:, r0:r1, c0:c1]
    box &= ~_airways(box, in_plane, py * px)
    if not box.any():  # only a trachea: above the apices
        return np.zeros(hu.shape, dtype=bool)
    box = _close_bays(box, in_plane, py, px)
    if CT_MARGIN_MM > 0:
        box = ndimage.binary_dilation(box, structure=disk(CT_MARGIN_MM / min(py, px))[None])
    lungs[:] = False
    lungs[:, r0:r1, c0:c1] = box
    return upsample(lungs, hu.shape, factor)


def _largest_components(air: np.ndarray) -> np.ndarray:
    """Internal air components (3D, 6-connected) of at least ``MIN_COMPONENT_FRACTION`` of the largest."""
    labels, count = ndimage.label(air)
    if count == 0:
        return air
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= MIN_COMPONENT_FRACTION * sizes.max()
    return keep[labels]


def _airways(lungs: np.ndarray, in_plane: np.ndarray, pixel_mm2: float) -> np.ndarray:
    """Per slice, the small air components near the left-right middle of the air: trachea, main bronchi."""
    labels, count = ndimage.label(lungs, structure=in_plane)
    if count == 0:
        return lungs
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=count + 1)[1:]
    area = counts * pixel_mm2
    col_of = np.broadcast_to(np.arange(lungs.shape[2], dtype=np.float64), lungs.shape).ravel()
    col = np.bincount(flat, weights=col_of, minlength=count + 1)[1:] / np.maximum(counts, 1)
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    # The middle and extent of all the lung air across the series: a single slice
    # may hold only one lung, whose middle is not the body's.
    centre, extent = 0.5 * (cols[0] + cols[-1]), cols[-1] - cols[0] + 1
    airway = (area <= AIRWAY_MAX_MM2) & (np.abs(col - centre) <= AIRWAY_MIDLINE * extent)
    drop = np.zeros(count + 1, dtype=bool)
    drop[1:] = airway
    return drop[labels]


def _close_bays(lungs: np.ndarray, in_plane: np.ndarray, py: float, px: float) -> np.ndarray:
    """Per slice, add holes and bays up to ``MAX_BAY_MM`` across to the lungs."""
    # A closing with a square is separable (cost independent of its size) and never
    # leaves the convex hull; its bays are only candidates, sized below.
    size = (1, 2 * int(round(BAY_MM / py)) + 1, 2 * int(round(BAY_MM / px)) + 1)
    # Each lung is closed on its own (split at the middle of the lungs' extent), so
    # the mediastinum between them is never a bay, and a nodule against the
    # mediastinal pleura is not merged with it.
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    middle = (cols[0] + cols[-1] + 1) // 2
    closed = np.zeros_like(lungs)
    for half in (slice(0, middle), slice(middle, None)):
        grown = ndimage.maximum_filter(lungs[:, :, half], size=size, mode="constant", cval=False)
        closed[:, :, half] = ndimage.minimum_filter(grown, size=size, mode="constant", cval=True)
    outside, _ = ndimage.label(~lungs, structure=in_plane)
    holes = ~lungs & ~lookup(outside, touching_edge(outside))
    candidate = (closed | holes) & ~lungs
    labels, count = ndimage.label(candidate, structure=in_plane)
    if count == 0:
        return lungs
    area = np.bincount(labels.ravel()) * (py * px)
    small = area <= math.pi * (0.5 * MAX_BAY_MM) ** 2
    small[0] = False
    return lungs | small[labels]


# --------------------------------------------------------------------------- radiograph


def lung_fields_radiograph(image: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """(rows, cols) bool: the lung fields of a frontal (PA or AP) chest radiograph.

    Parameters
    ----------
    image
        (rows, cols) float, bright = dense (MONOCHROME1 already inverted);
        any range ([0, 1], or the detectors' normalised [-0.5, 1.5]):
        thresholds are quantiles of the image.
    spacing_mm
        (row, col) pixel spacing in mm; an estimate is good enough.

    Returns
    -------
    numpy.ndarray
        True in the (at most two) lung fields, with a ``XR_MARGIN_MM`` margin.
        All False when no plausible lung field is found (not a frontal chest,
        a blank or saturated image, lungs that are completely opaque): the
        caller decides whether that means "report nothing" or "do not
        constrain", and should say so. One field alone is returned when only
        one is plausible.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f'Argument "image" must be (rows, cols), got shape {image.shape}')
    dy, dx = check_spacing(spacing_mm, 2)
    factor = grid_factor(min(dy, dx), XR_GRID_MM, min(image.shape))
    py, px = dy * factor, dx * factor
    small = np.nan_to_num(block_reduce(image, factor))  # (rows/f, cols/f)
    rib_px = max(3, int(round(RIB_MM / py)))
    ribless = ndimage.grey_opening(small, size=(rib_px, 1))
    # The opening would also remove a collimator strip along the top or bottom edge
    # (bright, thin), opening the apices onto the dark background beyond it.
    ribless[:rib_px], ribless[-rib_px:] = small[:rib_px], small[-rib_px:]
    smooth = ndimage.gaussian_filter(ribless, sigma=(XR_SMOOTH_MM / py, XR_SMOOTH_MM / px))
    # The opening also removes the clavicles and the bony top of the shoulders, which
    # part the apices from the dark soft tissue and background above them: what is
    # bright before the opening stays a barrier.
    raw = ndimage.gaussian_filter(small, sigma=(1.0, 1.0))
    edge_r, edge_c = max(1, int(math.ceil(EDGE_MM / py))), max(1, int(math.ceil(EDGE_MM / px)))
    inner = smooth[edge_r:-edge_r, edge_c:-edge_c]
    if inner.size == 0 or float(inner.max() - inner.min()) <= 1e-6:
        return np.zeros(image.shape, dtype=bool)  # blank: nothing to find
    barrier = np.quantile(raw[edge_r:-edge_r, edge_c:-edge_c], BARRIER_QUANTILE)
    # Direct exposure outside the body is the darkest thing and reaches the edge; the thin
    # soft tissue over the shoulders that parts it from the apices is kept out as well.
    background, _ = ndimage.label(raw < np.quantile(raw, BACKGROUND_QUANTILE))
    background = np.isin(background, touching_edge(background))
    allowed = (raw < barrier) & (ndimage.distance_transform_edt(~background, sampling=(py, px)) > BACKGROUND_MM)
    best: list[np.ndarray] = []
    best_area = 0
    for t in np.quantile(inner, THRESHOLD_QUANTILES):
        pair = _plausible_pair(_split_necks((smooth < t) & allowed, (py, px)), (edge_r, edge_c))
        area = sum(int(m.sum()) for m in pair)
        if len(pair) > len(best) or (len(pair) == len(best) and area > best_area):
            best, best_area = pair, area
    if not best:
        logger.debug("no plausible lung field")
        return np.zeros(image.shape, dtype=bool)
    fields = np.zeros(small.shape, dtype=bool)
    close = disk(XR_CLOSE_MM / min(py, px))
    for field in best:  # one at a time: a closing must not bridge the mediastinum
        pad = close.shape[0]
        padded = np.pad(field, pad)
        padded = ndimage.binary_fill_holes(ndimage.binary_closing(padded, structure=close))
        fields |= padded[pad:-pad, pad:-pad]
    fields = ndimage.binary_dilation(fields, structure=disk(XR_MARGIN_MM / min(py, px)))
    # Closing and margin must not carry a field onto the collimator or the background.
    clear_r, clear_c = int(math.ceil(CLEAR_EDGE_MM / py)), int(math.ceil(CLEAR_EDGE_MM / px))
    fields[:clear_r], fields[-clear_r:], fields[:, :clear_c], fields[:, -clear_c:] = False, False, False, False
    return upsample(fields, image.shape, factor)


def _split_necks(dark: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Label ``dark`` after cutting connections narrower than ``2 * NECK_MM``.

    On a processed radiograph the neck and the soft tissue above the shoulder
    are as dark as the apices, and join them to the background. An erosion by
    ``NECK_MM`` cuts those corridors; every dark pixel within ``NECK_MM`` of an
    eroded core gets the label of its nearest core (an opening, so the lung's
    own outline comes back, and only a stub of each corridor).
    """
    depth = ndimage.distance_transform_edt(dark, sampling=pixel_mm)  # mm to the nearest bright pixel
    cores, count = ndimage.label(depth > NECK_MM)
    if count == 0:
        return cores
    gap, nearest = ndimage.distance_transform_edt(cores == 0, sampling=pixel_mm, return_indices=True)
    labels = cores[nearest[0], nearest[1]]
    labels[~dark | (gap > NECK_MM)] = 0
    return labels


def _plausible_pair(labels: np.ndarray, edge: tuple[int, int]) -> list[np.ndarray]:
    """The two (or one) labelled regions most like lung fields, left one first."""
    rows, cols = labels.shape
    er, ec = edge
    near_edge = np.zeros(labels.shape, dtype=bool)
    near_edge[:er], near_edge[-er:], near_edge[:, :ec], near_edge[:, -ec:] = True, True, True, True
    at_edge = set(np.unique(labels[near_edge]).tolist())
    found = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or k in at_edge:
            continue
        comp = labels[box] == k
        area = int(comp.sum()) / (rows * cols)
        height, width = (box[0].stop - box[0].start) / rows, (box[1].stop - box[1].start) / cols
        rr, cc = np.nonzero(comp)
        r_mid, c_mid = (rr.mean() + box[0].start) / rows, (cc.mean() + box[1].start) / cols
        # A lung field is tall (apex to dome), in the upper two thirds, off the midline,
        # and fills a fair part of its bounding box (a leak into the abdomen or the
        # lateral soft tissue is ragged).
        if not (
            LUNG_AREA[0] <= area <= LUNG_AREA[1]
            and height >= 0.25
            and height >= 0.8 * width
            and 0.15 <= r_mid <= 0.65
            and 0.08 <= abs(c_mid - 0.5) <= 0.4
            and area / (height * width) >= 0.4
        ):
            continue
        found.append((area, c_mid, box[0].start / rows, box[0].stop / rows, k))
    left = [f for f in found if f[1] < 0.5]
    right = [f for f in found if f[1] >= 0.5]
    pairs = [(a, b) for a in left for b in right if min(a[3], b[3]) - max(a[2], b[2]) >= 0.5 * min(a[3] - a[2], b[3] - b[2])]
    if pairs:
        a, b = max(pairs, key=lambda p: p[0][0] + p[1][0])
        return [labels == a[4], labels == b[4]]
    if found:
        return [labels == max(found)[4]]
    return []
