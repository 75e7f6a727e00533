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
