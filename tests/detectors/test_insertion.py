"""Lesion insertion into real anatomy: truthful volume, HU, location; seeded; acquisition variants aligned."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from detectors import realdata
from detectors.anatomy.intracranial import intracranial_mask
from detectors.anatomy.lungs import lung_fields_radiograph, lung_mask_ct
from detectors.insertion.acquisition import (
    Variant,
    add_noise,
    apply_geometry,
    apply_variant,
    draw_variant,
    gantry_tilt,
    matrix,
    resample_slices,
    storage_variants,
)
from detectors.insertion.fracture import insert_fracture_radiograph
from detectors.insertion.hemorrhage import KINDS, insert_hemorrhage
from detectors.insertion.nodule import insert_nodule_ct, insert_nodule_radiograph
from detectors.phantoms.chest_ct import chest_ct
from dicom_io.pixels import load_radiograph

XR_PIXEL_MM = 0.4  # RG1/RG3 at half resolution; their headers give no usable spacing (about 0.2 mm full size)


SLAB = slice(25, 95)  # of the real head's 108 slices: orbits to high convexity, enough for every kind, and faster


@cache
def head() -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """A slab of the real head CT (HU, spacing) and its intracranial mask (computed on the whole head)."""
    series = realdata.head_ct()
    inside = intracranial_mask(series.pixels, series.spacing_mm)
    return np.ascontiguousarray(series.pixels[SLAB]), series.spacing_mm, np.ascontiguousarray(inside[SLAB])


@cache
def bleed(kind: str, volume_ml: float = 4.0, seed: int = 11):  # noqa: ANN201 - cached Inserted
    hu, spacing, inside = head()
    return insert_hemorrhage(hu, spacing, inside, kind, volume_ml, np.random.default_rng(seed))


def _bone_mask(image: np.ndarray, px: float) -> np.ndarray:
    """Bone on the leg radiograph: the brightest 40 % of the leg.

    A stand-in until ``detectors.anatomy.bone.bone_mask_radiograph`` exists.
    On RG3 the leg fills the middle of the image; collimated strips and air
    lie at the sides, so only the middle 40 % of columns is searched.
    """
    smooth = ndimage.gaussian_filter(image, 1.0 / px)
    band = np.zeros(image.shape, bool)
    band[:, int(0.3 * image.shape[1]) : int(0.7 * image.shape[1])] = True
    leg = band & (smooth > 0.15) & (smooth < 0.95)
    bone = leg & (smooth > np.percentile(smooth[leg], 60))
    return ndimage.binary_opening(bone, iterations=2)


@pytest.mark.parametrize("kind", KINDS)
def test_bleed_truth_volume_density_and_inside(kind: str) -> None:
    hu, spacing, inside = head()
    ins = bleed(kind)
    assert ins.kind == kind and ins.hu.dtype == np.float32 and ins.hu.shape == hu.shape
    assert abs(ins.volume_ml - 4.0) <= 0.15 * 4.0
    assert 50 <= ins.density_hu <= 90
    assert ins.mask.any() and not (ins.mask & ~inside).any()
    assert not (ins.fraction[~inside] > 0).any()
    np.testing.assert_array_equal(ins.hu[ins.fraction == 0], hu[ins.fraction == 0])  # nothing else changed
    lo, hi = ins.slices
    r0, c0, r1, c1 = ins.box
    assert ins.mask[lo : hi + 1, r0:r1, c0:c1].sum() == ins.mask.sum()
    core = ins.fraction > 0.95
    assert core.sum() >= 20
    assert abs(float(ins.hu[core].mean()) - ins.density_hu) <= 5.0


@pytest.mark.parametrize("kind", ["intraparenchymal", "subdural", "epidural"])
def test_bleed_keeps_the_background_noise(kind: str) -> None:
    hu, _, _ = head()
    ins = bleed(kind)
    core = ndimage.binary_erosion(ins.fraction > 0.99)
    # The original voxels' spread includes some anatomy; the lesion keeps their noise only.
    ratio = float(ins.hu[core].std()) / float(hu[core].std())
    assert 0.5 <= ratio <= 1.2, ratio


def test_bleed_location_by_type() -> None:
    hu, _, inside = head()
    rim = inside & ~ndimage.binary_erosion(inside)
    near_rim = inside & ~ndimage.binary_erosion(inside, iterations=3)
    assert (bleed("subdural").mask & rim).any()
    assert (bleed("epidural").mask & rim).any()
    assert not (bleed("intraparenchymal").mask & near_rim).any()
    brain_hu = float(np.median(hu[inside]))  # about 22 HU on this scanner; its CSF is about -5 HU
    for kind in ("intraventricular", "subarachnoid"):
        assert float(np.median(hu[bleed(kind).mask])) < brain_hu - 10, kind
    # Extra-axial bleeds stay on one side of the midline.
    cols = np.nonzero(inside)[2].mean()
    for kind in ("subdural", "epidural"):
        where = np.nonzero(bleed(kind).mask)[2]
        assert (where > cols).all() or (where < cols).all(), kind


def test_bleed_same_seed_same_result_and_mass_effect() -> None:
    hu, spacing, inside = head()
    a = bleed("subdural")
    b = insert_hemorrhage(hu, spacing, inside, "subdural", 4.0, np.random.default_rng(11))
    c = insert_hemorrhage(hu, spacing, inside, "subarachnoid", 1.0, np.random.default_rng(6))
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.centre == b.centre and a.density_hu == b.density_hu
    assert abs(c.volume_ml - 1.0) <= 0.15 and c.centre != bleed("subarachnoid").centre

    pushed = insert_hemorrhage(hu, spacing, inside, "intraparenchymal", 10.0, np.random.default_rng(5), mass_effect=True)
    moved = (pushed.hu != hu) & (pushed.fraction == 0)
    assert moved.any() and not moved[~inside].any()


def test_bleed_impossible_placement_raises() -> None:
    hu, spacing, _ = head()
    small = np.zeros(hu.shape, bool)
    small[50:56, 120:135, 120:135] = True  # about 1.2 mL of space
    with pytest.raises(ValueError, match="intraparenchymal"):
        insert_hemorrhage(hu, spacing, small, "intraparenchymal", 20.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="volume_ml"):
        insert_hemorrhage(hu, spacing, small, "subdural", 80.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        insert_hemorrhage(hu, spacing, small, "chronic", 1.0, np.random.default_rng(0))


def test_nodule_ct_diameter_density_and_inside_lungs() -> None:
    ph = chest_ct(1, nodules=0)
    lungs = lung_mask_ct(ph.hu, ph.spacing_mm)
    for kind, diameter in (("solid", 10.0), ("part-solid", 20.0)):
        ins = insert_nodule_ct(ph.hu, ph.spacing_mm, lungs, diameter, np.random.default_rng(3), kind=kind, spiculated=False)
        assert not (ins.mask & ~lungs).any() and ins.diameter_mm == diameter
        equivalent = (6 * ins.volume_ml * 1000 / np.pi) ** (1 / 3)
        assert abs(equivalent - diameter) <= 0.1 * diameter
        extent_mm = ins.mask.any(axis=(0, 2)).sum() * ph.spacing_mm[1]
        assert abs(extent_mm - diameter) <= 2 * ph.spacing_mm[1]
        k, r, c = (int(round(v)) for v in ins.centre)
        centre = ins.hu[k, r - 1 : r + 2, c - 1 : c + 2].mean()
        assert -80 <= centre <= 80  # solid (the core of a part-solid nodule)
        if kind == "part-solid":
            halo = (ins.fraction > 0.9) & ~ndimage.binary_dilation(ins.hu > -300, iterations=1)
            assert -760 <= float(ins.hu[halo].mean()) <= -340


def test_nodule_radiograph_inside_fields_and_contrast_by_size() -> None:
    image = load_radiograph(realdata.path("RG1_UNCR.dcm")).image[::2, ::2]
    fields = lung_fields_radiograph(image, (XR_PIXEL_MM, XR_PIXEL_MM))
    small = insert_nodule_radiograph(image, XR_PIXEL_MM, fields, 10.0, np.random.default_rng(1))
    large = insert_nodule_radiograph(image, XR_PIXEL_MM, fields, 30.0, np.random.default_rng(1))
    for ins in (small, large):
        r, c = (int(v) for v in ins.centre)
        assert fields[r, c] and fields[ins.mask].mean() >= 0.9
        added = ins.image - image
        assert added.max() == pytest.approx(ins.contrast, rel=0.1)
        assert (added[~ndimage.binary_dilation(ins.mask, iterations=5)] == 0).all()
        assert added[r, c] >= added[ins.mask].mean()  # densest in the middle
    assert 0.02 <= small.contrast <= 0.06 and large.contrast >= 2.5 * small.contrast


def test_fracture_line_crosses_the_bone() -> None:
    image = load_radiograph(realdata.path("RG3_UNCR.dcm")).image[::2, ::2]
    bone = _bone_mask(image, XR_PIXEL_MM)
    for displaced in (False, True):
        ins = insert_fracture_radiograph(image, XR_PIXEL_MM, bone, np.random.default_rng(4), displaced=displaced)
        ends = [np.array([float(v) for v in str(ins.params[e]).split(",")]) for e in ("end0", "end1")]
        samples = np.linspace(ends[0], ends[1], 50)
        on_bone = bone[np.round(samples[:, 0]).astype(int), np.round(samples[:, 1]).astype(int)]
        assert on_bone[5:-5].mean() >= 0.9  # across the full width
        for end, other in ((ends[0], ends[1]), (ends[1], ends[0])):
            beyond = end + (end - other) / np.linalg.norm(end - other) * (2.0 / XR_PIXEL_MM)
            assert not bone[int(round(beyond[0])), int(round(beyond[1]))]  # and no further
        r, c = (int(round(v)) for v in ins.centre)
        assert ins.image[r, c] < image[r, c]  # lucent
        r0, c0, r1, c1 = ins.box
        assert r0 <= r < r1 and c0 <= c < c1 and ins.mask.sum() > 0
        assert (abs(float(ins.params["shift_mm"])) >= 1.0) == displaced


def test_acquisition_shapes_and_spacing() -> None:
    hu, spacing, _ = head()
    slab = hu[30:70]
    thick, thick_spacing = resample_slices(slab, spacing, 5.0)
    assert thick.shape == (12, 256, 256) and thick_spacing[0] == pytest.approx(40 * 1.5 / 12)
    thin, thin_spacing = resample_slices(slab, spacing, 0.75)
    assert thin.shape == (80, 256, 256) and thin_spacing[0] == pytest.approx(0.75)
    big, big_spacing = matrix(slab, spacing, 512)
    assert big.shape == (40, 512, 512) and big_spacing[1] == pytest.approx(spacing[1] / 2)
    assert abs(float(big[:, 256:258, 256:258].mean()) - float(slab[:, 128:129, 128:129].mean())) < 15
    tilted = gantry_tilt(slab, spacing, 18.5)
    assert tilted.hu.shape == slab.shape
    assert tilted.image_orientation[4] == pytest.approx(np.cos(np.radians(18.5)))
    # The positions step along the table only, by the slice spacing over cos(tilt).
    np.testing.assert_allclose(tilted.image_positions_mm[:, :2], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.diff(tilted.image_positions_mm[:, 2]), spacing[0] / np.cos(np.radians(18.5)))
    noisy = add_noise(np.zeros((4, 64, 64), np.float32), 8.0, np.random.default_rng(0))
    assert noisy.std() == pytest.approx(8.0, rel=0.05)
    neighbours = np.corrcoef(noisy[:, :, :-1].ravel(), noisy[:, :, 1:].ravel())[0, 1]
    assert neighbours > 0.3  # correlated, not white


def test_variant_moves_the_mask_with_the_lesion() -> None:
    full, spacing, _ = head()
    ins = bleed("intraparenchymal")
    # A slab around the lesion keeps this quick; the geometry does not care.
    around = slice(max(ins.slices[0] - 8, 0), ins.slices[1] + 9)
    hu, lesion = full[around], ins.hu[around]
    ins = replace(ins, hu=lesion, mask=ins.mask[around], centre=(ins.centre[0] - around.start, *ins.centre[1:]))
    variant = Variant(thickness_mm=5.0, tilt_deg=15.0, matrix=512, sharpness=0.5, noise_hu=3.0)
    out, out_spacing = apply_variant(ins.hu, spacing, variant, np.random.default_rng(0))
    mask, mask_spacing = apply_geometry(ins.mask, spacing, variant)
    assert out.shape == mask.shape and mask.dtype == bool and out_spacing == mask_spacing
    assert out_spacing[0] == pytest.approx(hu.shape[0] * 1.5 / round(hu.shape[0] * 1.5 / 5.0))
    # The blood (the insertion's difference, through the same geometry) sits where the mask went.
    blood, _ = apply_geometry(ins.hu - hu, spacing, variant)
    centre_mask = np.argwhere(mask).mean(axis=0)
    centre_blood = np.average(np.argwhere(blood > 20), axis=0)
    assert np.abs(centre_mask - centre_blood).max() <= 1.5
    # And it moved as the tilt says: rows shift by -(z - z_mid) tan(tilt), then double with the matrix.
    k_mid = (hu.shape[0] - 1) / 2
    expected_row = 2 * (ins.centre[1] - (ins.centre[0] - k_mid) * 1.5 * np.tan(np.radians(15.0)) / spacing[1]) + 0.5
    assert abs(centre_mask[1] - expected_row) <= 2.0


def test_drawn_variants_and_storage_are_seeded_and_plausible() -> None:
    drawn = [draw_variant(np.random.default_rng(s)) for s in range(40)]
    assert drawn[3] == draw_variant(np.random.default_rng(3))
    assert {v.matrix for v in drawn} == {256, 512}
    assert any(v.tilt_deg for v in drawn) and any(v.thickness_mm and v.thickness_mm >= 5 for v in drawn)
    assert all(-1 <= v.sharpness <= 1 and 0 <= v.noise_hu <= 10 for v in drawn)
    for s in range(20):
        st = storage_variants(np.random.default_rng(s))
        stored_max = (3071 - float(st["rescale_intercept"])) / float(st["rescale_slope"])
        stored_min = (-1024 - float(st["rescale_intercept"])) / float(st["rescale_slope"])
        top = 2 ** int(st["bits_stored"]) - 1 if st["pixel_representation"] == 0 else 2 ** (int(st["bits_stored"]) - 1) - 1
        assert stored_max <= top and (stored_min >= 0 or st["pixel_representation"] == 1)
        assert st["photometric"] in ("MONOCHROME1", "MONOCHROME2")
