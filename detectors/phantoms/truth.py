"""Ground truth shared by every phantom: where each lesion is, and how big."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Lesion:
    """One finding placed in a phantom.

    ``box`` is ``(row0, col0, row1, col1)`` in pixels, half-open, the union over
    the lesion's slices; radiographs use ``slices=(0, 0)``.
    """

    kind: str  # "bleed" | "nodule" | "fracture"
    subtype: str  # e.g. "epidural", "subdural", "solid", "ground_glass", "transverse"
    slices: tuple[int, int]  # first and last slice index, inclusive
    box: tuple[int, int, int, int]
    size_mm: float  # largest diameter (nodules: the diameter)
    volume_ml: float | None = None  # CT lesions

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class CTPhantom:
    """A CT volume with its ground truth.

    ``mask`` is the per-voxel lesion label for segmentation and heatmap
    training: (slices, rows, cols) bool, the union over ``lesions`` of the
    voxels where a lesion's fraction (before blur and noise) is >= 0.5. It is
    the set each Lesion's ``slices``, ``box`` and (bleeds) ``volume_ml`` are
    measured from, so a lesion too small to reach 0.5 anywhere keeps its
    strongest voxels and every Lesion has some. A normal phantom has an
    all-False mask; 2D and 2.5D detectors take slice ``k``'s label as ``mask[k]``.
    """

    hu: np.ndarray  # (slices, rows, cols), float32, HU
    spacing_mm: tuple[float, float, float]  # (slice, row, col)
    lesions: list[Lesion] = field(default_factory=list)
    body_part: str = ""  # "HEAD", "CHEST"
    notes: dict[str, object] = field(default_factory=dict)  # parameters drawn (noise, kernel, ...)
    mask: np.ndarray | None = None  # (slices, rows, cols) bool, lesion voxels; None only if the maker has none


@dataclass
class XRPhantom:
    """A projection radiograph with its ground truth.

    ``mask`` is the per-pixel lesion label: (rows, cols) bool, the union over
    ``lesions`` (a nodule's disc; a fracture's lines widened to about 2 mm
    and clipped to the bone). Mimics are never in it; a normal study has an
    all-False mask.
    """

    image: np.ndarray  # (rows, cols), float32 in [0, 1], bright = dense (log-attenuation-like)
    pixel_spacing_mm: float
    lesions: list[Lesion] = field(default_factory=list)
    body_part: str = ""  # "CHEST", "LEG", "FOREARM", ...
    notes: dict[str, object] = field(default_factory=dict)
    mask: np.ndarray | None = None  # (rows, cols) bool, lesion pixels; None only if the maker has none


def box_of(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """``(first, last slice), (row0, col0, row1, col1)`` of a (slices, rows, cols) mask."""
    where = np.argwhere(mask)
    if where.size == 0:
        raise ValueError('Argument "mask" must have at least one voxel set')
    lo, hi = where.min(axis=0), where.max(axis=0)
    return (int(lo[0]), int(hi[0])), (int(lo[1]), int(lo[2]), int(hi[1]) + 1, int(hi[2]) + 1)
