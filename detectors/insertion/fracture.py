"""A fracture inserted into a real radiograph: a lucent line across a long bone, optionally displaced.

The bone segment comes from the caller's bone mask: a point well inside the
bone whose surrounding window is elongated (the principal direction of the
mask's pixels there is the shaft's axis) and not a joint. The fracture line
crosses the whole width of the bone through that point, transverse or oblique
to the axis; along it the image is darkened towards the adjacent soft tissue,
1-3 pixels wide, with a slight irregular course. A displaced fracture shifts
the far fragment sideways (along the fracture line) by 1-4 mm, which makes
the step in the cortex a reader looks for; the shift fades away from the
line so that the image has no seam.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from detectors.insertion.common import Inserted2D

logger = logging.getLogger(__name__)

WINDOW_MM = 30.0  # half-size of the window in which the shaft's axis is measured
ELONGATION = 4.0  # eigenvalue ratio of the window's bone pixels: a shaft, not an epiphysis
SHAFT_WIDTH_MM = (5.0, 45.0)  # a bone narrower or wider than this is not a long-bone shaft here
LINE_PX = (1, 3)
OBLIQUE_DEG = (20.0, 45.0)
SHIFT_MM = (1.0, 4.0)
FRAGMENT_MM = (12.0, 40.0)  # the shift is whole up to the first distance from the line, gone by the second


def insert_fracture_radiograph(
    image: np.ndarray,
    spacing_mm: float | Sequence[float],
    bone: np.ndarray,
    rng: np.random.Generator,
    *,
    displaced: bool,
    oblique: bool | None = None,
) -> Inserted2D:
    """Insert a fracture line across a long bone.

    Parameters
    ----------
    image
        (rows, cols) float, bright = dense, [0, 1].
    spacing_mm
        Pixel spacing, one value or (row, col); the mean is used.
    bone
        (rows, cols) bool bone mask.
    rng
        Draws the site, the obliquity, the width, depth and displacement.
    displaced
        Shift the far fragment sideways by 1-4 mm.
    oblique
        An oblique (20-45 degrees) rather than transverse line; drawn when None.

    Returns
    -------
    Inserted2D
        ``mask`` is the line widened to about 2 mm and clipped to the bone;
        ``box`` surrounds it; ``contrast`` is the depth of the lucency;
        ``params`` holds the angle, width, shift and the line's end points.

    Raises
    ------
    ValueError
        When no long-bone shaft is found in the mask.
    """
    if image.ndim != 2 or bone.shape != image.shape:
        raise ValueError(f'Arguments "image" and "bone" must be (rows, cols) of one shape, got {image.shape} and {bone.shape}')
    px = float(np.mean(spacing_mm))
    bone = bone.astype(bool)
    point, axis, width_mm = _shaft_point(bone, px, rng)
    normal = np.array([-axis[1], axis[0]])  # across the shaft
    if oblique is None:
        oblique = bool(rng.random() < 0.5)
    angle = float(rng.uniform(*OBLIQUE_DEG)) * float(rng.choice([-1.0, 1.0])) if oblique else 0.0
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    direction = np.array([c * normal[0] - s * normal[1], s * normal[0] + c * normal[1]])  # the line's course
    ends = [_exit(bone, point, sign * direction) + sign * direction * (1.0 / px) for sign in (-1.0, 1.0)]
    across = np.array([-direction[1], direction[0]])  # the line's normal

    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    rel_r, rel_c = rows - point[0], cols - point[1]
    along = rel_r * direction[0] + rel_c * direction[1]  # px along the line from the point
    off = rel_r * across[0] + rel_c * across[1]  # px across the line (signed): the two fragments
    out = image.astype(np.float32, copy=True)
    shift_mm = 0.0
    if displaced:
        shift_mm = float(rng.uniform(*SHIFT_MM)) * float(rng.choice([-1.0, 1.0]))
        far = np.clip((FRAGMENT_MM[1] - off * px) / (FRAGMENT_MM[1] - FRAGMENT_MM[0]), 0, 1) * (off > 0)
        # The fragment moves with a few mm of soft tissue, fading out so that no seam shows beside the bone.
        near_bone = ndimage.gaussian_filter(
            ndimage.binary_dilation(bone, iterations=int(abs(shift_mm) / px) + 1).astype(np.float32), 3.0 / px
        )
        amount = far * near_bone * shift_mm / px  # px
        out = ndimage.map_coordinates(
            image.astype(np.float32), [rows - amount * direction[0], cols - amount * direction[1]], order=1, mode="nearest"
        ).astype(np.float32)
        bone = bone | (
            ndimage.map_coordinates(bone.astype(np.float32), [rows - amount * direction[0], cols - amount * direction[1]], order=1) > 0.5
        )

    # The lucency: the line, wiggling by up to ~0.3 mm, darkened towards the nearby soft tissue.
    width_px = int(rng.integers(LINE_PX[0], LINE_PX[1] + 1))
    k = rng.uniform(0.02, 0.08, 2) * max(px, 0.1)  # radians per px: a few mm per undulation
    wiggle = (0.3 / px) * (np.sin(k[0] * along + rng.uniform(0, 6.3)) * 0.6 + np.sin(k[1] * along + rng.uniform(0, 6.3)) * 0.4)
    half = float(np.linalg.norm(ends[1] - ends[0])) / 2
    mid = (ends[0] + ends[1]) / 2
    t = (rows - mid[0]) * direction[0] + (cols - mid[1]) * direction[1]
    line = np.clip(width_px / 2 + 0.5 - np.abs(off - wiggle), 0, 1) * (np.abs(t) <= half)
    bone_soft = ndimage.gaussian_filter(bone.astype(np.float32), 0.7)
    window = (np.abs(along) < WINDOW_MM / px) & (np.abs(off) < WINDOW_MM / px)
    soft = window & ~ndimage.binary_dilation(bone, iterations=max(1, int(2 / px)))
    bone_level = float(np.median(out[window & bone]))
    soft_level = float(np.median(out[soft])) if soft.any() else bone_level - 0.1
    depth = float(rng.uniform(0.5, 0.9)) * max(bone_level - soft_level, 0.02)
    out = out - depth * line * bone_soft

    mask = (np.abs(off - wiggle) <= max(1.0 / px, width_px / 2)) & (np.abs(t) <= half) & ndimage.binary_dilation(bone)
    where = np.argwhere(mask)
    box = (int(where[:, 0].min()), int(where[:, 1].min()), int(where[:, 0].max()) + 1, int(where[:, 1].max()) + 1)
    params: dict[str, float | str] = {
        "angle_deg": round(angle, 1),
        "width_mm": round(width_px * px, 2),
        "shift_mm": round(shift_mm, 2),
        "bone_width_mm": round(width_mm, 1),
        "end0": f"{ends[0][0]:.1f},{ends[0][1]:.1f}",
        "end1": f"{ends[1][0]:.1f},{ends[1][1]:.1f}",
    }
    logger.debug("inserted fracture at %s: %s", point, params)
    return Inserted2D(np.clip(out, 0.0, 1.0), mask, "fracture", (float(point[0]), float(point[1])), box, depth, None, params)


def _exit(bone: np.ndarray, start: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The last bone pixel reached from ``start`` walking by ``step`` (a unit vector, px)."""
    here = start.astype(np.float64)
    while True:
        nxt = here + 0.5 * step
        r, c = int(round(nxt[0])), int(round(nxt[1]))
        if not (0 <= r < bone.shape[0] and 0 <= c < bone.shape[1]) or not bone[r, c]:
            return here
        here = nxt


def _shaft_point(bone: np.ndarray, px: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A point inside a long bone's shaft, the shaft's axis (unit, row/col) and its width (mm)."""
    depth = ndimage.distance_transform_edt(bone) * px
    # Clear of the image's edge, so that the fracture and its window are on the image.
    margin = int(10.0 / px) + 1
    depth[:margin], depth[-margin:], depth[:, :margin], depth[:, -margin:] = 0, 0, 0, 0
    candidates = np.argwhere(depth >= 2.0)
    if not len(candidates):
        raise ValueError("cannot place a fracture: no bone in the mask is 4 mm wide")
    half = int(WINDOW_MM / px)
    for index in rng.permutation(len(candidates))[:300]:
        point = candidates[index]
        r0, c0 = max(point[0] - half, 0), max(point[1] - half, 0)
        window = bone[r0 : point[0] + half + 1, c0 : point[1] + half + 1]
        if not 0.15 < window.mean() < 0.8:
            continue
        # Only the component under the point: a neighbouring bone must not bend the axis.
        labels, _ = ndimage.label(window)
        coords = np.argwhere(labels == labels[point[0] - r0, point[1] - c0]).astype(np.float64)
        values, vectors = np.linalg.eigh(np.cov(coords.T))
        if values[1] < ELONGATION * max(values[0], 1e-9):
            continue
        axis = vectors[:, 1]
        normal = np.array([-axis[1], axis[0]])
        width = float(np.linalg.norm(_exit(bone, point, normal) - _exit(bone, point, -normal))) * px + px
        if SHAFT_WIDTH_MM[0] <= width <= SHAFT_WIDTH_MM[1]:
            return point.astype(np.float64), axis, width
    raise ValueError("cannot place a fracture: no long-bone shaft (an elongated, 5-45 mm wide bone segment) in the mask")
