"""Radiographs written as CR/DX read back through the pixel reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

from dicom_io.headers import read_header
from dicom_io.pixels import load_radiograph
from dicom_io.writer import StudyMeta, radiograph_dataset


def gradient(rows: int = 64, cols: int = 48) -> np.ndarray:
    """A test image with every grey level from 0 to 1: (rows, cols)."""
    return np.tile(np.linspace(0.0, 1.0, cols, dtype=np.float32), (rows, 1))


@pytest.mark.parametrize("modality", ["CR", "DX"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_round_trip_keeps_bright_as_dense(tmp_path: Path, modality: str, photometric: str) -> None:
    path = tmp_path / "xr.dcm"
    radiograph_dataset(gradient(), modality=modality, photometric=photometric, pixel_spacing_mm=0.15).save_as(
        path, enforce_file_format=True
    )
    xr = load_radiograph(path)
    assert xr.photometric == photometric
    assert xr.pixel_spacing_mm == pytest.approx((0.15, 0.15))
    np.testing.assert_allclose(xr.image, gradient(), atol=2 / 4095)


def test_voi_lut_is_applied_and_monotonic(tmp_path: Path) -> None:
    path = tmp_path / "lut.dcm"
    radiograph_dataset(gradient(), voi="lut", photometric="MONOCHROME1", transfer_syntax=RLELossless).save_as(
        path, enforce_file_format=True
    )
    row = load_radiograph(path).image[0]
    assert np.all(np.diff(row) >= 0)
    # The VOI LUT maps stored values (inverted, MONOCHROME1) before the display
    # inversion (PS3.3 C.11.2), so the reader sees 1 - (1 - v) ** 0.8.
    np.testing.assert_allclose(row, 1 - (1 - gradient()[0]) ** 0.8, atol=3 / 4095)


def test_header_for_the_index(tmp_path: Path) -> None:
    meta = StudyMeta(study_description="XR TIBIA FIBULA 2V", body_part="LEG", order_priority="STAT")
    path = tmp_path / "leg.dcm"
    radiograph_dataset(gradient(), modality="CR", view_position="LAT", meta=meta).save_as(path, enforce_file_format=True)
    header = read_header(path.read_bytes())
    assert (header.modality, header.body_part, header.order_priority) == ("CR", "LEG", "STAT")
    assert dcmread(path).ViewPosition == "LAT"


@pytest.mark.parametrize(("argument", "value"), [("modality", "MR"), ("photometric", "RGB"), ("voi", "auto")])
def test_bad_arguments_name_themselves(argument: str, value: str) -> None:
    with pytest.raises(ValueError, match=f'"{argument}"'):
        radiograph_dataset(gradient(), **{argument: value})
