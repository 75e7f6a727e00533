"""Calibration in the evaluation report: reliability bins, expected calibration error, the diagram; site operating points."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors.evaluation import StudyOutcome, evaluate, expected_calibration_error, reliability_bins


def test_ece_on_a_hand_made_example() -> None:
    # Bin [0.1, 0.2): p 0.1, 0.1, 0.1, 0.1 with 1 positive -> |0.25 - 0.1| = 0.15, weight 4/10.
    # Bin [0.9, 1.0]: p 0.9 x5 and 1.0 with 3 positive -> |0.5 - 0.9166...| = 0.41666..., weight 6/10.
    labels = [True, False, False, False] + [True, True, True, False, False, False]
    probabilities = [0.1] * 4 + [0.9] * 5 + [1.0]
    bins = reliability_bins(labels, probabilities, n_bins=10)
    assert len(bins) == 10 and sum(b.n for b in bins) == 10
    low, high = bins[1], bins[9]
    assert (low.n, low.positives, low.mean_predicted, low.observed) == (4, 1, pytest.approx(0.1), 0.25)
    assert (high.n, high.positives, high.observed) == (6, 3, 0.5)  # 1.0 falls in the last bin, not off the edge
    assert high.mean_predicted == pytest.approx(5.5 / 6)
    assert expected_calibration_error(bins) == pytest.approx(0.4 * 0.15 + 0.6 * (5.5 / 6 - 0.5))
    assert all(b.n == 0 and b.mean_predicted is None and b.observed is None for b in bins[2:9])


def test_ece_is_zero_when_calibrated_and_none_without_studies() -> None:
    labels = [True, False, True, False]
    assert expected_calibration_error(reliability_bins(labels, [0.55] * 4, n_bins=2)) == pytest.approx(0.05)
    assert expected_calibration_error(reliability_bins([True, False], [0.5, 0.5], n_bins=4)) == 0.0
    assert expected_calibration_error(reliability_bins([], [])) is None
    with pytest.raises(ValueError, match='"probabilities" must lie in'):
        reliability_bins([True], [1.5])


def test_report_carries_ece_and_writes_the_reliability_diagram(tmp_path: Path) -> None:
    from detectors.evaluation import format_reports, reports_as_json

    outcomes = [
        StudyOutcome(kind="bleed-ct", study_folder=str(i), label=i % 2 == 0, probability=p, urgent=p >= 0.5, operating_point=0.5)
        for i, p in enumerate([0.95, 0.9, 0.8, 0.2, 0.7, 0.1])
    ]
    [report] = evaluate(outcomes, tmp_path, n_boot=50)
    assert report.ece == pytest.approx(
        expected_calibration_error(reliability_bins([o.label for o in outcomes], [o.probability for o in outcomes]))
    )
    doc = reports_as_json([report])["detectors"][0]["calibration"]
    assert doc["expected_calibration_error"] == report.ece and len(doc["bins"]) == 10
    assert "ECE" in format_reports([report]).splitlines()[0]
    png = tmp_path / "reliability-bleed-ct.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_plot_reliability_checks_its_bins(tmp_path: Path) -> None:
    from detectors.plots import plot_reliability

    with pytest.raises(ValueError, match='"bins" item 0'):
        plot_reliability(tmp_path / "r.png", [(0.5, 0.2, 1, 0.3, 0.0)])
    path = plot_reliability(tmp_path / "r.png", [(0.0, 0.5, 0, None, None), (0.5, 1.0, 3, 0.8, 2 / 3)], ece=0.13, footer="test footer")
    assert path.stat().st_size > 1000


def test_site_operating_points_replace_the_card_threshold_not_the_model(tmp_path: Path) -> None:
    from detectors.registry import OperatingPointError, load_detectors
    from tests.triage.detector_cards import write_card

    card = write_card("fracture-xr", tmp_path)
    plain = next(iter(load_detectors([card], shipped=False)))
    site = next(iter(load_detectors([card], shipped=False, operating_points={"fracture-xr": 0.25})))
    assert (plain.spec.operating_point, site.spec.operating_point) == (0.5, 0.25)
    assert site.identity == plain.identity  # same weights, same SHA-256
    assert site.spec.platt_a == plain.spec.platt_a and site.spec.region_threshold == plain.spec.region_threshold
    with pytest.raises(OperatingPointError, match=r"no loaded detector is named 'bleed-ct' \(loaded: fracture-xr\)"):
        load_detectors([card], shipped=False, operating_points={"bleed-ct": 0.3})
    with pytest.raises(OperatingPointError, match=r"must be a probability in \[0, 1\], got 1.5"):
        load_detectors([card], shipped=False, operating_points={"fracture-xr": 1.5})
