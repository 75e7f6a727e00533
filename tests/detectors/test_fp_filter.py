"""The logistic false-positive filter: fitting, its card table, and the two-stage card round trip."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.features import CT_FEATURES
from detectors.fp_filter import LogisticFilter, fit_filter
from detectors.registry import MODELS_DIR
from detectors.spec import CardError, load_card, parse_card


def test_fit_separates_what_a_feature_separates() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.2
    x = np.column_stack([rng.normal(size=400) + 3.0 * y, rng.normal(size=400)])  # only the first feature matters
    filt = fit_filter(x, y, ("a", "b"))
    assert filt.weights[0] > 1.0 and abs(filt.weights[1]) < 0.3
    scores = filt.logits(x)
    assert scores[y].mean() > scores[~y].mean() + 2
    # Class balance: the mean logit of each class sits on its side of zero.
    assert scores[y].mean() > 0 > scores[~y].mean()


def test_fit_needs_both_classes_and_the_right_shape() -> None:
    with pytest.raises(ValueError, match="positive and negative"):
        fit_filter(np.zeros((3, 1)), np.zeros(3, bool), ("a",))
    with pytest.raises(ValueError, match='"x"'):
        fit_filter(np.zeros((3, 2)), np.array([True, False, True]), ("a",))


def test_constant_features_do_not_break_the_fit() -> None:
    x = np.column_stack([np.r_[np.zeros(5), np.ones(5)], np.full(10, 7.0)])
    filt = fit_filter(x, np.r_[np.zeros(5, bool), np.ones(5, bool)], ("a", "b"))
    assert np.isfinite(filt.logits(x)).all()


def test_table_round_trip() -> None:
    filt = LogisticFilter(("peak_logit", "hu_mean"), (1.5, -0.25), 0.1, (2.0, 60.0), (1.0, 10.0))
    again = LogisticFilter.from_table(filt.as_table())
    x = np.array([[3.0, 70.0], [0.0, 40.0]])
    assert np.allclose(again.logits(x), filt.logits(x))
    with pytest.raises(ValueError, match='"scale"'):
        LogisticFilter(("a",), (1.0,), 0.0, (0.0,), (0.0,))


def test_card_with_anatomy_and_filter_round_trips(tmp_path) -> None:
    spec = load_card(MODELS_DIR / "bleed-ct.toml")
    n = len(CT_FEATURES)
    filt = LogisticFilter(CT_FEATURES, tuple(0.1 * i for i in range(n)), -0.5, (0.0,) * n, (1.0,) * n)
    from dataclasses import replace

    two_stage = replace(spec, anatomy="intracranial", filter=filt, candidate_logit=-2.0)
    card = tmp_path / "card.toml"
    card.write_text(two_stage.to_toml())
    again = load_card(card)
    assert again.anatomy == "intracranial" and again.candidate_logit == -2.0
    assert again.filter == filt


def test_bad_anatomy_and_filter_are_named() -> None:
    base = {
        "name": "x",
        "kind": "bleed",
        "family": "CT",
        "weights": "x.pt",
        "input": {"spacing_mm": 1.0, "height": 32, "width": 32, "windows": [[40, 80]]},
    }
    with pytest.raises(CardError, match="anatomy.mask"):
        parse_card(base | {"anatomy": {"mask": "kidney"}})
    with pytest.raises(CardError, match="filter.bias is missing"):
        parse_card(base | {"filter": {"features": ["peak_logit"], "weights": [1.0], "mean": [0.0], "scale": [1.0]}})
    with pytest.raises(CardError, match="unknown names"):
        parse_card(base | {"filter": {"features": ["colour"], "weights": [1.0], "bias": 0.0, "mean": [0.0], "scale": [1.0]}})


def test_operating_point_keeps_real_normals_below_it() -> None:
    from detectors.train_filter import RAISE_MARGIN_LOGIT, operating_point

    labels = np.array([True, True, True, False, False, False, True, False])
    probs = np.array([0.95, 0.90, 0.40, 0.30, 0.20, 0.60, 0.97, 0.10])
    real = np.array([True, True, True, True, True, True, False, False])
    basis = real
    # The sensitivity rule alone would sit at or below 0.40 and flag the real normal at 0.60: raised above it.
    op, rule = operating_point(labels, probs, basis, real, 0.95)
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    assert op > 0.60 and logit(op) == pytest.approx(logit(0.60) + RAISE_MARGIN_LOGIT)
    assert rule.startswith("raised")
    # Without that normal, the sensitivity rule stands.
    keep = np.arange(len(labels)) != 5
    op, rule = operating_point(labels[keep], probs[keep], basis[keep], real[keep], 0.95)
    assert op <= 0.40 and rule.startswith("sensitivity")


@pytest.mark.parametrize(
    ("version", "first_filter", "bumped"),
    [("1.0.0", True, "2.0.0"), ("2.0.0", False, "2.1.0"), ("2.1.0", False, "2.2.0"), ("2", False, "2.1.0"), ("site", True, "2.0.0")],
)
def test_a_refit_changes_the_version_a_finding_records(version: str, first_filter: bool, bumped: str) -> None:
    # Findings and the audit name the model by name, version and SHA-256; a refit filter keeps the
    # weights (same SHA-256) but changes what the detector says, so the version must move.
    from detectors.train_filter import bump_version

    assert bump_version(version, major=first_filter) == bumped


def test_an_inserted_lesion_is_found_per_lesion_on_a_scan_with_findings_of_its_own() -> None:
    """On the chest CR every study is positive (its own masses): the card counts the inserted nodule itself."""
    from detectors.train_filter import Scored, real_figures

    filt = LogisticFilter(("x",), (1.0,), 0.0, (0.0,), (1.0,))
    found = Scored(
        np.array([[3.0], [-2.0]]), np.array([True, False]), True, "real", {"diameter_mm": 14.0}, inserted=True, own_findings=True
    )
    # The study scores high (a candidate elsewhere, on a mass), but the inserted nodule's own candidate does not.
    missed = Scored(
        np.array([[-3.0], [4.0]]), np.array([True, False]), True, "real", {"diameter_mm": 12.0}, inserted=True, own_findings=True
    )
    figures = real_figures([found, missed], np.array([0.95, 0.98]), 0.5, filt)
    assert figures["inserted_found"] == 0.5 and figures["inserted_found_ge_10mm"] == 0.5
    assert figures["own_findings_cases"] == 2 and figures["own_findings_flagged"] == 2
    assert figures["positive_cases"] == 0 and "sensitivity" not in figures  # no study-level figure here
    assert figures["top_region_on_lesion"] == 0.5


def test_the_normal_anatomy_of_a_scan_with_findings_of_its_own_keeps_the_operating_point_above_it() -> None:
    from detectors.train_filter import RAISE_MARGIN_LOGIT, operating_point

    labels = np.array([True, True, False, False])
    probs = np.array([0.9, 0.8, 0.3, 0.2])
    real = np.zeros(4, bool)
    op, rule = operating_point(labels, probs, np.ones(4, bool), real, 0.95)
    assert op <= 0.8 and rule.startswith("sensitivity")
    # A real chest CR whose strongest candidate off its masses scores 0.85: no region may show there.
    op, rule = operating_point(labels, probs, np.ones(4, bool), real, 0.95, np.array([0.85, 0.4]))
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    assert logit(op) == pytest.approx(logit(0.85) + RAISE_MARGIN_LOGIT) and rule.startswith("raised")
