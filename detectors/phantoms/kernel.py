"""The reconstruction kernel shared by the CT phantoms."""

from __future__ import annotations

import math

import numpy as np


def blur_inplane(vol: np.ndarray, sigma_px: float) -> np.ndarray:  # vol: (slices, rows, cols)
    """Separable Gaussian blur along rows and columns; edges replicated."""
    radius = max(1, math.ceil(2.5 * sigma_px))
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2).astype(np.float32)
    w /= w.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(vol, pad, mode="edge")
        size = vol.shape[axis]
        out = np.zeros_like(vol)
        for i, wi in enumerate(w):
            out += wi * padded.take(np.arange(i, i + size), axis=axis)
        vol = out
    return vol
