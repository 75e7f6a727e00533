"""Anatomy as a hard constraint: classical masks of where each finding can be.

A network trained on phantoms sees blood-like density in the temporalis
muscle and nodule-like blobs on a collimator edge. These masks, computed from
HU thresholds and morphology (no learning, so nothing to overfit), bound where
a detector may report a region: the intracranial space for bleeds, the lung
fields for nodules, bone for fractures. A region outside its anatomy is never
reported, and the study score is taken inside the anatomy only.

Pure numpy/scipy; no torch. :func:`mask_for` is what detectors call with the
name a card gives in ``[anatomy] mask``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MASKS = ("intracranial", "lungs", "bone", "none")

MaskFunction = Callable[[np.ndarray, tuple[float, float, float]], np.ndarray]


def mask_for(name: str, pixels: np.ndarray, spacing_mm: tuple[float, float, float], family: str) -> np.ndarray | None:
    """The (slices, rows, cols) bool mask ``name`` of a series; ``None`` for "none".

    ``family`` is "CT" (``pixels`` in HU) or "radiograph" (one slice, bright
    = dense, ``spacing_mm`` (0, row, col)).
    """
    if name == "none":
        return None
    if name == "intracranial" and family == "CT":
        from detectors.anatomy.intracranial import intracranial_mask

        return intracranial_mask(pixels, spacing_mm)
    if name == "lungs":
        from detectors.anatomy import lungs

        if family == "CT":
            return lungs.lung_mask_ct(pixels, spacing_mm)
        return lungs.lung_fields_radiograph(pixels[0], spacing_mm[1:])[None]
    if name == "bone":
        from detectors.anatomy import bone

        if family == "CT":
            return bone.bone_mask_ct(pixels, spacing_mm)
        return bone.bone_mask_radiograph(pixels[0], spacing_mm[1:])[None]
    raise ValueError(f'Argument "name" must be one of {", ".join(MASKS)} for {family}, got {name!r}')
