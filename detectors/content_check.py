"""A cheap look at the pixels when the tags do not say what body part a CT is.

Used by routing as its ``content_check``: the middle slices of an axial CT
tell a head (a closed bony ring around brain-density tissue) from a chest
(large air-density lungs inside the body). Anything else is ``None``, and the
series is reported "not analysed" rather than guessed.
"""

from __future__ import annotations

import numpy as np


def ct_region(hu: np.ndarray) -> str | None:  # hu: (slices, rows, cols), HU
    """``"HEAD"``, ``"CHEST"`` or ``None`` from the middle third of the volume."""
    n = hu.shape[0]
    middle = hu[n // 3 : max(n // 3 + 1, 2 * n // 3)]
    votes = [_slice_region(s) for s in middle]
    for region in ("HEAD", "CHEST"):
        if votes.count(region) > len(votes) / 2:
            return region
    return None


def _slice_region(hu: np.ndarray) -> str | None:  # hu: (rows, cols), HU
    body = hu > -300
    if body.sum() < 0.05 * hu.size:
        return None
    rows, cols = np.nonzero(body)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = hu[r0:r1, c0:c1]
    inner = box[(r1 - r0) // 4 : 3 * (r1 - r0) // 4, (c1 - c0) // 4 : 3 * (c1 - c0) // 4]
    bone_fraction = float((box > 700).mean())
    brain_fraction = float(((inner > 15) & (inner < 60)).mean())
    lung_fraction = float(((inner > -1000) & (inner < -600)).mean())
    # A skull: a thin dense ring (a few % of the box) around mostly brain-density tissue.
    if 0.02 < bone_fraction < 0.35 and brain_fraction > 0.6 and _ring_closed(box > 700):
        return "HEAD"
    if lung_fraction > 0.3:
        return "CHEST"
    return None


def _ring_closed(bone: np.ndarray) -> bool:
    """Bone on every side of the centre: along the rays up, down, left and right."""
    cr, cc = bone.shape[0] // 2, bone.shape[1] // 2
    return bool(bone[:cr, cc].any() and bone[cr:, cc].any() and bone[cr, :cc].any() and bone[cr, cc:].any())
