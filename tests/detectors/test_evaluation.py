"""The evaluation report end to end on synthetic outcomes, plots included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detectors.evaluation import DetectorReport, StudyOutcome, evaluate, format_reports, reports_as_json, truth_from_findings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LESION = ((100, 100, 120, 120), (10, 14))
ON_LESION = ((105, 105, 115, 115), (12, 12))
ELSEWHERE = ((10, 10, 20, 20), (3, 3))


def outcome(kind: str, i: int, label: bool, p: float, regions=(), truth=(), op: float = 0.5) -> StudyOutcome:
    return StudyOutcome(
        kind=kind,
        study_folder=f"{i:02d}_{kind}",
        label=label,
        probability=p,
        urgent=p >= op,
        operating_point=op,
        regions=list(regions),
        truth=list(truth),
    )


def synthetic_outcomes() -> list[StudyOutcome]:
    rng = np.random.default_rng(0)
    outcomes = []
    # bleed-ct: 20 positives (with a lesion), 20 negatives, informative scores.
    for i in range(40):
        label = i % 2 == 0
        p = float(np.clip(rng.normal(0.7 if label else 0.3, 0.15), 0, 1))
        region = ON_LESION if i % 4 == 0 else ELSEWHERE
        regions = [(*region, p)] if p >= 0.5 else []
        outcomes.append(outcome("bleed-ct", i, label, p, regions=regions, truth=[LESION] if label else []))
    # nodule-ct: hand-made so the localisation numbers are known.
    outcomes += [
        # Urgent positive, its region hits the lesion; a second FP region.
        outcome("nodule-ct", 0, True, 0.9, regions=[(*ON_LESION, 0.9), (*ELSEWHERE, 0.4)], truth=[LESION]),
        # Urgent positive whose only region misses.
        outcome("nodule-ct", 1, True, 0.8, regions=[(*ELSEWHERE, 0.8)], truth=[LESION]),
        # Missed positive (not urgent) whose weak region still hits: counts for lesions, not localisation.
        outcome("nodule-ct", 2, True, 0.2, regions=[(*ON_LESION, 0.2)], truth=[LESION]),
        outcome("nodule-ct", 3, False, 0.6, regions=[(*ELSEWHERE, 0.6)]),
        outcome("nodule-ct", 4, False, 0.1),
    ]
    return outcomes


def test_evaluate_end_to_end_writes_plots_and_json(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    reports = evaluate(synthetic_outcomes(), plots, n_boot=300)
    assert [r.detector for r in reports] == ["bleed-ct", "nodule-ct"]
    bleed, nodule = reports

    assert (bleed.n, bleed.n_positive, bleed.n_negative) == (40, 20, 20)
    assert bleed.auc is not None and bleed.auc > 0.8
    assert bleed.auc_ci is not None and bleed.auc_ci[0] <= bleed.auc <= bleed.auc_ci[1]
    assert bleed.operating_point == 0.5
    assert bleed.tp + bleed.fn == 20 and bleed.tn + bleed.fp == 20
    assert bleed.sensitivity == bleed.tp / 20
    assert bleed.sensitivity_ci is not None and bleed.sensitivity_ci[0] <= bleed.sensitivity <= bleed.sensitivity_ci[1]
    assert bleed.froc is None

    # Nodule: urgent positives are studies 0 and 1; only 0 localises.
    assert (nodule.urgent_positives, nodule.localised) == (2, 1)
    assert nodule.localisation_hit_rate == 0.5
    # Lesions of studies 0 and 2 are hit by some region, study 1's is not.
    assert (nodule.lesions, nodule.lesions_hit) == (3, 2)
    assert nodule.froc is not None
    # FPs: 0.4 (study 0), 0.8 (study 1), 0.6 (study 3) over 5 scans; TPs 0.9 and 0.2.
    assert nodule.froc.sensitivity_at_fp(1.0) == pytest.approx(2 / 3)
    assert nodule.froc.sensitivity_at_fp(0.125) == pytest.approx(1 / 3)

    for name in ("roc.png", "froc-nodule-ct.png"):
        data = (plots / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert not (plots / "froc-bleed-ct.png").exists()

    document = json.loads(json.dumps(reports_as_json(reports), allow_nan=False))
    assert document["disclaimer"] == "synthetic phantoms; not a medical device"
    entry = {d["detector"]: d for d in document["detectors"]}
    assert entry["bleed-ct"]["auc"] == pytest.approx(bleed.auc)
    assert entry["bleed-ct"]["froc"] is None
    assert entry["nodule-ct"]["localisation"]["hit_rate"] == 0.5
    assert entry["nodule-ct"]["froc"]["fp_rates"] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert 0 <= entry["nodule-ct"]["froc"]["cpm"] <= 1

    text = format_reports(reports)
    assert "bleed-ct" in text and "nodule-ct FROC" in text and "CPM" in text
    assert "1/2 0.50" in text  # nodule localisation
    assert text.rstrip().endswith("(synthetic phantoms; not a medical device)")


def test_one_class_gives_auc_none_with_a_note(tmp_path: Path) -> None:
    outcomes = [outcome("fracture-xr", i, False, p) for i, p in enumerate((0.1, 0.7, 0.3))]
    (report,) = evaluate(outcomes, tmp_path)
    assert isinstance(report, DetectorReport)
    assert report.auc is None and report.auc_ci is None
    assert report.sensitivity is None and report.sensitivity_ci is None
    assert report.specificity == pytest.approx(2 / 3)
    assert any("AUC undefined" in note for note in report.notes)
    assert (tmp_path / "roc.png").read_bytes().startswith(PNG_SIGNATURE)
    document = json.loads(json.dumps(reports_as_json([report]), allow_nan=False))
    assert document["detectors"][0]["auc"] is None
    assert "AUC undefined" in format_reports([report])


def test_nodule_detector_without_lesions_has_no_froc() -> None:
    (report,) = evaluate([outcome("nodule-ct", 0, False, 0.7, regions=[(*ELSEWHERE, 0.7)])], n_boot=10)
    assert report.froc is None
    assert any("FROC undefined" in note for note in report.notes)


def test_inconsistent_urgent_flags_and_operating_points_are_noted() -> None:
    outcomes = [
        StudyOutcome("bleed-ct", "a", True, 0.9, False, 0.5),  # urgent disagrees
        StudyOutcome("bleed-ct", "b", False, 0.1, False, 0.4),
    ]
    (report,) = evaluate(outcomes, n_boot=10)
    assert report.operating_point is None
    assert report.tp == 0 and report.fn == 1  # the decision shown is what counts
    assert any("disagrees" in note for note in report.notes)
    assert any("differs" in note for note in report.notes)


def test_study_outcome_validates_and_normalises() -> None:
    o = StudyOutcome("bleed-ct", "x", 1, 0.5, 1, 0.5, regions=[([1, 2, 3, 4], [0, 1], 0.5)], truth=[([1, 2, 3, 4], [0, 0])])
    assert o.regions == (((1, 2, 3, 4), (0, 1), 0.5),) and o.label is True
    with pytest.raises(ValueError, match='Argument "probability"'):
        StudyOutcome("bleed-ct", "x", True, float("nan"), True, 0.5)
    with pytest.raises(ValueError, match='Argument "regions"'):
        StudyOutcome("bleed-ct", "x", True, 0.5, True, 0.5, regions=[((4, 0, 0, 4), (0, 0), 0.5)])
    with pytest.raises(ValueError, match='Argument "outcomes"'):
        evaluate([])


def test_truth_from_manifest_findings() -> None:
    findings = [
        {"kind": "bleed", "slices": [14, 17], "box": [165, 121, 188, 144]},
        {"kind": "nodule", "slices": [1, 2], "box": [0, 0, 5, 5]},
    ]
    assert truth_from_findings(findings, "bleed") == [((165, 121, 188, 144), (14, 17))]
    assert len(truth_from_findings(findings)) == 2


def test_importing_evaluation_does_not_import_matplotlib() -> None:
    code = "import sys, detectors.evaluation; print([m for m in ('matplotlib', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
