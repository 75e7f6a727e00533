"""The head CT phantom: deterministic, plausible HU, bleeds with truthful ground truth."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from detectors.phantoms.head_ct import SUBTYPES, head_ct
from detectors.phantoms.truth import CTPhantom, box_of
from dicom_io.writer import ct_datasets, write_datasets

SMALL: dict[str, Any] = {"slices": 24, "matrix": 256}


def test_same_seed_same_arrays_different_seed_different() -> None:
    a, b, c = head_ct(7, **SMALL), head_ct(7, **SMALL), head_ct(8, **SMALL)
    assert a.hu.dtype == np.float32
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.notes == b.notes
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_are_physically_plausible(seed: int) -> None:
    ph = head_ct(seed, slices=32, matrix=256)
    assert ph.body_part == "HEAD"
    mid = ph.hu[len(ph.hu) // 2]  # (rows, cols), HU
    r, c = (round(x) for x in cast(list[float], ph.notes["center_rc_px"]))
    off = int(25 / ph.spacing_mm[1])  # 25 mm lateral: parenchyma, clear of the midline and ventricles
    patch = mid[r - 4 : r + 5, c + off - 4 : c + off + 5]
    assert 20 <= float(np.median(patch)) <= 50
    soft = mid[(mid > -100) & (mid < 100)]
    assert 20 <= float(np.median(soft)) <= 50
    assert (ph.hu > 700).any()  # skull
    assert float(np.median(ph.hu[:, :8, :8])) < -900  # air in the corner
    assert ph.hu.min() >= -1024 and ph.hu.max() <= 3071


def test_no_bleed_has_no_lesions_but_has_calcification_mimics() -> None:
    ph = head_ct(3, **SMALL)
    assert ph.lesions == [] and ph.notes["bleed"] is None
    assert ph.mask is not None and ph.mask.shape == ph.hu.shape and ph.mask.dtype == bool and not ph.mask.any()
    dz, px, _ = ph.spacing_mm
    z_mm = cast(float, ph.notes["slab_start_mm"]) + (np.arange(len(ph.hu)) + 0.5) * dz
    near = np.abs(z_mm - cast(float, ph.notes["ventricle_z_mm"])) < 20
    r, c = cast(list[float], ph.notes["center_rc_px"])
    rows, cols = np.mgrid[: ph.hu.shape[1], : ph.hu.shape[2]]
    central = np.hypot(rows - r, cols - c) * px < 35  # deep brain, far from the skull
    assert (ph.hu[near][:, central] > 100).any()


@cache
def _with_and_without(subtype: str) -> tuple[CTPhantom, CTPhantom]:
    """The same seed with a 4 mL bleed of ``subtype`` and without one (shared by the tests below)."""
    return head_ct(11, bleed=subtype, volume_ml=4.0, **SMALL), head_ct(11, **SMALL)


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_each_bleed_is_in_its_box_and_sized_as_requested(subtype: str) -> None:
    ph, base = _with_and_without(subtype)
    assert ph.hu.shape == base.hu.shape
    (lesion,) = ph.lesions
    assert (lesion.kind, lesion.subtype) == ("bleed", subtype)
    (z0, z1), (r0, c0, r1, c1) = lesion.slices, lesion.box
    assert 0 <= z0 <= z1 < len(ph.hu) and r0 < r1 and c0 < c1
    box, ref = ph.hu[z0 : z1 + 1, r0:r1, c0:c1], base.hu[z0 : z1 + 1, r0:r1, c0:c1]
    blood = (box >= 45) & (box <= 95) & (np.abs(box - ref) > 5)
    assert blood.sum() >= 5
    assert lesion.volume_ml == pytest.approx(4.0, rel=0.3)
    assert lesion.size_mm > 0
    # Outside the box (and the edema rim, a few mm), nothing changed.
    outside = np.ones(ph.hu.shape, dtype=bool)
    pad = int(np.ceil(10 / ph.spacing_mm[1]))
    outside[max(z0 - 2, 0) : z1 + 3, max(r0 - pad, 0) : r1 + pad, max(c0 - pad, 0) : c1 + pad] = False
    np.testing.assert_allclose(ph.hu[outside], base.hu[outside], atol=0.01)


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_each_bleed_mask_is_the_blood_painted(subtype: str) -> None:
    ph, base = _with_and_without(subtype)
    (lesion,) = ph.lesions
    assert ph.mask is not None and ph.mask.shape == ph.hu.shape and ph.mask.dtype == bool
    # The mask is what the truth was measured from: same slices, box and volume.
    assert box_of(ph.mask) == (lesion.slices, lesion.box)
    dz, px, _ = ph.spacing_mm
    assert float(ph.mask.sum()) * dz * px * px / 1000 == pytest.approx(lesion.volume_ml, abs=5e-4)  # rounded to 1 uL
    # Blood, not the space it was clipped to: nearly every mask voxel changed.
    assert (np.abs(ph.hu - base.hu)[ph.mask] > 5).mean() >= 0.9
    # Beyond the mask, widened by the edema rim (<= ~7 mm), partial volume and the kernel, nothing changed.
    pad, pad_z = int(np.ceil(10 / px)), int(np.ceil(8 / dz))
    near = ndimage.maximum_filter(ph.mask, size=(2 * pad_z + 1, 2 * pad + 1, 2 * pad + 1))
    np.testing.assert_array_equal(ph.hu[~near], base.hu[~near])


def test_random_bleed_draws_a_known_subtype_and_volume() -> None:
    ph = head_ct(5, bleed="random", **SMALL)
    (lesion,) = ph.lesions
    assert lesion.subtype in SUBTYPES and lesion.volume_ml is not None and lesion.volume_ml > 0


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match='"bleed"'):
        head_ct(0, bleed="chronic")
    with pytest.raises(ValueError, match='"matrix"'):
        head_ct(0, matrix=300)


def test_matrix_thickness_and_slices_are_respected() -> None:
    ph = head_ct(2, matrix=512, slice_thickness_mm=5.0)
    assert ph.hu.shape[1:] == (512, 512)
    assert ph.spacing_mm[0] == 5.0 and 0.4 <= ph.spacing_mm[1] <= 0.5
    assert 24 <= len(ph.hu) <= 30  # 125-145 mm of head
    ph = head_ct(2, matrix=256, slices=10)
    assert ph.hu.shape == (10, 256, 256) and 0.8 <= ph.spacing_mm[1] <= 1.0
    assert 120 <= 10 * ph.spacing_mm[0] <= 150  # still covers the head
    ph = head_ct(2, matrix=256, slice_thickness_mm=0.625)
    assert len(ph.hu) == 48 and ph.spacing_mm[0] == 0.625  # thin slices: capped slab


def test_phantom_round_trips_through_dicom(tmp_path: Path) -> None:
    ph = head_ct(4, bleed="epidural", slices=6, matrix=256)
    dz, px, _ = ph.spacing_mm
    paths = write_datasets(ct_datasets(ph.hu, pixel_spacing_mm=(px, px), slice_thickness_mm=dz), tmp_path)
    datasets = [pydicom.dcmread(p) for p in sorted(paths)]
    back = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    assert back.shape == ph.hu.shape
    assert np.abs(back - np.clip(ph.hu, -1024, 3071)).max() <= 1.0
