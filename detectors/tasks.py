"""What each shipped detector reads and how its training examples are drawn from the phantoms.

A task is a default card (input size, pixel size, windows, network width)
plus a sampler: ``sample(seed) -> (SeriesArrays, mask)``, a phantom with its
lesion mask (all False for a normal study). Training, validation and the
published test sets use disjoint phantom seeds (see :data:`SEED_BASES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from detectors.base import Family, SeriesArrays
from detectors.phantoms.chest_ct import NODULE_TYPES, chest_ct
from detectors.phantoms.head_ct import head_ct
from detectors.phantoms.radiographs import FRACTURES, chest_radiograph, extremity_radiograph
from detectors.phantoms.truth import CTPhantom, XRPhantom
from detectors.routing import FindingKind
from detectors.spec import DetectorSpec, InputSpec, Window

# Phantom seeds: `triage samples generate --seed S` uses S * 1000 + index (S < 100000, so
# below 1e8); training draws from 1e8 + seed * 1e6 and validation from 2e8 + seed * 1e6.
SEED_BASES = {"train": 100_000_000, "validation": 200_000_000}

Sample = tuple[SeriesArrays, np.ndarray]  # the series, and its (slices, rows, cols) bool lesion mask


@dataclass(frozen=True)
class Task:
    spec: DetectorSpec  # uncalibrated defaults; training fills calibration and sha256
    sample: Callable[[int], Sample]
    train_size: tuple[int, int]  # random crops of this size during training (FCN: any size works)
    crops: int = 1  # training crops per chosen slice (radiographs: one slice, so several crops)
    min_negatives: int = 3  # lesion-free slices per phantom, at least this many and as many as lesion slices
    strongest_weight: float = 0.5  # loss weight of each item's strongest cell (item-level hard negatives)


def _uids(n: int, seed: int) -> tuple[str, ...]:
    return tuple(f"2.25.{seed}.{i + 1}" for i in range(n))


def _ct(ph: CTPhantom, seed: int) -> Sample:
    hu, spacing, mask = ph.hu, ph.spacing_mm, ph.mask
    spacing_f = cast(tuple[float, float, float], tuple(float(s) for s in spacing))  # 3 in, 3 out
    series = SeriesArrays(f"2.25.{seed}", Family.CT, hu, spacing_f, _uids(hu.shape[0], seed))
    return series, np.asarray(mask, dtype=bool)


def _xr(ph: XRPhantom, seed: int, rng: np.random.Generator) -> Sample:
    image, spacing, mask = ph.image, ph.pixel_spacing_mm, ph.mask
    # What a PACS round trip does to a radiograph: a window or VOI LUT, sometimes a gamma-like curve.
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    image = np.clip(image, 0.0, 1.0) ** gamma
    series = SeriesArrays(
        f"2.25.{seed}", Family.RADIOGRAPH, image[None].astype(np.float32), (0.0, float(spacing), float(spacing)), _uids(1, seed)
    )
    return series, np.asarray(mask, dtype=bool)[None]


def _bleed(seed: int) -> Sample:
    rng = np.random.default_rng([seed, 7])
    return _ct(head_ct(seed, bleed="random" if rng.random() < 0.5 else None), seed)


def _nodule_ct(seed: int) -> Sample:
    rng = np.random.default_rng([seed, 7])
    count = int(rng.choice([0, 0, 1, 1, 2, 3]))
    return _ct(chest_ct(seed, nodules=count, nodule_type=str(rng.choice(NODULE_TYPES)) if count else None), seed)


def _nodule_xr(seed: int) -> Sample:
    rng = np.random.default_rng([seed, 7])
    return _xr(chest_radiograph(seed, nodule=bool(rng.random() < 0.5)), seed, rng)


def _fracture(seed: int) -> Sample:
    rng = np.random.default_rng([seed, 7])
    fracture = str(rng.choice(FRACTURES)) if rng.random() < 0.5 else None
    return _xr(extremity_radiograph(seed, fracture=fracture), seed, rng)


def _spec(name: str, kind: FindingKind, family: Family, inp: InputSpec, stride: int, width: int) -> DetectorSpec:
    return DetectorSpec(
        name=name,
        version="1.0.0",
        kind=kind,
        family=family,
        input=inp,
        stride=stride,
        weights=f"{name}.pt",
        network={"arch": "heatmap-unet", "width": width},
    )


# Windows: brain 40/80 (blood against brain), subdural 75/215 (blood against
# bone at the convexity), bone 600/2800 (what is skull, so it is not blood).
_BLEED_WINDOWS = (Window(40, 80), Window(75, 215), Window(600, 2800))
# Lung -600/1500 (nodules against lung), mediastinum 40/400 (solid vs. vessel density).
_CHEST_WINDOWS = (Window(-600, 1500), Window(40, 400))

TASKS: dict[str, Task] = {
    "bleed-ct": Task(
        _spec("bleed-ct", FindingKind.BLEED, Family.CT, InputSpec(1.0, 256, 256, 1, _BLEED_WINDOWS), 2, 12), _bleed, (256, 256)
    ),
    "nodule-ct": Task(
        _spec("nodule-ct", FindingKind.NODULE, Family.CT, InputSpec(0.8, 448, 448, 1, _CHEST_WINDOWS), 2, 16), _nodule_ct, (192, 192)
    ),
    "nodule-xr": Task(
        _spec("nodule-xr", FindingKind.NODULE, Family.RADIOGRAPH, InputSpec(0.8, 512, 512), 4, 16), _nodule_xr, (256, 256), 4
    ),
    "fracture-xr": Task(
        _spec("fracture-xr", FindingKind.FRACTURE, Family.RADIOGRAPH, InputSpec(0.5, 832, 512), 4, 16), _fracture, (320, 320), 4
    ),
}

# `triage train KIND` trains every task of that finding kind.
TASKS_BY_KIND = {kind: [name for name, t in TASKS.items() if t.spec.kind is kind] for kind in FindingKind}
