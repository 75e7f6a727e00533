"""Stratified evaluation by CT acquisition, from a manifest written with --acquisition varied."""

from __future__ import annotations

import json
from pathlib import Path

from detectors.evaluation import StudyOutcome
from triage.evaluate import acquisition_strata


def _outcome(folder: str, label: bool) -> StudyOutcome:
    return StudyOutcome(kind="bleed-ct", study_folder=folder, label=label, probability=0.9 if label else 0.1,
                        urgent=label, operating_point=0.5)  # fmt: skip


def test_outcomes_are_grouped_by_matrix_and_slice_thickness(tmp_path: Path) -> None:
    studies = [
        {"folder": "00_head_ct", "acquisition": {"matrix": 512, "slice_thickness_mm": 0.625}},
        {"folder": "01_head_ct", "acquisition": {"matrix": 256, "slice_thickness_mm": 5.0}},
        {"folder": "02_head_ct", "acquisition": {"matrix": 512, "slice_thickness_mm": 2.5}},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"studies": studies}))
    groups = acquisition_strata(tmp_path, [_outcome("00_head_ct", True), _outcome("01_head_ct", False),
                                           _outcome("02_head_ct", False)])  # fmt: skip
    assert {k: [o.study_folder for o in v] for k, v in groups.items()} == {
        "matrix 256": ["01_head_ct"],
        "matrix 512": ["00_head_ct", "02_head_ct"],
        "slices <= 1.25 mm": ["00_head_ct"],
        "slices > 1.25 mm": ["01_head_ct", "02_head_ct"],
    }


def test_a_fixed_acquisition_manifest_has_no_strata(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"studies": [{"folder": "00_head_ct"}]}))
    assert acquisition_strata(tmp_path, [_outcome("00_head_ct", True)]) == {}
