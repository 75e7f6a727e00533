"""Lung and bone masks on real radiographs (pydicom-data, fetched by realdata) and on phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from detectors.anatomy.bone import bone_mask_ct, bone_mask_radiograph
from detectors.anatomy.lungs import lung_fields_radiograph, lung_mask_ct
from detectors.phantoms.chest_ct import chest_ct
from detectors.phantoms.radiographs import chest_radiograph, extremity_radiograph

ASSUMED_SPACING_MM = (0.2, 0.2)  # RG1 says 0\0 and RG3 nothing; 0.2 mm is a typical CR plate


def _real(name: str) -> np.ndarray:
    realdata = pytest.importorskip("detectors.realdata")
    from dicom_io.pixels import load_radiograph

    try:
        path = realdata.path(name)
    except realdata.RealDataError as exc:  # no registry reachable: the real-anatomy tests cannot run here
        pytest.skip(str(exc))
    return load_radiograph(path).image  # (rows, cols) in [0, 1], MONOCHROME1 inverted


@pytest.fixture(scope="module")
def rg1() -> np.ndarray:
    return _real("RG1_UNCR.dcm")


@pytest.fixture(scope="module")
def rg3() -> np.ndarray:
    return _real("RG3_UNCR.dcm")


# --------------------------------------------------------------------------- real radiographs


def test_rg1_lung_fields_are_two_lungs_away_from_border_and_mediastinum(rg1: np.ndarray) -> None:
    mask = lung_fields_radiograph(rg1, ASSUMED_SPACING_MM)
    rows, cols = rg1.shape
    labels, count = ndimage.label(mask)
    assert count == 2
    centres = sorted(float(np.nonzero(labels == k)[1].mean()) / cols for k in (1, 2))
    assert centres[0] < 0.45 and centres[1] > 0.55  # one each side of the midline
    for k in (1, 2):
        assert 0.08 <= (labels == k).mean() <= 0.3
    border = int(8.0 / ASSUMED_SPACING_MM[0])  # nothing within 8 mm of the edge (collimator, background)
    assert not mask[:border].any() and not mask[-border:].any()
    assert not mask[:, :border].any() and not mask[:, -border:].any()
    middle = mask[:, cols // 2 - 40 : cols // 2 + 40]  # the mediastinum and spine, 16 mm wide
    assert middle.mean() < 0.05
    assert not mask[int(0.8 * rows) :].any()  # the abdomen below the diaphragm


def test_rg1_lung_fields_do_not_depend_on_the_intensity_range(rg1: np.ndarray) -> None:
    unit = lung_fields_radiograph(rg1, ASSUMED_SPACING_MM)
    normalised = lung_fields_radiograph(rg1 * 2.0 - 0.5, ASSUMED_SPACING_MM)  # the detectors' [-0.5, 1.5]
    assert (unit == normalised).mean() > 0.99


def test_rg3_bone_covers_tibia_and_fibula_and_not_the_border(rg3: np.ndarray) -> None:
    mask = bone_mask_radiograph(rg3, ASSUMED_SPACING_MM)
    rows, cols = rg3.shape
    # Mid-shaft rows; the tibia and fibula columns were read off the image.
    band = mask[int(0.3 * rows) : int(0.5 * rows)]
    tibia, fibula = slice(int(0.46 * cols), int(0.5 * cols)), slice(int(0.55 * cols), int(0.57 * cols))
    assert band[:, tibia].mean() > 0.95
    assert band[:, fibula].mean() > 0.95
    border = int(5.0 / ASSUMED_SPACING_MM[0])
    assert not mask[:, :border].any() and not mask[:, -border:].any()
    assert not mask[:, : int(0.2 * cols)].any()  # the flat white shutter on the left
    marker = mask[int(0.75 * rows) : int(0.85 * rows), int(0.75 * cols) : int(0.82 * cols)]  # the "R"
    assert not marker.any()


# --------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_chest_radiograph_nodule_inside_lung_fields(seed: int) -> None:
    phantom = chest_radiograph(seed, nodule=True)
    mask = lung_fields_radiograph(phantom.image, (phantom.pixel_spacing_mm,) * 2)
    assert mask.shape == phantom.image.shape and mask.dtype == bool
    assert mask[phantom.mask].all()
    assert 0.15 <= mask.mean() <= 0.45
    labels, count = ndimage.label(mask)
    assert count == 2


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_chest_ct_nodules_inside_lung_mask(seed: int) -> None:
    phantom = chest_ct(seed, nodules=3, nodule_placement="juxta_pleural" if seed == 1 else None, slices=24)
    mask = lung_mask_ct(phantom.hu, phantom.spacing_mm)
    assert mask.shape == phantom.hu.shape and mask.dtype == bool
    # A juxtapleural nodule's outermost voxels (against the wall, partial volume) may be left out.
    assert mask[phantom.mask].mean() >= 0.98
    assert 0.04 <= mask.mean() <= 0.25
    assert mask[phantom.hu > 300].mean() < 0.25  # spine and ribs are not lung (the margin touches the ribs)
    assert not mask[:, :, : phantom.hu.shape[2] // 10].any()  # nor the outside air


@pytest.mark.xfail(
    reason="a juxtapleural nodule over 20 mm where the pleura curves sharply (posterior gutter, "
    "heart border) opens a bay wider than the per-slice closing fills",
    strict=False,
)
def test_chest_ct_large_juxtapleural_nodules_inside_lung_mask() -> None:
    phantom = chest_ct(2, nodules=3, slices=24)  # 29 and 23 mm juxtapleural nodules
    mask = lung_mask_ct(phantom.hu, phantom.spacing_mm)
    assert mask[phantom.mask].mean() >= 0.98


def test_chest_ct_without_lungs_is_all_false() -> None:
    hu = np.full((6, 64, 64), -1000.0, dtype=np.float32)
    hu[:, 8:56, 8:56] = 40.0  # a soft-tissue block in air: no internal air
    mask = lung_mask_ct(hu, (2.0, 1.0, 1.0))
    assert mask.shape == hu.shape and mask.dtype == bool and not mask.any()


@pytest.mark.parametrize("seed,fracture", [(1, "transverse"), (3, "comminuted"), (4, "oblique")])
def test_extremity_fracture_inside_bone_mask(seed: int, fracture: str) -> None:
    phantom = extremity_radiograph(seed, fracture=fracture)
    mask = bone_mask_radiograph(phantom.image, (phantom.pixel_spacing_mm,) * 2)
    assert mask.shape == phantom.image.shape and mask.dtype == bool
    assert mask[phantom.mask].all()
    assert 0.05 <= mask.mean() <= 0.45


def test_bone_mask_ct_covers_bone_with_margin() -> None:
    phantom = chest_ct(3, nodules=0, matrix=256, slices=16)
    mask = bone_mask_ct(phantom.hu, phantom.spacing_mm)
    assert mask.shape == phantom.hu.shape and mask.dtype == bool
    assert mask[phantom.hu > 400].all()
    assert 0.01 <= mask.mean() <= 0.3
    assert not mask[phantom.hu < -500].all()


# --------------------------------------------------------------------------- blank and invalid input


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_blank_radiograph_gives_empty_masks(value: float) -> None:
    blank = np.full((400, 300), value, dtype=np.float32)
    for mask in (lung_fields_radiograph(blank, (0.4, 0.4)), bone_mask_radiograph(blank, (0.4, 0.4))):
        assert mask.shape == blank.shape and mask.dtype == bool and not mask.any()


def test_noise_is_not_a_chest() -> None:
    noise = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    assert not lung_fields_radiograph(noise, (0.4, 0.4)).any()


@pytest.mark.parametrize("spacing", [(0.0, 0.2), (-1.0, 0.2), (float("nan"), 0.2)])
def test_invalid_spacing_is_refused(spacing: tuple[float, float]) -> None:
    image = np.zeros((64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="spacing_mm"):
        lung_fields_radiograph(image, spacing)
    with pytest.raises(ValueError, match="spacing_mm"):
        bone_mask_radiograph(image, spacing)
