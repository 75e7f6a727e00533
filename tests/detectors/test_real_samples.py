"""Real-anatomy test studies: written as DICOM, read back through the project's own readers, truth intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detectors.real_cases import bleed_case
from detectors.real_samples import generate_real_samples
from detectors.routing import SeriesInfo, route
from dicom_io.pixels import load_radiograph, load_volume
from pydicom import dcmread


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("real")
    manifest = generate_real_samples(out, {"head_ct": 2, "chest_xr": 2}, seed=3, head_slab_mm=30.0)
    return out, manifest


def test_manifest_lists_every_study_with_its_truth(written) -> None:
    out, manifest = written
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert [s["kind"] for s in manifest["studies"]] == ["head_ct", "head_ct", "chest_xr", "chest_xr"]
    for study in manifest["studies"]:
        files = sorted((out / study["folder"]).glob("*.dcm"))
        assert len(files) == study["instances"]
        assert study["present"] == bool(study["findings"])
        for finding in study["findings"]:
            assert finding["kind"] in ("bleed", "nodule") and finding["sop_instance_uids"]


def test_head_ct_reads_back_as_written(written) -> None:
    out, manifest = written
    for study in (s for s in manifest["studies"] if s["kind"] == "head_ct"):
        files = sorted((out / study["folder"]).glob("*.dcm"))
        volume = load_volume(files)
        acq = study["acquisition"]
        assert volume.hu.shape[0] == acq["slices"] and volume.hu.shape[1] == acq["matrix"]
        # The slices are the table step apart along their normal: cos(tilt) of it when tilted.
        expected = acq["slice_thickness_mm"] * np.cos(np.radians(acq["tilt_deg"]))
        assert volume.spacing_mm[0] == pytest.approx(expected, rel=0.02)
        assert route(SeriesInfo.from_dataset(dcmread(files[0], stop_before_pixels=True))).detectors


def test_rescale_variants_keep_the_hu() -> None:
    case = bleed_case("test", 0, slab_mm=20.0)
    from detectors.real_samples import _restore
    from dicom_io.writer import ct_datasets

    ds = next(ct_datasets(case.series.pixels[:1], pixel_spacing_mm=case.series.spacing_mm[1:]))
    for storage in ({"rescale_slope": 0.5, "rescale_intercept": -8192.0, "pixel_representation": 0, "bits_stored": 16},
                    {"rescale_slope": 1.0, "rescale_intercept": 0.0, "pixel_representation": 1, "bits_stored": 16}):  # fmt: skip
        _restore(ds, case.series.pixels[0], storage)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        body = (case.series.pixels[0] > -1000) & (case.series.pixels[0] < 3000)  # air may be clipped at -1024
        assert np.abs(hu - case.series.pixels[0])[body].max() <= 0.5 * storage["rescale_slope"] + 1e-3


def test_chest_radiograph_is_routed_and_read_whatever_it_carries(written) -> None:
    out, manifest = written
    for study in (s for s in manifest["studies"] if s["kind"] == "chest_xr"):
        path = next((out / study["folder"]).glob("*.dcm"))
        ds = dcmread(path, stop_before_pixels=True)
        assert route(SeriesInfo.from_dataset(ds)).analysed
        radiograph = load_radiograph(path)
        assert radiograph.pixel_spacing_mm is not None and radiograph.pixel_spacing_mm[0] > 0
        if study["acquisition"]["as_received"]:
            assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
