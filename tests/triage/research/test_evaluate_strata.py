"""Stratified evaluation by CT acquisition, from a manifest written with --acquisition varied."""

from __future__ import annotations

import json
from pathlib import Path

from detectors.evaluation import StudyOutcome
from triage.research.evaluate import acquisition_strata


def _outcome(folder: str, label: bool) -> StudyOutcome:
    return StudyOutcome(
        kind="bleed-ct", study_folder=folder, label=label, probability=0.9 if label else 0.1, urgent=label, operating_point=0.5
    )


def test_outcomes_are_grouped_by_matrix_and_slice_thickness(tmp_path: Path) -> None:
    studies = [
        {"folder": "00_head_ct", "acquisition": {"matrix": 512, "slice_thickness_mm": 0.625}},
        {"folder": "01_head_ct", "acquisition": {"matrix": 256, "slice_thickness_mm": 5.0}},
        {"folder": "02_head_ct", "acquisition": {"matrix": 512, "slice_thickness_mm": 2.5}},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"studies": studies}))
    groups = acquisition_strata(tmp_path, [_outcome("00_head_ct", True), _outcome("01_head_ct", False), _outcome("02_head_ct", False)])
    assert {k: [o.study_folder for o in v] for k, v in groups.items()} == {
        "matrix 256": ["01_head_ct"],
        "matrix 512": ["00_head_ct", "02_head_ct"],
        "slices <= 1.25 mm": ["00_head_ct"],
        "slices > 1.25 mm": ["01_head_ct", "02_head_ct"],
    }


def test_a_fixed_acquisition_manifest_has_no_strata(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"studies": [{"folder": "00_head_ct"}]}))
    assert acquisition_strata(tmp_path, [_outcome("00_head_ct", True)]) == {}


def test_lesions_are_counted_by_origin_and_size(tmp_path: Path) -> None:
    """On a real scan with findings of its own, the inserted nodule is counted per lesion, apart from the rest."""
    from triage.research.evaluate import lesions_found

    def finding(box: list[int], origin: str, size: float, subtype: str = "nodule") -> dict:
        return {"kind": "nodule", "subtype": subtype, "origin": origin, "box": box, "slices": [0, 0], "size_mm": size}

    studies = [
        {
            "folder": "00_chest_xr",
            "findings": [finding([10, 10, 30, 30], "inserted", 14.0), finding([100, 100, 160, 160], "read by eye", 40.0, "mass")],
        },
        {
            "folder": "01_chest_xr",
            "findings": [finding([50, 50, 58, 58], "inserted", 6.0), finding([100, 100, 160, 160], "read by eye", 40.0, "mass")],
        },
        {"folder": "02_chest_xr", "findings": [finding([100, 100, 160, 160], "read by eye", 40.0, "mass")]},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"studies": studies}))

    def outcome(folder: str, regions: list[tuple[int, int, int, int]]) -> StudyOutcome:
        truth = [(f["box"], f["slices"]) for s in studies if s["folder"] == folder for f in s["findings"]]
        return StudyOutcome(
            kind="nodule-xr",
            study_folder=folder,
            label=True,
            probability=0.9,
            urgent=True,
            operating_point=0.5,
            regions=[(r, (0, 0), 0.9) for r in regions],
            truth=truth,
        )

    found = lesions_found(
        tmp_path,
        [
            outcome("00_chest_xr", [(12, 12, 20, 20), (120, 120, 140, 140)]),  # both found
            outcome("01_chest_xr", [(120, 120, 140, 140)]),  # the mass, not the inserted nodule
            outcome("02_chest_xr", []),
        ],
    )
    assert found == {"nodule-xr": {"inserted": (1, 2), "inserted < 10 mm": (0, 1), "inserted >= 10 mm": (1, 1), "mass read by eye": (2, 3)}}
