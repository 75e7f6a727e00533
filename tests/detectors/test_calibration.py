"""Platt scaling: recovers a known logistic model, stays finite on separable data."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.calibration import fit_platt
from detectors.postprocess import platt


def test_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(0)
    a_true, b_true = 1.7, -0.6
    raw = rng.normal(0.0, 2.0, 4000)
    labels = rng.random(4000) < platt(raw, a_true, b_true)
    a, b = fit_platt(raw, labels)
    assert a == pytest.approx(a_true, abs=0.2)
    assert b == pytest.approx(b_true, abs=0.2)


def test_perfectly_separated_set_gives_finite_modest_values() -> None:
    raw = np.array([-3.0, -2.0, -1.5, -1.0, 1.0, 1.5, 2.0, 3.0])
    labels = raw > 0
    a, b = fit_platt(raw, labels)
    assert np.isfinite([a, b]).all()
    assert 0 < a < 20
    p = np.asarray(platt(raw, a, b))
    assert (p[labels] > 0.5).all() and (p[~labels] < 0.5).all()
    assert p.max() < 1.0 and p.min() > 0.0  # smoothed targets: never certain


def test_separated_set_with_huge_logits_stays_finite() -> None:
    raw = np.array([-60.0, -40.0, 35.0, 50.0])
    a, b = fit_platt(raw, raw > 0)
    assert np.isfinite([a, b]).all()


@pytest.mark.parametrize("labels", [[True, True, True], [False, False, False]])
def test_one_class_raises(labels: list[bool]) -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(np.array([0.1, 0.2, 0.3]), np.array(labels))


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match='"raw" and "labels"'):
        fit_platt(np.array([0.1, 0.2]), np.array([True, False, True]))


def test_operating_point_sits_mid_gap_and_keeps_the_target_sensitivity() -> None:
    from detectors.calibration import operating_point_in_gap
    from detectors.metrics import sensitivity_specificity

    labels = np.array([False] * 4 + [True] * 4)
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.95])
    op = operating_point_in_gap(labels, p, 0.95)
    assert 0.3 < op < 0.7  # below the weakest positive, above the strongest negative
    assert op == pytest.approx(0.5)  # logits -0.85 and 0.85: the middle is 0
    assert sensitivity_specificity(labels, p, op) == (1.0, 1.0)
    # Overlap: the threshold keeps 3 of 4 positives (0.75 >= target) and stays above every negative below it.
    p2 = np.array([0.05, 0.1, 0.2, 0.85, 0.3, 0.8, 0.9, 0.95])
    op2 = operating_point_in_gap(labels, p2, 0.75)
    assert 0.2 < op2 < 0.8
    assert sensitivity_specificity(labels, p2, op2)[0] >= 0.75
