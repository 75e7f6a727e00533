"""The committed sample studies are what the documented command generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread

from detectors.phantoms.samples import generate_samples, iter_manifest, pixel_hash
from tests.conftest import REPO_ROOT

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
