"""Reading pixels: HU volumes from series and display images from radiographs."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid

from detectors.phantoms.head_ct import head_ct
from dicom_io.pixels import PixelDataError, load_radiograph, load_volume
from dicom_io.writer import StudyMeta, ct_datasets, write_datasets
from tests.support import bundled_file

MakeSeries = Callable[..., list[Path]]


def _edit(path: Path, out: Path, **attrs: object) -> Path:
    ds = dcmread(path)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(out)
    return out


# --- volumes -------------------------------------------------------------


def test_ct_small_is_rescaled_to_hu_as_pydicom_does() -> None:
    path = bundled_file("CT_small.dcm")
    ds = dcmread(path)
    volume = load_volume([path])
    assert volume.hu.dtype == np.float32
    assert volume.hu.shape == (1, 128, 128)
    np.testing.assert_array_equal(volume.hu[0], apply_modality_lut(ds.pixel_array, ds))
    assert -1100 < volume.hu.min() < -800  # air around the phantom
    assert 500 < volume.hu.max() < 3000  # bone, not raw stored values
    assert volume.sop_instance_uids == [ds.SOPInstanceUID]
    assert volume.series_uid == ds.SeriesInstanceUID


def test_shuffled_series_sorts_by_position_not_instance_number(make_ct_series: MakeSeries, tmp_path: Path) -> None:
    paths = make_ct_series(slices=8, size=32, slice_thickness_mm=2.5, pixel_spacing_mm=(0.7, 0.8))
    reference = load_volume(paths)
    rng = random.Random(7)
    numbers = list(range(1, 9))
    rng.shuffle(numbers)
    out = tmp_path / "shuffled"
    out.mkdir()
    # Random file names and scrambled Instance Numbers: only the positions tell the order.
    shuffled = [_edit(p, out / f"{generate_uid()[-12:]}.dcm", InstanceNumber=n) for p, n in zip(paths, numbers, strict=False)]
    rng.shuffle(shuffled)
    volume = load_volume(shuffled)
    z = [float(dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in paths]
    assert z == sorted(z)
    assert volume.sop_instance_uids == [dcmread(p).SOPInstanceUID for p in paths]
    np.testing.assert_array_equal(volume.hu, reference.hu)
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.8))
    assert volume.warnings == []


def test_rle_series_equals_uncompressed(make_ct_series: MakeSeries) -> None:
    plain = load_volume(make_ct_series(slices=4, size=32))
    rle = load_volume(make_ct_series(slices=4, size=32, transfer_syntax=RLELossless))
    np.testing.assert_array_equal(plain.hu, rle.hu)
    assert -1100 < plain.hu.min() and plain.hu.max() < 1300


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_mr_small_transfer_syntaxes_decode_identically(name: str) -> None:
    reference = load_volume([bundled_file("MR_small.dcm")]).hu
    np.testing.assert_array_equal(load_volume([bundled_file(name)]).hu, reference)


def test_mr_small_jpeg_ls_decodes_or_fails_clearly() -> None:
    path = bundled_file("MR_small_jpeg_ls_lossless.dcm")
    try:
        volume = load_volume([path])
    except PixelDataError as exc:
        assert "JPEG-LS" in str(exc)
        pytest.skip(f"no JPEG-LS decoder here: {exc}")
    np.testing.assert_array_equal(volume.hu, load_volume([bundled_file("MR_small.dcm")]).hu)


def test_mixed_orientation_raises(make_ct_series: MakeSeries, tmp_path: Path) -> None:
    paths = make_ct_series(slices=4, size=32)
    paths[2] = _edit(paths[2], tmp_path / "coronal.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(PixelDataError, match="orientation"):
        load_volume(paths)


def test_mixed_matrix_size_raises(make_ct_series: MakeSeries) -> None:
    meta = StudyMeta()
    paths = make_ct_series(slices=4, size=32, meta=meta) + make_ct_series(slices=3, size=16, meta=meta)
    with pytest.raises(PixelDataError, match="matrix size"):
        load_volume(paths)


def test_two_series_are_not_mixed(make_ct_series: MakeSeries) -> None:
    paths = make_ct_series(slices=2, size=16) + make_ct_series(slices=3, size=16)
    with pytest.raises(PixelDataError, match="series"):
        load_volume(paths)


def test_duplicated_file_is_kept_once_with_a_warning(make_ct_series: MakeSeries, tmp_path: Path) -> None:
    paths = make_ct_series(slices=4, size=16)
    copy = tmp_path / "copy.dcm"
    shutil.copy(paths[1], copy)
    volume = load_volume([*paths, copy])
    assert volume.hu.shape[0] == 4
    assert any("duplicate SOP Instance UID" in w for w in volume.warnings)


def test_two_instances_at_one_position_keep_one_with_a_warning(make_ct_series: MakeSeries, tmp_path: Path) -> None:
    paths = make_ct_series(slices=4, size=16)
    twin = _edit(paths[1], tmp_path / "twin.dcm", SOPInstanceUID=generate_uid())
    volume = load_volume([*paths, twin])
    assert volume.hu.shape[0] == 4
    assert any("same position" in w for w in volume.warnings)
    assert volume.spacing_mm[0] == pytest.approx(5.0)


def test_missing_slice_reports_uneven_gaps(make_ct_series: MakeSeries) -> None:
    paths = make_ct_series(slices=6, size=16)
    volume = load_volume(paths[:2] + paths[3:])
    assert volume.hu.shape[0] == 5
    assert volume.spacing_mm[0] == pytest.approx(5.0)
    assert any("inconsistent slice spacing" in w for w in volume.warnings)


def test_plain_multiframe_frames_become_slices() -> None:
    volume = load_volume([bundled_file("rtdose.dcm")])
    assert volume.hu.shape == (15, 10, 10)
    assert volume.spacing_mm == pytest.approx((5.0, 10.0, 10.0))


def test_colour_multiframe_is_refused() -> None:
    with pytest.raises(PixelDataError, match="colour"):
        load_volume([bundled_file("SC_rgb_rle_2frame.dcm")])


def _enhanced_ct(paths: list[Path], out: Path) -> Path:
    """An Enhanced CT-like multi-frame file built from a series, frames in reverse order."""
    slices = [dcmread(p) for p in reversed(paths)]
    ds = dcmread(paths[-1])  # a fresh copy: the header of the first frame
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in slices:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = s.ImagePositionPatient
        item.PixelValueTransformationSequence = Sequence([Dataset()])
        item.PixelValueTransformationSequence[0].RescaleSlope = 1
        item.PixelValueTransformationSequence[0].RescaleIntercept = s.RescaleIntercept
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(out)
    return out


def test_enhanced_multiframe_uses_functional_groups(make_ct_series: MakeSeries, tmp_path: Path) -> None:
    paths = make_ct_series(slices=5, size=16)
    reference = load_volume(paths)
    volume = load_volume([_enhanced_ct(paths, tmp_path / "enhanced.dcm")])
    assert volume.hu.shape == (5, 16, 16)
    np.testing.assert_array_equal(volume.hu, reference.hu)  # re-sorted by position
    assert volume.spacing_mm == pytest.approx((5.0, 0.5, 0.5))


def test_not_dicom_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(PixelDataError, match="junk.dcm"):
        load_volume([junk])


# --- radiographs -----------------------------------------------------------


def test_radiograph_without_voi_uses_min_max() -> None:
    radiograph = load_radiograph(bundled_file("JPEG2000.dcm"))
    assert radiograph.image.dtype == np.float32
    assert radiograph.image.shape == (1024, 256)
    assert radiograph.image.min() == 0.0 and radiograph.image.max() == 1.0
    assert radiograph.pixel_spacing_mm == pytest.approx((2.26, 2.26))
    assert radiograph.photometric == "MONOCHROME2"


def test_radiograph_window_is_applied(tmp_path: Path) -> None:
    source = bundled_file("CT_small.dcm")
    windowed = _edit(source, tmp_path / "windowed.dcm", WindowCenter=40, WindowWidth=400)
    image = load_radiograph(windowed).image
    ds = dcmread(source)
    hu = apply_modality_lut(ds.pixel_array, ds)
    expected = np.clip((hu - (40 - 200)) / 400, 0, 1)
    np.testing.assert_allclose(image, expected, atol=0.01)
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    source = bundled_file("CT_small.dcm")
    inverted = _edit(source, tmp_path / "mono1.dcm", PhotometricInterpretation="MONOCHROME1")
    normal = load_radiograph(source)
    radiograph = load_radiograph(inverted)
    assert radiograph.photometric == "MONOCHROME1"
    np.testing.assert_allclose(radiograph.image, 1.0 - normal.image, atol=1e-6)


def test_corrupt_compressed_pixel_data_raises_one_line(tmp_path: Path) -> None:
    ds = dcmread(bundled_file("JPEG2000.dcm"))
    half = len(ds.PixelData) // 2
    ds.PixelData = ds.PixelData[:half] + bytes(len(ds.PixelData) - half)  # truncated codestream, zero-filled
    corrupt = tmp_path / "corrupt.dcm"
    ds.save_as(corrupt)
    with pytest.raises(PixelDataError) as info:
        load_radiograph(corrupt)
    message = str(info.value)
    assert "corrupt.dcm" in message and "JPEG 2000" in message
    assert "\n" not in message


def test_colour_radiograph_is_refused() -> None:
    with pytest.raises(PixelDataError, match="colour"):
        load_radiograph(bundled_file("SC_rgb_jpeg.dcm"))


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])
def test_phantom_round_trip_through_dicom(tmp_path: Path, transfer_syntax: str) -> None:
    """A head CT phantom written as DICOM (shuffled) reads back as the same HU volume."""
    ph = head_ct(7, bleed="subdural", matrix=256, slices=10)
    paths = write_datasets(
        ct_datasets(ph.hu, pixel_spacing_mm=ph.spacing_mm[1:], slice_thickness_mm=ph.spacing_mm[0], transfer_syntax=transfer_syntax),
        tmp_path,
    )
    vol = load_volume(list(reversed(paths)))
    assert vol.spacing_mm == pytest.approx(ph.spacing_mm)
    np.testing.assert_allclose(vol.hu, np.clip(np.rint(ph.hu), -1024, 3071), atol=1)


# --- real-world headers: spacing fallbacks, MONOCHROME1, gantry tilt (issue 12) --------


def _gradient(rows: int = 120, cols: int = 100) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, cols), (rows, 1))  # bright (dense) on the right


def _radiograph(tmp_path: Path, name: str, *, drop: tuple[str, ...] = (), **attrs: object) -> Path:
    from dicom_io.writer import radiograph_dataset

    ds = radiograph_dataset(_gradient(), modality="CR", pixel_spacing_mm=0.15)
    for keyword in drop:
        delattr(ds, keyword)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_radiograph_pixel_spacing_is_used_without_a_note(tmp_path: Path) -> None:
    radiograph = load_radiograph(_radiograph(tmp_path, "ok.dcm"))
    assert radiograph.pixel_spacing_mm == pytest.approx((0.15, 0.15))
    assert (radiograph.spacing_source, radiograph.notes) == ("PixelSpacing", ())


@pytest.mark.parametrize(
    ("pixel_spacing", "why"),
    [
        ([0, 0], r"Pixel Spacing 0.0\0.0 unusable"),
        (None, "Pixel Spacing missing"),
        ([0.15, -0.15], r"Pixel Spacing 0.15\-0.15 unusable"),
        ([150, 150], r"Pixel Spacing 150.0\150.0 unusable, must be 0.02-5 mm"),  # microns written as mm
        (["NaN", "NaN"], r"Pixel Spacing NaN\NaN unusable"),
    ],
    ids=["zero", "missing", "negative", "too-large", "nan"],
)
def test_unusable_pixel_spacing_falls_back_to_imager_pixel_spacing(tmp_path: Path, pixel_spacing: list[object] | None, why: str) -> None:
    attrs: dict[str, object] = {"ImagerPixelSpacing": [0.143, 0.143]}
    drop = ("PixelSpacing",) if pixel_spacing is None else ()
    if pixel_spacing is not None:
        attrs["PixelSpacing"] = pixel_spacing
    radiograph = load_radiograph(_radiograph(tmp_path, "imager.dcm", drop=drop, **attrs))
    assert radiograph.pixel_spacing_mm == pytest.approx((0.143, 0.143))
    assert radiograph.spacing_source == "ImagerPixelSpacing"
    if pixel_spacing is None:  # a DX's usual header (Pixel Spacing is Type 1C): nothing to note
        assert radiograph.notes == ()
        return
    [note] = radiograph.notes
    assert "from Imager Pixel Spacing" in note and why in note


def test_no_usable_spacing_is_estimated_from_a_430_mm_detector(tmp_path: Path) -> None:
    path = _radiograph(tmp_path, "none.dcm", PixelSpacing=[0, 0], ImagerPixelSpacing=[0, 0])
    radiograph = load_radiograph(path)
    assert radiograph.spacing_source == "estimate"
    assert radiograph.pixel_spacing_mm == pytest.approx((430 / 120, 430 / 120))  # longer side 120 pixels
    [note] = radiograph.notes
    assert "estimated as 3.58 mm" in note and "430 mm detector" in note
    assert r"Pixel Spacing 0.0\0.0 unusable" in note and r"Imager Pixel Spacing 0.0\0.0 unusable" in note


def test_estimate_is_clipped_to_a_plausible_spacing(tmp_path: Path) -> None:
    from dicom_io.writer import radiograph_dataset

    ds = radiograph_dataset(np.zeros((40, 30)), modality="CR")
    del ds.PixelSpacing
    ds.save_as(tmp_path / "tiny.dcm", enforce_file_format=True)
    radiograph = load_radiograph(tmp_path / "tiny.dcm")
    assert radiograph.pixel_spacing_mm == pytest.approx((5.0, 5.0))  # 430 / 40 would be 10.75 mm
    assert "Imager Pixel Spacing missing" in radiograph.notes[0]


@pytest.mark.parametrize("voi", ["window", "lut", "none"])
def test_monochrome1_reads_bright_as_dense_with_and_without_voi(tmp_path: Path, voi: str) -> None:
    from dicom_io.writer import radiograph_dataset

    image = _gradient()
    read = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        ds = radiograph_dataset(image, modality="CR", photometric=photometric, voi=voi)
        ds.save_as(tmp_path / f"{photometric}.dcm", enforce_file_format=True)
        read[photometric] = load_radiograph(tmp_path / f"{photometric}.dcm")
    mono1 = read["MONOCHROME1"]
    assert mono1.photometric == "MONOCHROME1"
    # The dense side (right) is bright after reading, as in MONOCHROME2, whatever the stored values.
    assert mono1.image[:, -5:].mean() > 0.9 and mono1.image[:, :5].mean() < 0.1
    assert np.all(np.diff(mono1.image, axis=1) >= -1e-6)
    if voi != "lut":
        np.testing.assert_allclose(mono1.image, read["MONOCHROME2"].image, atol=0.01)
    # A VOI LUT maps stored values and the inversion follows it (PS3.3 C.7.6.3.1.2: the minimum is
    # white after the VOI transformation), so one gamma LUT bends a MONOCHROME1 image the other way.


def _tilted_ct(tmp_path: Path, tilt_deg: float, table_step_mm: float = 5.0, slices: int = 6) -> list[Path]:
    """A gantry-tilted axial series as scanners write it: the slice planes tilted about the
    patient's left-right axis, the table (and so Image Position) stepping along z, y following."""
    t = np.radians(tilt_deg)
    paths = []
    volume = np.full((slices, 32, 32), 40.0)
    for k, ds in enumerate(ct_datasets(volume, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=table_step_mm)):
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(t)), float(-np.sin(t))]
        ds.GantryDetectorTilt = tilt_deg
        # Each plane's centre moves along the table axis; its top-left corner moves along y as z changes.
        centre = np.array([0.0, 0.0, k * table_step_mm])
        corner = centre - 8.0 * np.array([1, 0, 0]) - 8.0 * np.array([0, np.cos(t), -np.sin(t)])
        ds.ImagePositionPatient = [float(v) for v in corner]
        paths.append(tmp_path / f"tilt{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    random.Random(3).shuffle(paths)
    return paths


def test_gantry_tilted_series_reads_as_a_stack_spaced_along_the_normal(tmp_path: Path) -> None:
    paths = _tilted_ct(tmp_path, 18.5)
    volume = load_volume(paths)
    assert volume.hu.shape == (6, 32, 32)
    # The planes are 5 mm apart along the table, 5 cos(18.5) = 4.74 mm apart along their normal.
    assert volume.spacing_mm == pytest.approx((5.0 * np.cos(np.radians(18.5)), 0.5, 0.5), abs=1e-3)
    assert not any("inconsistent" in w for w in volume.warnings)
    [shear] = [w for w in volume.warnings if "gantry tilt" in w]
    assert "18.5 degrees" in shear and "1.59 mm in-plane" in shear  # 5 sin(18.5)
    zs = [float(dcmread(p).ImagePositionPatient[2]) for p in paths]
    ordered = [str(dcmread(p).SOPInstanceUID) for _, p in sorted(zip(zs, paths, strict=False))]
    assert volume.sop_instance_uids == ordered


def test_untilted_series_has_no_shear_warning(make_ct_series: MakeSeries) -> None:
    volume = load_volume(make_ct_series(slices=4, size=16))
    assert not [w for w in volume.warnings if "gantry tilt" in w]


def _ct_slices(tmp_path: Path, name: str, *, drop: tuple[str, ...] = (), **attrs: object) -> list[Path]:
    out = tmp_path / name
    out.mkdir()
    paths = []
    for k, ds in enumerate(ct_datasets(np.zeros((3, 64, 64)), pixel_spacing_mm=(0.7, 0.7))):
        for keyword in drop:
            delattr(ds, keyword)
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        paths.append(out / f"{k}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_ct_pixel_spacing_is_used_without_a_note(tmp_path: Path) -> None:
    volume = load_volume(_ct_slices(tmp_path, "ok", ReconstructionDiameter=320))
    assert volume.spacing_mm[1:] == pytest.approx((0.7, 0.7))
    assert (volume.spacing_source, volume.notes) == ("PixelSpacing", ())


@pytest.mark.parametrize(
    ("spacing", "why"),
    [
        ([0, 0], r"Pixel Spacing 0.0\0.0 unusable"),
        (None, "Pixel Spacing missing"),
        ([0.01, 0.01], r"Pixel Spacing 0.01\0.01 unusable, must be 0.1-5 mm"),
    ],
    ids=["zero", "missing", "implausible"],
)
def test_ct_spacing_falls_back_to_reconstruction_diameter(tmp_path: Path, spacing: object, why: str) -> None:
    drop = ("PixelSpacing",) if spacing is None else ()
    attrs: dict[str, object] = {"ReconstructionDiameter": 320}
    if spacing is not None:
        attrs["PixelSpacing"] = spacing
    volume = load_volume(_ct_slices(tmp_path, "rd", drop=drop, **attrs))
    assert volume.spacing_mm[1:] == pytest.approx((5.0, 5.0))  # 320 mm over 64 columns
    assert volume.spacing_source == "ReconstructionDiameter"
    [note] = volume.notes  # one for the series, not one per slice
    assert "Reconstruction Diameter 320 mm / 64 columns" in note and why in note


@pytest.mark.parametrize(("description", "fov", "word"), [("CT HEAD WO", 250.0, "head"), ("CT ABDOMEN", 350.0, "body")])
def test_ct_spacing_is_estimated_from_a_head_or_body_field_of_view(tmp_path: Path, description: str, fov: float, word: str) -> None:
    paths = _ct_slices(
        tmp_path, word, drop=("PixelSpacing", "BodyPartExamined"), StudyDescription=description, SeriesDescription="AXIAL 5MM"
    )
    volume = load_volume(paths)
    assert volume.spacing_source == "estimate"
    assert volume.spacing_mm[1:] == pytest.approx((fov / 64, fov / 64))
    [note] = volume.notes
    assert f"a {fov:.0f} mm {word} field of view over 64 columns" in note
    assert "Pixel Spacing missing; Reconstruction Diameter missing" in note


def test_ct_with_a_wrong_reconstruction_diameter_is_estimated(tmp_path: Path) -> None:
    volume = load_volume(_ct_slices(tmp_path, "bad", PixelSpacing=[0, 0], ReconstructionDiameter=0, BodyPartExamined="HEAD"))
    assert volume.spacing_source == "estimate" and volume.spacing_mm[1] == pytest.approx(250 / 64)
    assert "Reconstruction Diameter 0.0 unusable" in volume.notes[0]
