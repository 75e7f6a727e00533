"""The intracranial mask on a real head CT (fetched and cached by detectors.realdata) and its variants."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from detectors import realdata
from detectors.anatomy import mask_for
from detectors.anatomy.intracranial import BONE_HU, intracranial_mask
from detectors.insertion.acquisition import Variant, apply_variant
from dicom_io.pixels import load_volume


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, tuple[float, float, float]]:
    series = realdata.head_ct()
    return series.pixels, series.spacing_mm


def _exterior_air_distance_mm(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Per slice, mm from each pixel to the air around the head (air connected to the image border)."""
    out = np.empty(hu.shape, dtype=np.float32)
    for z, plane in enumerate(hu):
        air = plane < -400
        labels, _ = ndimage.label(air)
        border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        outside = np.isin(labels, border[border > 0])
        out[z] = ndimage.distance_transform_edt(~outside, sampling=spacing[1:])
    return out


def _volume_ml(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    return float(mask.sum() * np.prod(spacing) / 1000.0)


def test_real_head_mask_is_the_intracranial_space(head) -> None:
    hu, spacing = head
    mask = intracranial_mask(hu, spacing)
    assert mask.shape == hu.shape and mask.dtype == bool
    # An adult intracranial volume is 1200-1700 mL; the lowest slices of this scan are face and neck.
    assert 1100 < _volume_ml(mask, spacing) < 1800
    # Nothing of the scalp, temporalis, face or neck: all of those lie within a few mm of the outside air.
    assert _exterior_air_distance_mm(hu, spacing)[mask].min() > 6.0
    # Soft tissue and fluid (calcified pineal and choroid plexus are inside, and rare), and a margin
    # away from the skull (the partial-volume rim of the inner table reads like blood).
    assert (hu[mask] > BONE_HU).mean() < 1e-3
    labels, _ = ndimage.label(hu > BONE_HU)
    skull = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    near_skull = ndimage.binary_dilation(skull, structure=np.ones((1, 3, 3), bool))
    assert not (mask & near_skull).any()
    # The brain is in it: the mid-brain slices are mostly inside; of the face slices, only the canal.
    per_slice = mask.sum(axis=(1, 2)) * spacing[1] * spacing[2] / 100.0  # cm^2
    assert per_slice[55:70].min() > 100
    assert per_slice[:3].max() < 10  # at most the foramen magnum and upper cervical canal


@pytest.mark.parametrize(
    "variant",
    [Variant(thickness_mm=5.0), Variant(thickness_mm=7.0, tilt_deg=18.5), Variant(matrix=512, noise_hu=8.0, sharpness=0.8)],
    ids=["5mm", "7mm-tilt18.5", "512-noisy-sharp"],
)
def test_mask_holds_under_acquisition_variants(head, variant: Variant) -> None:
    hu, spacing = head
    base = _volume_ml(intracranial_mask(hu, spacing), spacing)
    varied, varied_spacing = apply_variant(hu, spacing, variant, np.random.default_rng(0))
    mask = intracranial_mask(varied, varied_spacing)
    assert abs(_volume_ml(mask, varied_spacing) - base) / base < 0.2
    assert _exterior_air_distance_mm(varied, varied_spacing)[mask].min() > 5.0


def test_single_real_slice_with_a_subdural_collection() -> None:
    volume = load_volume([realdata.path("693_UNCR.dcm")])
    mask = intracranial_mask(volume.hu, volume.spacing_mm)
    # A supratentorial slice: most of what the skull encloses, nothing of the scalp.
    area_cm2 = mask.sum() * volume.spacing_mm[1] * volume.spacing_mm[2] / 100.0
    assert 80 < area_cm2 < 250
    assert _exterior_air_distance_mm(volume.hu, volume.spacing_mm)[mask].min() > 5.0


def test_no_skull_no_mask() -> None:
    air = np.full((4, 64, 64), -1000.0, dtype=np.float32)
    assert not intracranial_mask(air, (5.0, 1.0, 1.0)).any()
    soft = np.full((4, 64, 64), 40.0, dtype=np.float32)  # tissue without bone: not a head
    assert not intracranial_mask(soft, (5.0, 1.0, 1.0)).any()


def test_mask_for_names_the_masks() -> None:
    hu = np.full((2, 32, 32), -1000.0, dtype=np.float32)
    assert mask_for("none", hu, (5.0, 1.0, 1.0), "CT") is None
    assert mask_for("intracranial", hu, (5.0, 1.0, 1.0), "CT").shape == hu.shape
    with pytest.raises(ValueError, match='"name"'):
        mask_for("kidney", hu, (5.0, 1.0, 1.0), "CT")
