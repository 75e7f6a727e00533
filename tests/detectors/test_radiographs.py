"""Radiograph phantoms: determinism, ground truth where the image changed, DICOM round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from detectors.phantoms.radiographs import FRACTURES, chest_radiograph, extremity_radiograph
from detectors.phantoms.truth import XRPhantom, box_of


def _dilated(shape: tuple[int, int], box: tuple[int, int, int, int], pad: int) -> np.ndarray:
    r0, c0, r1, c1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[max(r0 - pad, 0) : r1 + pad, max(c0 - pad, 0) : c1 + pad] = True
    return mask


def _in_unit_range(p: XRPhantom) -> None:
    assert p.image.dtype == np.float32 and p.image.ndim == 2
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0
    assert np.isfinite(p.image).all()
    assert p.mask is not None and p.mask.shape == p.image.shape and p.mask.dtype == bool


@pytest.mark.parametrize("make", [lambda s: chest_radiograph(s, nodule=True), lambda s: extremity_radiograph(s, fracture="oblique")])
def test_same_seed_same_phantom_and_other_seed_differs(make) -> None:
    a, b, c = make(3), make(3), make(4)
    assert np.array_equal(a.image, b.image) and a.lesions == b.lesions and a.notes == b.notes
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(4))
def test_chest_values_spacing_and_body_part(seed: int) -> None:
    p = chest_radiograph(seed)
    _in_unit_range(p)
    assert 0.36 <= p.pixel_spacing_mm <= 0.44 and p.body_part == "CHEST"
    assert 768 <= p.image.shape[0] <= 1024
    # Lungs are dark against the mediastinum and the abdomen below the diaphragm.
    rows, cols = p.image.shape
    lungs = np.median(p.image[rows * 3 // 10 : rows // 2, cols // 6 : cols // 3])
    assert lungs < np.median(p.image[rows * 9 // 10 :, cols // 3 : cols * 2 // 3]) - 0.1


@pytest.mark.parametrize("seed", range(6))
def test_nodule_changes_image_only_near_its_box(seed: int) -> None:
    with_nodule, without = chest_radiograph(seed, nodule=True), chest_radiograph(seed, nodule=False)
    assert without.lesions == []
    _in_unit_range(with_nodule)
    _in_unit_range(without)
    assert without.mask is not None and not without.mask.any()
    (lesion,) = with_nodule.lesions
    assert (lesion.kind, lesion.subtype, lesion.slices) == ("nodule", "solid", (0, 0))
    assert 5.0 <= lesion.size_mm <= 30.0
    diff = np.abs(with_nodule.image - without.image)
    assert diff.max() > 0.01
    near = _dilated(diff.shape, lesion.box, pad=max(4, (lesion.box[2] - lesion.box[0]) // 3))
    assert diff[near].sum() >= 0.99 * diff.sum()
    assert diff[_dilated(diff.shape, lesion.box, pad=0)].sum() >= 0.8 * diff.sum()
    # The mask is the nodule's disc; its soft edge reaches about 0.4 radius further.
    assert with_nodule.mask is not None and box_of(with_nodule.mask[None])[1] == lesion.box
    radius = lesion.size_mm / with_nodule.pixel_spacing_mm / 2
    assert with_nodule.mask.sum() == pytest.approx(np.pi * radius**2, rel=0.05)
    near = ndimage.maximum_filter(with_nodule.mask, size=2 * (int(0.4 * radius) + 3) + 1)
    assert not diff[~near].any()


@pytest.mark.parametrize("diameter_mm", [5.0, 12.0, 30.0])
def test_nodule_box_matches_its_diameter(diameter_mm: float) -> None:
    p = chest_radiograph(11, nodule=True, diameter_mm=diameter_mm)
    (lesion,) = p.lesions
    r0, c0, r1, c1 = lesion.box
    expected = diameter_mm / p.pixel_spacing_mm
    assert lesion.size_mm == pytest.approx(diameter_mm)
    for extent in (r1 - r0, c1 - c0):
        assert extent == pytest.approx(expected, rel=0.2)


def test_drawn_nodules_are_low_contrast_and_in_range() -> None:
    for seed in range(8):
        p = chest_radiograph(seed, nodule=True)
        assert 5.0 <= p.lesions[0].size_mm <= 30.0
        assert 0.0 < float(p.notes["nodule_contrast"]) < 0.07


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", FRACTURES)
def test_fracture_changes_bone_inside_its_box(seed: int, kind: str) -> None:
    broken = extremity_radiograph(seed, fracture=kind)
    normal = extremity_radiograph(seed, fracture=None)
    _in_unit_range(broken)
    assert 0.25 <= broken.pixel_spacing_mm <= 0.4
    (lesion,) = broken.lesions
    assert (lesion.kind, lesion.subtype, lesion.slices) == ("fracture", kind, (0, 0))
    assert lesion.size_mm > 3.0
    r0, c0, r1, c1 = lesion.box
    assert 0 <= r0 < r1 <= broken.image.shape[0] and 0 <= c0 < c1 <= broken.image.shape[1]
    inside = np.abs(broken.image - normal.image)[r0:r1, c0:c1]
    assert inside.max() > 0.1  # a lucent line, darker than the intact bone
    assert (broken.image[r0:r1, c0:c1] - normal.image[r0:r1, c0:c1]).min() < -0.1
    assert broken.notes["mimics"] == normal.notes["mimics"]
    # The mask: the lines, about 2 mm wide, inside the box; none for the normal study's mimics.
    assert broken.mask is not None and normal.mask is not None and not normal.mask.any()
    m0, n0, m1, n1 = box_of(broken.mask[None])[1]
    assert r0 <= m0 and c0 <= n0 and m1 <= r1 and n1 <= c1
    if kind != "comminuted":  # one line: its area over its length is its width
        assert 1.6 <= broken.mask.sum() * broken.pixel_spacing_mm**2 / lesion.size_mm <= 2.4


def test_undisplaced_fracture_changes_nothing_far_from_its_box() -> None:
    broken = extremity_radiograph(5, fracture="transverse", displaced=False)
    normal = extremity_radiograph(5, fracture=None, displaced=False)
    diff = np.abs(broken.image - normal.image)
    near = _dilated(diff.shape, broken.lesions[0].box, pad=8)
    assert diff[near].sum() >= 0.99 * diff.sum()
    # The crack's tail (its Gaussian profile) is below float precision ~8 px from the lines.
    assert broken.mask is not None
    assert not diff[~ndimage.maximum_filter(broken.mask, size=2 * 10 + 1)].any()


@pytest.mark.parametrize("seed", range(8))
def test_normal_study_has_no_lesions_but_notes_its_mimics(seed: int) -> None:
    p = extremity_radiograph(seed)
    _in_unit_range(p)
    assert p.lesions == []
    assert p.mask is not None and not p.mask.any()  # mimics are never labelled
    assert p.notes["bone"] in ("tibia_fibula", "radius_ulna", "femur")
    assert p.body_part == {"tibia_fibula": "LEG", "radius_ulna": "FOREARM", "femur": "FEMUR"}[p.notes["bone"]]
    mimics = p.notes["mimics"]
    assert mimics, "every study notes at least one mimic"
    kinds = {"nutrient_canal", "growth_plate", "overlapping_bones", "benign_lesion"}
    for m in mimics:
        assert m["kind"] in kinds and len(m["box"]) == 4


def test_mimics_cover_every_kind_over_seeds() -> None:
    seen = {m["kind"] for s in range(30) for m in extremity_radiograph(s, rows=512).notes["mimics"]}
    assert seen == {"nutrient_canal", "growth_plate", "overlapping_bones", "benign_lesion"}


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match='"bone"'):
        extremity_radiograph(0, bone="skull")
    with pytest.raises(ValueError, match='"fracture"'):
        extremity_radiograph(0, fracture="greenstick")
