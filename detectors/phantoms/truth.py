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
    hu: np.ndarray  # (slices, rows, cols), float32, HU
    spacing_mm: tuple[float, float, float]  # (slice, row, col)
    lesions: list[Lesion] = field(default_factory=list)
    body_part: str = ""  # "HEAD", "CHEST"
    notes: dict[str, object] = field(default_factory=dict)  # parameters drawn (noise, kernel, ...)


@dataclass
class XRPhantom:
    image: np.ndarray  # (rows, cols), float32 in [0, 1], bright = dense (log-attenuation-like)
    pixel_spacing_mm: float
    lesions: list[Lesion] = field(default_factory=list)
    body_part: str = ""  # "CHEST", "LEG", "FOREARM", ...
    notes: dict[str, object] = field(default_factory=dict)


def box_of(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """``(first, last slice), (row0, col0, row1, col1)`` of a (slices, rows, cols) mask."""
    where = np.argwhere(mask)
    if where.size == 0:
        raise ValueError("Argument \"mask\" must have at least one voxel set")
    lo, hi = where.min(axis=0), where.max(axis=0)
    return (int(lo[0]), int(hi[0])), (int(lo[1]), int(lo[2]), int(hi[1]) + 1, int(hi[2]) + 1)
