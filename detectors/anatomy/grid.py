"""Working grids shared by the anatomy masks: pooling, upsampling, discs, label look-ups.

The masks decide on a coarse grid (a few mm: anatomy is large and the
decisions are fast there) and come back to the source pixels by nearest
neighbour; these are the helpers for both directions.
"""

from __future__ import annotations

import math

import numpy as np


def disk(radius_px: float) -> np.ndarray:
    """(2r+1, 2r+1) bool disc; radius at least one pixel."""
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r + 0.5


def block_reduce(image: np.ndarray, factor: int, how: str = "mean") -> np.ndarray:
    """Pool the last two axes by ``factor`` (edge rows/cols that do not fill a block are dropped)."""
    if factor == 1:
        return image.astype(np.float32, copy=False)
    rows, cols = image.shape[-2] // factor * factor, image.shape[-1] // factor * factor
    lead = image.shape[:-2]
    image = image[..., :rows, :cols]
    if how == "max":
        blocks = image.reshape(*lead, rows // factor, factor, cols // factor, factor)
        return blocks.max(axis=(-3, -1)).astype(np.float32, copy=False)
    # A sum of strided views: several times faster than a mean over the 6D reshape, for the same numbers.
    total = sum(image[..., i::factor, j::factor].astype(np.float32) for i in range(factor) for j in range(factor))
    return np.asarray(total, dtype=np.float32) / (factor * factor)


def grow_in_plane(mask: np.ndarray, pixels: int) -> np.ndarray:
    """(..., rows, cols) bool dilated by a (2 pixels + 1)^2 square in-plane (a separable maximum filter: fast)."""
    from scipy import ndimage

    size = (1,) * (mask.ndim - 2) + (2 * pixels + 1, 2 * pixels + 1)
    return ndimage.maximum_filter(mask.astype(np.uint8), size=size) > 0


def upsample(mask: np.ndarray, shape: tuple[int, ...], factor: int) -> np.ndarray:
    """Nearest-neighbour ``mask`` back to ``shape`` (last two axes); dropped edge pixels copy their neighbour."""
    if factor == 1 and mask.shape == tuple(shape):
        return mask
    ri = np.minimum(np.arange(shape[-2]) // factor, mask.shape[-2] - 1)
    ci = np.minimum(np.arange(shape[-1]) // factor, mask.shape[-1] - 1)
    return mask[..., ri[:, None], ci[None, :]]


def grid_factor(pixel_mm: float, grid_mm: float, size: int) -> int:
    # Keep at least 32 pixels across, so tiny test images still have a grid.
    return max(1, min(int(round(grid_mm / pixel_mm)), size // 32))


def check_spacing(spacing_mm: tuple[float, ...], n: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in spacing_mm)
    if len(values) != n or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f'Argument "spacing_mm" must be {n} positive spacings in mm, got {spacing_mm}')
    return values


def touching_edge(labels: np.ndarray) -> np.ndarray:
    """Label ids (of a (slices, rows, cols) or (rows, cols) labelling) that touch the in-plane edge."""
    edge = np.concatenate([labels[..., 0, :].ravel(), labels[..., -1, :].ravel(), labels[..., :, 0].ravel(), labels[..., :, -1].ravel()])
    return np.unique(edge[edge > 0])


def lookup(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Bool array: where ``labels`` is one of ``ids`` (faster than ``np.isin`` for label images)."""
    table = np.zeros(int(labels.max()) + 1, dtype=bool)
    table[ids] = True
    return table[labels]
