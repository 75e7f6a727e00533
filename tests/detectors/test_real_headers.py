"""Real headers from other scanners (issue 12, item 6): routing and reading of real files.

The files are real CR and CT images from the ``pydicom-data`` wheel (MIT),
fetched and cached by :func:`detectors.realdata.path`, as CI does:

- ``RG1_UNCR.dcm``: a Philips chest CR for presentation, Image Type
  DERIVED\\PRIMARY, Pixel Spacing 0\\0, MONOCHROME1 with a window;
- ``RG3_UNCR.dcm``: a Fuji lower-leg CR, ORIGINAL\\PRIMARY, no Pixel Spacing,
  MONOCHROME1;
- ``693_UNCR.dcm``: a 512x512 head CT slice with Pixel Spacing and
  Reconstruction Diameter;
- ``eCT_Supplemental.dcm``: an Enhanced CT perfusion map (DERIVED\\PRIMARY\\
  PERFUSION\\RCBF), which must be skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from detectors import realdata
from detectors.content_check import ct_region
from detectors.routing import FindingKind, SeriesInfo, route
from dicom_io.pixels import load_radiograph, load_volume


def _route(path: Path) -> tuple[tuple[FindingKind, ...], str, bool]:
    decision = route(SeriesInfo.from_dataset(dcmread(path, stop_before_pixels=True), number_of_images=1))
    return decision.detectors, decision.reason, decision.analysed


def _mean(image: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    """Mean over a box given as fractions of the image's height and width."""
    h, w = image.shape
    return float(image[int(rows[0] * h) : int(rows[1] * h), int(cols[0] * w) : int(cols[1] * w)].mean())


def _inverse_of_stored(image: np.ndarray, path: Path) -> float:
    """Correlation of the read image with the stored values (MONOCHROME1: strongly negative)."""
    stored = dcmread(path).pixel_array.astype(np.float64)
    return float(np.corrcoef(image.ravel()[::97], stored.ravel()[::97])[0, 1])


# --- chest CR for presentation: DERIVED\PRIMARY, Pixel Spacing 0\0, MONOCHROME1 -------------


def test_processed_chest_cr_is_routed_to_the_chest_detector() -> None:
    detectors, reason, analysed = _route(realdata.path("RG1_UNCR.dcm"))
    assert (detectors, reason, analysed) == ((FindingKind.NODULE,), "chest radiograph (body part CHEST)", True)


def test_chest_cr_spacing_is_estimated_and_stated() -> None:
    radiograph = load_radiograph(realdata.path("RG1_UNCR.dcm"))
    assert radiograph.spacing_source == "estimate"
    assert radiograph.pixel_spacing_mm == pytest.approx((430 / 1955, 430 / 1955))  # 1955 x 1841
    [note] = radiograph.notes
    assert "estimated as 0.22 mm" in note and "430 mm detector" in note
    assert r"Pixel Spacing 0.000\0.000 unusable" in note and "Imager Pixel Spacing missing" in note


@pytest.mark.parametrize("window", [True, False], ids=["window", "min-max"])
def test_chest_cr_monochrome1_reads_bone_and_mediastinum_bright(tmp_path: Path, window: bool) -> None:
    path = realdata.path("RG1_UNCR.dcm")
    if not window:
        ds = dcmread(path)
        del ds.WindowCenter, ds.WindowWidth
        path = tmp_path / "no-window.dcm"
        ds.save_as(path)
    radiograph = load_radiograph(path)
    image = radiograph.image
    assert radiograph.photometric == "MONOCHROME1" and image.shape == (1955, 1841)
    assert _inverse_of_stored(image, path) < -0.99
    # Bright means dense: the mediastinum and the spine outshine both lung fields.
    mediastinum = _mean(image, (0.3, 0.5), (0.47, 0.53))
    lungs = [_mean(image, (0.3, 0.5), (0.2, 0.35)), _mean(image, (0.3, 0.5), (0.65, 0.8))]
    assert mediastinum > max(lungs) + 0.15


# --- lower-leg CR without Pixel Spacing --------------------------------------------------


def test_leg_cr_is_routed_to_the_fracture_detector() -> None:
    detectors, reason, analysed = _route(realdata.path("RG3_UNCR.dcm"))
    assert (detectors, analysed) == ((FindingKind.FRACTURE,), True)
    assert reason == "skeletal radiograph (body part EXTREMITY)"


def test_leg_cr_without_pixel_spacing_is_estimated_and_dark_where_exposed() -> None:
    path = realdata.path("RG3_UNCR.dcm")
    radiograph = load_radiograph(path)
    assert radiograph.spacing_source == "estimate"
    assert radiograph.pixel_spacing_mm == pytest.approx((430 / 1760, 430 / 1760))
    assert "Pixel Spacing missing" in radiograph.notes[0]
    assert _inverse_of_stored(radiograph.image, path) < -0.99
    # Directly exposed detector (the highest stored values in MONOCHROME1) reads black, bone grey to white.
    stored = dcmread(path).pixel_array
    assert radiograph.image[stored >= 950].mean() < 0.1
    assert radiograph.image[(stored > 250) & (stored < 450)].mean() > 0.5


# --- head CT slice ------------------------------------------------------------------------


def test_head_ct_slice_reads_with_its_pixel_spacing_and_routes_by_content() -> None:
    path = realdata.path("693_UNCR.dcm")
    volume = load_volume([path])
    assert volume.spacing_mm[1:] == pytest.approx((0.478516, 0.478516))
    assert (volume.spacing_source, volume.notes) == ("PixelSpacing", ())
    # A 5 mm slice of a series spaced 20 mm apart: alone, it stands for its own 5 mm.
    ds = dcmread(path, stop_before_pixels=True)
    assert (float(ds.SliceThickness), float(ds.SpacingBetweenSlices)) == (5.0, 20.0)
    assert volume.spacing_mm[0] == pytest.approx(5.0)
    info = SeriesInfo.from_dataset(dcmread(path, stop_before_pixels=True), number_of_images=1)
    decision = route(info, content_check=lambda: ct_region(volume.hu))
    assert decision.detectors == (FindingKind.BLEED,) and decision.reason == "head CT (content check HEAD)"


def test_head_ct_without_pixel_spacing_uses_reconstruction_diameter(tmp_path: Path) -> None:
    ds = dcmread(realdata.path("693_UNCR.dcm"))
    ds.PixelSpacing = [0, 0]
    ds.save_as(tmp_path / "zero.dcm")
    volume = load_volume([tmp_path / "zero.dcm"])
    assert volume.spacing_source == "ReconstructionDiameter"
    assert volume.spacing_mm[1:] == pytest.approx((245 / 512, 245 / 512))
    assert "Reconstruction Diameter 245 mm / 512 columns" in volume.notes[0]


def test_tilted_copies_of_a_real_slice_read_as_a_stack(tmp_path: Path) -> None:
    """Five copies of the real slice placed as an 18.5 degree gantry tilt writes them (GantryDetectorTilt)."""
    path = realdata.path("693_UNCR.dcm")
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    t = np.radians(18.5)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    paths = []
    for k in range(5):
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{uid}.{k + 1}"
        ds.GantryDetectorTilt = 18.5
        ds.ImageOrientationPatient = [*row, *col]
        corner = np.array([0.0, 0.0, 47.0 + 5.0 * k]) - 122.5 * row - 122.5 * col  # y moves as z changes
        ds.ImagePositionPatient = [round(float(v), 4) for v in corner]
        ds.InstanceNumber = 5 - k  # reversed: order comes from the positions
        paths.append(tmp_path / f"{k}.dcm")
        ds.save_as(paths[-1])
    volume = load_volume(paths)
    assert volume.hu.shape == (5, 512, 512)
    assert volume.spacing_mm[0] == pytest.approx(5.0 * np.cos(t), abs=1e-3)
    assert volume.sop_instance_uids == [f"{uid}.{k + 1}" for k in range(5)]
    assert any("gantry tilt about 18.5 degrees" in w for w in volume.warnings)


# --- CT perfusion map ------------------------------------------------------------------------


def test_ct_perfusion_map_is_skipped_with_its_reason() -> None:
    detectors, reason, analysed = _route(realdata.path("eCT_Supplemental.dcm"))
    assert (detectors, analysed) == ((), False)
    why = r"derived image: perfusion/parametric map (Image Type DERIVED\PRIMARY\PERFUSION\RCBF)"
    assert reason == f"not analysed: {why}"


@pytest.mark.parametrize("thickness", ["0", "-5", "NaN"])
def test_a_lone_slice_with_a_nonsense_thickness_falls_back(tmp_path: Path, thickness: str) -> None:
    ds = dcmread(realdata.path("693_UNCR.dcm"))
    ds.SliceThickness = thickness
    ds.save_as(tmp_path / "odd.dcm")
    assert load_volume([tmp_path / "odd.dcm"]).spacing_mm[0] == pytest.approx(20.0)  # Spacing Between Slices
