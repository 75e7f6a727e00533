"""Real-anatomy test studies: written as DICOM, read back through the project's own readers, truth intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from detectors.real_cases import bleed_case
from detectors.routing import SeriesInfo, route
from dicom_io.pixels import load_radiograph, load_volume
from triage.samples.real_studies import generate_real_samples


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
    from dicom_io.writer import ct_datasets
    from triage.samples.real_studies import _restore

    ds = next(ct_datasets(case.series.pixels[:1], pixel_spacing_mm=case.series.spacing_mm[1:]))
    for storage in (
        {"rescale_slope": 0.5, "rescale_intercept": -8192.0, "pixel_representation": 0, "bits_stored": 16},
        {"rescale_slope": 1.0, "rescale_intercept": 0.0, "pixel_representation": 1, "bits_stored": 16},
    ):
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


def test_chest_radiograph_own_masses_are_findings_where_the_image_has_them(written) -> None:
    """The real chest CR is not normal: its masses (marked by eye) follow the image when it is mirrored."""
    from detectors import realdata

    out, manifest = written
    marks = realdata.case("RG1_UNCR.dcm").regions
    for study in (s for s in manifest["studies"] if s["kind"] == "chest_xr"):
        assert study["present"]
        own = [f for f in study["findings"] if f["origin"] == "read by eye"]
        inserted = [f for f in study["findings"] if f["origin"] == "inserted"]
        assert len(own) == len(marks) and len(inserted) <= 1
        image = load_radiograph(next((out / study["folder"]).glob("*.dcm"))).image
        cols = image.shape[1]
        for finding, (r, c, radius) in zip(own, marks, strict=True):
            r0, c0, r1, c1 = finding["box"]
            col = cols - 1 - c if study["drawn"]["mirrored"] else c
            assert r0 <= r < r1 and c0 <= col < c1
            assert finding["size_mm"] == pytest.approx(2 * radius * 0.22, abs=1.0)
        for f in inserted:  # never placed on a mass
            r0, c0, r1, c1 = f["box"]
            for m in own:
                m0, n0, m1, n1 = m["box"]
                assert not (r0 < m1 and m0 < r1 and c0 < n1 and n0 < c1) or (r1 - r0) > (m1 - m0)
