"""Phantoms written as DICOM: the committed sample studies are what the documented command generates; radiographs round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from detectors.phantoms.radiographs import chest_radiograph, extremity_radiograph
from dicom_io.pixels import load_radiograph
from tests.support import REPO_ROOT
from triage.samples.phantom_studies import generate_samples, iter_manifest, pixel_hash, radiograph_to_dicom

SAMPLES = REPO_ROOT / "sample_studies"


def test_committed_samples_regenerate_exactly(tmp_path: Path) -> None:
    committed = json.loads((SAMPLES / "manifest.json").read_text())
    fresh = generate_samples(tmp_path, committed["n"], committed["seed"], committed["kinds"])
    assert json.loads(json.dumps(fresh["studies"])) == committed["studies"]  # tuples become lists in JSON


@pytest.mark.parametrize("study", list(iter_manifest(SAMPLES)), ids=lambda s: s["folder"])
def test_committed_files_match_their_manifest(study: dict) -> None:
    files = sorted((SAMPLES / study["folder"]).glob("*.dcm"))
    datasets = [dcmread(f) for f in files]
    assert len(datasets) == study["instances"]
    assert pixel_hash(datasets) == study["pixel_sha256"]
    assert {str(ds.StudyInstanceUID) for ds in datasets} == {study["study_uid"]}
    for finding in study["findings"]:
        assert finding["sop_instance_uids"] and set(finding["sop_instance_uids"]) <= {str(ds.SOPInstanceUID) for ds in datasets}


def test_each_kind_with_and_without_a_finding() -> None:
    seen = {(s["kind"], s["present"]) for s in iter_manifest(SAMPLES)}
    covered = {(k, p) for k in ("head_ct", "chest_ct", "chest_xr", "extremity_xr") for p in (False, True)}
    assert seen == covered | {("abdomen_ct", False)}  # a body part no detector covers


def test_bad_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='"kinds"'):
        generate_samples(tmp_path, 1, 1, ["mri"])


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(
    "make", [lambda: chest_radiograph(2, nodule=True), lambda: extremity_radiograph(2, bone="femur", fracture="spiral")]
)
def test_radiograph_to_dicom_round_trips_through_load_radiograph(tmp_path: Path, photometric: str, make) -> None:
    p = make()
    ds = radiograph_to_dicom(p, photometric=photometric)
    assert ds.PhotometricInterpretation == photometric
    assert ds.BodyPartExamined == p.body_part
    assert ds.StudyDescription.startswith("XR ")
    path = tmp_path / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = load_radiograph(path)
    assert back.image.shape == p.image.shape
    assert np.abs(back.image - p.image).max() <= 2 / 4095
    assert back.pixel_spacing_mm == pytest.approx((p.pixel_spacing_mm, p.pixel_spacing_mm))


def test_radiograph_to_dicom_descriptions() -> None:
    assert radiograph_to_dicom(chest_radiograph(0)).StudyDescription == "XR CHEST PA"
    leg = radiograph_to_dicom(extremity_radiograph(0, bone="tibia_fibula"), modality="CR")
    assert (leg.StudyDescription, leg.BodyPartExamined, leg.Modality) == ("XR TIBIA FIBULA 2V", "LEG", "CR")
    assert radiograph_to_dicom(extremity_radiograph(0, bone="radius_ulna")).BodyPartExamined == "FOREARM"
