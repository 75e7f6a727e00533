"""Training and validation cases on real anatomy: real scans, inserted lesions, simulated acquisitions.

Each case is a series the detector reads plus the truth: a bool lesion mask
(all False for a normal case) and tags saying what was drawn. Cases are
seeded: ``(split, index)`` gives the same case everywhere, and the training
and validation splits use disjoint draws of lesion, place and acquisition.

What exists, by detector (see :data:`detectors.realdata.CASES`):

- ``bleed-ct``: the real head CT, normal or with one inserted haemorrhage
  (five kinds, 0.3-50 mL, log-uniform), each acquired by a drawn variant
  (slice thickness 0.6-7 mm, gantry tilt, 256/512 matrix, kernel, noise),
  mirrored left-right half of the time.
- ``nodule-xr``: the real chest radiograph, with or without an inserted nodule
  (5-30 mm) inside its lung fields. It is not normal: its own masses, marked
  by eye, are ``Case.own_findings`` (every case is positive; candidates on them
  are neither lesions nor negatives).
- ``fracture-xr``: the real lower-leg radiograph, normal or with an inserted
  cortical break, displaced or not.

There is one real scan per family: a filter trained here has seen one
anatomy under many acquisitions, not many anatomies, and the model cards say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, cast

import numpy as np

from detectors import realdata
from detectors.base import Family, SeriesArrays

SPLITS = {"train": 1, "validation": 2, "test": 3}
SLAB_MM = 48.0  # real head CT cases are slabs this thick of the whole head


@dataclass
class Case:
    """One series and its truth."""

    series: SeriesArrays
    lesion: np.ndarray  # (slices, rows, cols) bool: the inserted lesion, exact
    source: str  # "real" | "phantom"
    tags: dict[str, Any] = field(default_factory=dict)
    # The real scan's own findings, marked by eye (realdata.RealCase.regions), widened by a margin:
    # a candidate there is neither the lesion nor a negative. None: the scan is normal.
    own_findings: np.ndarray | None = None

    @property
    def positive(self) -> bool:
        """The study shows the finding: an inserted lesion, or the real scan's own."""
        return bool(self.lesion.any()) or self.own_findings is not None


def _uids(n: int, seed: tuple[int, ...]) -> tuple[str, ...]:
    base = "2.25." + "".join(f"{s}" for s in seed)[:30]
    return tuple(f"{base}.{i + 1}" for i in range(n))


@lru_cache(maxsize=1)
def _head() -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    from detectors.anatomy.intracranial import intracranial_mask

    head = realdata.head_ct()
    return head.pixels, head.spacing_mm, intracranial_mask(head.pixels, head.spacing_mm)


def bleed_case(
    split: str, index: int, positive_fraction: float = 0.5, slab_mm: float | None = SLAB_MM, positive: bool | None = None
) -> Case:
    """A real head CT case: normal or with one inserted haemorrhage, under a drawn acquisition.

    ``slab_mm`` None keeps the whole head (test sets); ``positive`` forces the draw.
    """
    from detectors.insertion.acquisition import apply_geometry, apply_variant, draw_variant
    from detectors.insertion.hemorrhage import KINDS, insert_hemorrhage

    hu, spacing, inside = _head()
    rng = np.random.default_rng([SPLITS[split], 12, index])
    if rng.random() < 0.5:
        hu, inside = hu[:, :, ::-1], inside[:, :, ::-1]
    # A slab of the head keeps a case to seconds on a CPU (a thin-slice 512 variant of the whole
    # head is 70 M voxels); candidates are local, so a slab teaches the filter what the head does.
    brain = np.flatnonzero(inside.sum(axis=(1, 2)) > 0.02 * inside[0].size)
    slab = hu.shape[0] if slab_mm is None else max(1, int(round(slab_mm / spacing[0])))
    z0 = 0 if slab_mm is None else int(rng.integers(max(brain[0] - slab // 3, 0), max(brain[-1] - 2 * slab // 3, brain[0] + 1)))
    hu, inside = hu[z0 : z0 + slab], inside[z0 : z0 + slab]
    tags: dict[str, Any] = {"case": "invesalius-cranium", "slices": [z0, z0 + hu.shape[0]]}
    lesion = np.zeros(hu.shape, dtype=bool)
    draw = rng.random()
    if positive if positive is not None else draw < positive_fraction:
        kind = str(rng.choice(KINDS))
        volume = float(np.exp(rng.uniform(np.log(0.3), np.log(50.0))))
        for _ in range(6):  # a slab may not hold the drawn volume of that kind: smaller, then another kind
            try:
                inserted = insert_hemorrhage(
                    np.ascontiguousarray(hu),
                    spacing,
                    np.ascontiguousarray(inside),
                    kind,
                    volume,
                    rng,
                    mass_effect=volume > 15 and rng.random() < 0.5,
                )
                break
            except ValueError:
                volume, kind = max(0.3, volume / 2), str(rng.choice(KINDS))
        else:
            raise ValueError(f"no haemorrhage fits real case {split} {index}")
        hu, lesion = inserted.hu, inserted.mask
        tags |= {"kind": kind, "volume_ml": round(inserted.volume_ml, 2), "density_hu": round(inserted.density_hu, 1)}
    variant = draw_variant(rng)
    if variant.matrix == 512 and rng.random() < 0.5:
        variant = replace(variant, matrix=256)  # half the 512 matrices: the network reads 1 mm pixels anyway
    out, out_spacing = apply_variant(np.ascontiguousarray(hu), spacing, variant, rng)
    if lesion.any():
        lesion, _ = apply_geometry(lesion, spacing, variant)
    tags["variant"] = {k: v for k, v in variant.__dict__.items()}
    seed = (SPLITS[split], 12, index)
    spacing_f = cast(tuple[float, float, float], tuple(float(s) for s in out_spacing))  # 3 in, 3 out
    series = SeriesArrays(f"2.25.{SPLITS[split]}12{index}", Family.CT, out.astype(np.float32), spacing_f, _uids(out.shape[0], seed))
    return Case(series, np.asarray(lesion, dtype=bool), "real", tags)


def _radiograph(name: str) -> tuple[np.ndarray, tuple[float, float]]:
    from dicom_io.pixels import load_radiograph

    r = load_radiograph(realdata.path(name))
    return np.asarray(r.image, dtype=np.float32), cast(tuple[float, float], tuple(r.pixel_spacing_mm or (0.2, 0.2)))


def _radiograph_case(
    name: str,
    stream: int,
    split: str,
    index: int,
    positive_fraction: float,
    insert: Callable[[np.ndarray, tuple[float, float], np.random.Generator, np.ndarray | None], tuple[Any, dict[str, Any]]],
) -> Case:
    """A real radiograph, mirrored half the time, with ``insert``'s lesion or none, under a drawn display curve.

    ``insert`` gets the image's own findings (mirrored with it, widened) so as not to insert onto them.
    """
    image, spacing = _radiograph(name)
    own = own_findings(name, image.shape)
    rng = np.random.default_rng([SPLITS[split], stream, index])
    mirrored = bool(rng.random() < 0.5)
    if mirrored:
        image = image[:, ::-1].copy()
        own = None if own is None else own[:, ::-1].copy()
    lesion = np.zeros(image.shape, dtype=bool)
    tags: dict[str, Any] = {"case": name.removesuffix(".dcm"), "mirrored": mirrored}
    if rng.random() < positive_fraction:
        inserted, drawn = insert(image, spacing, rng, own)
        image, lesion = inserted.image, inserted.mask
        tags |= drawn
    # What a PACS round trip does to a radiograph: a window or VOI LUT, a gamma-like curve.
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    image = np.clip(image, 0.0, 1.0) ** gamma
    series = SeriesArrays(
        f"2.25.{SPLITS[split]}{stream}{index}",
        Family.RADIOGRAPH,
        image[None].astype(np.float32),
        (0.0, spacing[0], spacing[1]),
        _uids(1, (SPLITS[split], stream, index)),
    )
    return Case(series, lesion[None], "real", tags, None if own is None else own[None])


OWN_FINDING_MARGIN = 1.3  # marks by eye are approximate: a candidate this far out is still "theirs"


def own_findings(name: str, shape: tuple[int, int], margin: float = OWN_FINDING_MARGIN) -> np.ndarray | None:
    """(rows, cols) bool: the real radiograph's own findings marked by eye, each disc widened by ``margin``."""
    marks = realdata.case(name).regions
    if not marks:
        return None
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    out = np.zeros(shape, dtype=bool)
    for r, c, radius in marks:
        out |= (rows - r) ** 2 + (cols - c) ** 2 <= (margin * radius) ** 2
    return out


def nodule_xr_case(split: str, index: int, positive_fraction: float = 0.6) -> Case:
    """The real chest radiograph (its own masses marked by eye), with or without an inserted nodule in its lung fields.

    Inserted nodules are not placed on the marked masses, so the inserted one is always a new finding.
    """
    from detectors.anatomy.lungs import lung_fields_radiograph
    from detectors.insertion.nodule import insert_nodule_radiograph

    def insert(
        image: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator, own: np.ndarray | None
    ) -> tuple[Any, dict[str, Any]]:
        diameter = float(rng.uniform(5.0, 30.0))
        fields = lung_fields_radiograph(image, spacing)
        if own is not None:
            fields = fields & ~own
        inserted = insert_nodule_radiograph(image, spacing, fields, diameter, rng)
        return inserted, {"diameter_mm": round(diameter, 1)}

    return _radiograph_case("RG1_UNCR.dcm", 13, split, index, positive_fraction, insert)


def fracture_xr_case(split: str, index: int, positive_fraction: float = 0.6) -> Case:
    """The real lower-leg radiograph, normal or with an inserted cortical break."""
    from detectors.anatomy.bone import bone_mask_radiograph
    from detectors.insertion.fracture import insert_fracture_radiograph

    def insert(
        image: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator, own: np.ndarray | None
    ) -> tuple[Any, dict[str, Any]]:
        displaced = bool(rng.random() < 0.5)
        inserted = insert_fracture_radiograph(image, spacing, bone_mask_radiograph(image, spacing), rng, displaced=displaced)
        return inserted, {"displaced": displaced}

    return _radiograph_case("RG3_UNCR.dcm", 14, split, index, positive_fraction, insert)


REAL_CASES = {"bleed-ct": bleed_case, "nodule-xr": nodule_xr_case, "fracture-xr": fracture_xr_case}


def phantom_case(name: str, split: str, index: int) -> Case:
    """The detector's own phantom task, drawn from the training or validation seeds."""
    from detectors.tasks import SEED_BASES, TASKS

    base = SEED_BASES.get(split, SEED_BASES["validation"] + 50_000_000)
    series, mask = TASKS[name].sample(base + index)
    return Case(series, np.asarray(mask, dtype=bool), "phantom", {"seed": base + index})


def cases(name: str, split: str, real: int, phantoms: int) -> Iterator[Case]:
    """``real`` real-anatomy cases (where the detector has a real scan) and ``phantoms`` phantom cases."""
    make = REAL_CASES.get(name)
    if make is not None:
        for i in range(real):
            yield make(split, i)
    for i in range(phantoms):
        yield phantom_case(name, split, i)
