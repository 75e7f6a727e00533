"""The chest CT phantom: determinism, HU plausibility, nodule truth, DICOM round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from detectors.phantoms.chest_ct import NODULE_TYPES, chest_ct
from detectors.phantoms.truth import box_of
from dicom_io.writer import StudyMeta, ct_datasets, write_datasets

SMALL = {"matrix": 256, "slices": 40, "slice_thickness_mm": 1.0}


def lung_fraction(hu: np.ndarray, window: int = 21) -> np.ndarray:
    """Per voxel, the fraction of a window x window in-plane neighbourhood below -500 HU."""
    air = np.pad((hu < -500).astype(np.float64), ((0, 0), (window // 2 + 1, window // 2), (window // 2 + 1, window // 2)))
    s = air.cumsum(1).cumsum(2)
    total = s[:, window:, window:] - s[:, :-window, window:] - s[:, window:, :-window] + s[:, :-window, :-window]
    return total / window**2


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """Voxels deep in air-like regions that are not connected to the air around the patient."""
    air = hu < -500
    outside = np.zeros_like(air)
    outside[:, [0, -1], :] = air[:, [0, -1], :]
    outside[:, :, [0, -1]] = air[:, :, [0, -1]]
    while True:  # flood fill from the image border, in-plane
        grown = outside.copy()
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown[:, :, 1:] |= outside[:, :, :-1]
        grown[:, :, :-1] |= outside[:, :, 1:]
        grown &= air
        if np.array_equal(grown, outside):
            break
        outside = grown
    return ~outside & (lung_fraction(hu) > 0.8)


def test_same_seed_identical_different_seed_differs() -> None:
    a, b, c = chest_ct(7, slices=12), chest_ct(7, slices=12), chest_ct(8, slices=12)
    assert np.array_equal(a.hu, b.hu) and a.lesions == b.lesions and a.notes == b.notes
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_plausible_hu(seed: int) -> None:
    p = chest_ct(seed, nodules=0)
    assert p.hu.dtype == np.float32 and p.hu.ndim == 3 and p.body_part == "CHEST"
    assert p.hu.min() >= -1024 and p.hu.max() <= 3071
    lung = lung_mask(p.hu) & (p.hu < -500)
    assert lung.sum() > 1000
    assert -900 <= float(np.median(p.hu[lung])) <= -780
    assert (p.hu > 300).sum() > 200 and p.hu.max() > 700  # ribs and spine
    assert 8 <= p.notes["noise_hu"] <= 25


def test_drawn_geometry_in_range() -> None:
    for seed in range(8):
        p = chest_ct(seed, nodules=0)
        n, rows, cols = p.hu.shape
        dz, ps, _ = p.spacing_mm
        assert rows == cols and rows in (256, 512)
        assert n <= 48 * 256 // rows
        assert (0.6 <= ps <= 0.8) if rows == 512 else (1.2 <= ps <= 1.6)
        assert 0.6 <= dz <= 5.0


def test_matrix_and_thickness_respected() -> None:
    p = chest_ct(3, matrix=512, slice_thickness_mm=2.5, slices=6, nodules=0)
    assert p.hu.shape == (6, 512, 512)
    assert p.spacing_mm[0] == 2.5 and 0.6 <= p.spacing_mm[1] <= 0.8
    q = chest_ct(3, matrix=256, slice_thickness_mm=0.625, slices=10, nodules=0)
    assert q.hu.shape == (10, 256, 256) and q.spacing_mm[0] == 0.625 and 1.2 <= q.spacing_mm[1] <= 1.6


def test_vessel_mimics_in_lung_without_lesions() -> None:
    p = chest_ct(11, nodules=0, **SMALL)
    assert p.lesions == []
    assert p.mask is not None and p.mask.shape == p.hu.shape and p.mask.dtype == bool and not p.mask.any()
    mimics = lung_mask(p.hu) & (p.hu > -200)  # dense dots and tubes surrounded by lung
    assert mimics.sum() > 50
    with_nodules = chest_ct(11, nodules=3, **SMALL)
    outside = mimics.copy()
    for lesion in with_nodules.lesions:
        r0, c0, r1, c1 = lesion.box
        outside[lesion.slices[0] : lesion.slices[1] + 1, r0:r1, c0:c1] = False
    assert outside.sum() > 50  # the mimics are not the lesions
    # The mask is the union of the nodules: every voxel in some box, every box holding some.
    assert with_nodules.mask is not None
    in_boxes = np.zeros(p.hu.shape, dtype=bool)
    for lesion in with_nodules.lesions:
        r0, c0, r1, c1 = lesion.box
        box = (slice(lesion.slices[0], lesion.slices[1] + 1), slice(r0, r1), slice(c0, c1))
        assert with_nodules.mask[box].any()
        in_boxes[box] = True
    assert with_nodules.mask.any() and not (with_nodules.mask & ~in_boxes).any()


def _single(seed: int, kind: str, placement: str = "intraparenchymal", diameter: float = 14.0):
    p = chest_ct(seed, nodules=1, nodule_type=kind, nodule_diameter_mm=diameter, nodule_placement=placement, **SMALL)
    clean = chest_ct(seed, nodules=0, **SMALL)
    assert len(p.lesions) == 1
    return p, clean, p.lesions[0]


@pytest.mark.parametrize("kind", NODULE_TYPES)
def test_nodule_type_changes_its_box_only_with_typed_hu(kind: str) -> None:
    p, clean, lesion = _single(21, kind)
    assert lesion.kind == "nodule" and lesion.subtype == kind and p.notes["nodules"][0]["type"] == kind
    (s0, s1), (r0, c0, r1, c1) = lesion.slices, lesion.box
    diff = np.abs(p.hu - clean.hu)
    inbox = (slice(s0, s1 + 1), slice(r0, r1), slice(c0, c1))
    assert (diff[inbox] > 50).any()
    # Outside a margin (partial volume plus kernel blur) the two phantoms are identical.
    outside = np.ones(p.hu.shape, dtype=bool)
    outside[max(s0 - 1, 0) : s1 + 2, max(r0 - 6, 0) : r1 + 6, max(c0 - 6, 0) : c1 + 6] = False
    assert np.all(diff[outside] == 0)
    core = diff > 0.6 * diff.max()
    values = p.hu[core]
    if kind == "solid":
        assert np.median(values) > -100
    elif kind == "ground_glass":
        assert -750 <= np.median(values) <= -250
    else:
        assert ((p.hu > -150) & (clean.hu < -500)).sum() >= 3  # a solid core (blurred) where there was lung
        halo = (diff > 200) & (p.hu < -250) & (p.hu > -750)
        assert halo.sum() > 10
    assert lesion.volume_ml is not None and lesion.volume_ml > 0


@pytest.mark.parametrize("kind", NODULE_TYPES)
def test_nodule_mask_is_the_whole_nodule(kind: str) -> None:
    p, clean, lesion = _single(21, kind)
    assert p.mask is not None and p.mask.shape == p.hu.shape and p.mask.dtype == bool
    assert box_of(p.mask) == (lesion.slices, lesion.box)
    dz, ps, _ = p.spacing_mm
    assert lesion.volume_ml is not None  # the sum of fractions; the mask counts voxels >= half
    assert 0.85 <= float(p.mask.sum()) * dz * ps * ps / 1000 / lesion.volume_ml <= 1.15
    diff = np.abs(p.hu - clean.hu)
    core = (p.hu > -150) & (clean.hu < -500)  # solid tissue where there was lung
    halo = (diff > 200) & (p.hu < -250) & (p.hu > -750)  # ground glass, a part-solid's halo included
    assert p.mask[core].all()
    if kind != "solid":  # a solid nodule's blurred edge passes through ground-glass values too
        assert p.mask[halo].mean() >= 0.8
    # Beyond the mask, widened by partial volume (a slice, a pixel) and the kernel, nothing changed.
    near = ndimage.maximum_filter(p.mask, size=(3, 13, 13))
    np.testing.assert_array_equal(p.hu[~near], clean.hu[~near])


@pytest.mark.parametrize("placement", ["intraparenchymal", "juxta_pleural", "juxta_vascular"])
def test_nodules_lie_in_lung(placement: str) -> None:
    p, clean, lesion = _single(5, "solid", placement, diameter=10.0)
    assert p.notes["nodules"][0]["placement"] == placement
    (s0, s1), (r0, c0, r1, c1) = lesion.slices, lesion.box
    assert p.mask is not None and box_of(p.mask) == (lesion.slices, lesion.box)  # clipped at the pleura too
    nodule = np.abs(p.hu - clean.hu) > 300
    assert nodule.any()
    # Before the nodule was added, its voxels were mostly lung.
    assert np.median(clean.hu[nodule]) < -500
    if placement == "juxta_pleural":  # tissue that is not lung (the wall) touches the box
        box = (slice(s0, s1 + 1), slice(max(r0 - 2, 0), r1 + 2), slice(max(c0 - 2, 0), c1 + 2))
        frac = lung_fraction(clean.hu)[box]
        assert ((clean.hu[box] > -200) & (frac < 0.6)).any()


@pytest.mark.parametrize("diameter", [6.0, 12.0, 20.0])
def test_requested_diameter_matches_size_and_mask(diameter: float) -> None:
    p, clean, lesion = _single(9, "solid", diameter=diameter)
    assert lesion.size_mm == pytest.approx(diameter)
    ps = p.spacing_mm[1]
    diff = p.hu - clean.hu
    pts = np.argwhere(diff > 0.5 * diff.max())[:, 1:] * ps  # (k, 2) in-plane pixel centres, mm
    angles = np.linspace(0, np.pi, 90, endpoint=False)
    proj = pts @ np.stack([np.cos(angles), np.sin(angles)])
    feret = float((proj.max(0) - proj.min(0)).max()) + ps  # pixel centres to pixel edges
    assert abs(feret - diameter) <= 1.5 * ps
    (r0, c0, r1, c1) = lesion.box
    extent = max(r1 - r0, c1 - c0) * ps  # axis-aligned, so a rotated ellipse may look smaller
    assert 0.8 * diameter - 1.5 * ps <= extent <= diameter + 1.5 * ps


def test_dicom_round_trip(tmp_path: Path) -> None:
    p = chest_ct(13, matrix=256, slices=6, slice_thickness_mm=5.0, nodules=1)
    dz, ps, _ = p.spacing_mm
    meta = StudyMeta(study_description="CT CHEST WO CONTRAST", body_part="CHEST")
    paths = write_datasets(ct_datasets(p.hu, pixel_spacing_mm=(ps, ps), slice_thickness_mm=dz, meta=meta), tmp_path)
    assert len(paths) == 6
    back = []
    for path in sorted(paths):
        ds = pydicom.dcmread(path)
        assert ds.BodyPartExamined == "CHEST" and float(ds.SliceThickness) == pytest.approx(dz)
        back.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert np.abs(np.stack(back) - np.clip(p.hu, -1024, 3071)).max() <= 1.0
