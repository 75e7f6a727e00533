"""Detector metrics on small cases worked out by hand, plus brute-force cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.metrics import (
    FrocCase,
    auc,
    bootstrap_auc_ci,
    box_iou,
    boxes_overlap,
    confusion,
    confusion_at,
    froc,
    operating_point_for_sensitivity,
    region_hits_lesion,
    roc_curve,
    sensitivity_specificity,
    wilson_interval,
)


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels.astype(bool)][:, None]
    neg = scores[~labels.astype(bool)][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


# --------------------------------------------------------------------------- ROC / AUC


def test_roc_curve_hand_example_with_a_tie() -> None:
    # Scores 0.9 are tied between a positive and a negative: one diagonal step.
    fpr, tpr, thresholds = roc_curve([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0.5, 0.5, 1])


def test_auc_counts_ties_as_half() -> None:
    # Pairs: (0.9 vs 0.9) = 1/2, (0.9 vs 0.1) = 1, (0.5 vs 0.9) = 0, (0.5 vs 0.1) = 1.
    assert auc([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1]) == pytest.approx(2.5 / 4)
    assert auc([True, False], [0.3, 0.3]) == 0.5
    assert auc([1, 1, 0, 0, 0], [0.2] * 5) == 0.5


def test_auc_perfect_and_reversed() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auc_matches_brute_force_and_trapezoid() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        labels = rng.integers(0, 2, 25)
        labels[:2] = (0, 1)
        scores = rng.integers(0, 4, 25).astype(float)  # many ties
        fpr, tpr, _ = roc_curve(labels, scores)
        assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)
        assert np.trapezoid(tpr, fpr) == pytest.approx(brute_auc(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "scores", "argument"),
    [
        ([1, 1], [0.1, 0.2], "labels"),  # one class
        ([1, 0, 2], [0.1, 0.2, 0.3], "labels"),
        ([1, 0], [0.1], "scores"),
        ([1, 0], [0.1, math.nan], "scores"),
        ([[1, 0]], [[0.1, 0.2]], "labels"),
    ],
)
def test_auc_arguments_are_checked(labels: list, scores: list, argument: str) -> None:
    with pytest.raises(ValueError, match=f'Argument "{argument}"'):
        auc(labels, scores)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 2 == 0
        return labels, rng.normal(size=n) + 1.0 * labels

    small, large = sample(40), sample(1000)
    widths = []
    for labels, scores in (small, large):
        low, high = bootstrap_auc_ci(labels, scores, n_boot=500, seed=3)
        assert low <= auc(labels, scores) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    # Reproducible for a seed.
    assert bootstrap_auc_ci(*small, n_boot=200, seed=5) == bootstrap_auc_ci(*small, n_boot=200, seed=5)


def test_bootstrap_matches_naive_resampling() -> None:
    # The count-weighted vectorised AUC equals the AUC of the explicit resample.
    from detectors import metrics

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 30).astype(bool)
    labels[:2] = (False, True)
    scores = rng.integers(0, 5, 30).astype(float)
    low, high = bootstrap_auc_ci(labels, scores, n_boot=300, seed=7)
    replay = np.random.default_rng(7)
    pos, neg = scores[labels], np.sort(scores[~labels])
    pos_counts = metrics._multinomial_counts(replay, 300, pos.size)
    neg_counts = metrics._multinomial_counts(replay, 300, neg.size)
    naive = []
    for b in range(300):
        p, n = np.repeat(pos, pos_counts[b]), np.repeat(neg, neg_counts[b])
        naive.append(brute_auc(np.r_[np.ones(p.size), np.zeros(n.size)], np.r_[p, n]))
    assert (low, high) == pytest.approx(tuple(np.quantile(naive, [0.025, 0.975])))


def test_bootstrap_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match='Argument "n_boot"'):
        bootstrap_auc_ci([0, 1], [0.1, 0.2], n_boot=0)
    with pytest.raises(ValueError, match='Argument "level"'):
        bootstrap_auc_ci([0, 1], [0.1, 0.2], level=1.0)


# --------------------------------------------------------------------------- operating points


def test_wilson_known_values() -> None:
    # Newcombe (1998) / standard tables: 95/100 -> 0.8882 .. 0.9785.
    assert wilson_interval(95, 100) == pytest.approx((0.8882, 0.9785), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match='Argument "n"'):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match='Argument "k"'):
        wilson_interval(11, 10)


def test_sensitivity_specificity_uses_greater_or_equal() -> None:
    labels = [1, 1, 1, 0, 0]
    scores = [0.9, 0.5, 0.2, 0.5, 0.1]
    # At 0.5: positives 0.9, 0.5 called positive (2/3); negatives: 0.1 below (1/2).
    assert sensitivity_specificity(labels, scores, 0.5) == pytest.approx((2 / 3, 1 / 2))
    c = confusion_at(labels, scores, 0.5)
    assert (c.tp, c.fn, c.tn, c.fp) == (2, 1, 1, 1)
    assert c.sensitivity_ci == wilson_interval(2, 3)
    assert c.specificity_ci == wilson_interval(1, 2)
    sens, spec = sensitivity_specificity([0, 0], [0.1, 0.9], 0.5)
    assert math.isnan(sens) and spec == 0.5
    assert confusion([1, 0], [True, True]).specificity == 0.0
    with pytest.raises(ValueError, match='Argument "predicted"'):
        confusion([1, 0], [1, 0, 1])


def test_operating_point_hand_example() -> None:
    # Positives scored 0..9: 70% sensitivity needs the top 7 (9..3), so 3.
    labels = [1] * 10 + [0]
    scores = [*range(10), 5]
    assert operating_point_for_sensitivity(labels, scores, 0.7) == 3.0
    assert operating_point_for_sensitivity(labels, scores, 1.0) == 0.0
    assert operating_point_for_sensitivity(labels, scores, 0.05) == 9.0


def test_operating_point_is_the_largest_reaching_target() -> None:
    rng = np.random.default_rng(4)
    for _ in range(40):
        n = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, n).astype(bool)
        labels[0] = True
        scores = rng.integers(0, 20, n) / 20.0
        target = float(rng.choice([0.5, 0.7, 0.8, 0.9, 0.95, 1.0]))
        t = operating_point_for_sensitivity(labels, scores, target)
        assert sensitivity_specificity(labels, scores, t)[0] >= target
        above = np.nextafter(t, np.inf)
        assert sensitivity_specificity(labels, scores, above)[0] < target


def test_operating_point_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match='Argument "target"'):
        operating_point_for_sensitivity([1, 0], [0.5, 0.1], 0.0)
    with pytest.raises(ValueError, match='Argument "labels"'):
        operating_point_for_sensitivity([0, 0], [0.5, 0.1])


# --------------------------------------------------------------------------- FROC


def test_froc_hand_example_with_double_hit_and_false_positive() -> None:
    cases = [
        # Lesion 0 hit twice (0.9, 0.6): counted once at 0.9, the 0.6 is
        # neither TP nor FP. One FP at 0.8. Lesion 1 hit at 0.3.
        FrocCase(2, [(0.9, 0), (0.6, 0), (0.8, None), (0.3, 1)]),
        FrocCase(0, [(0.7, None)]),  # a normal scan with one FP
    ]
    result = froc(cases)
    np.testing.assert_array_equal(result.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.3])
    np.testing.assert_allclose(result.sensitivities, [0, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.avg_fps, [0, 0, 0.5, 1.0, 1.0])
    assert result.sensitivities_at_rates == pytest.approx((0.5, 0.5, 0.5, 1, 1, 1, 1))
    assert result.sensitivity_at_fp(1.0) == 1.0
    assert result.sensitivity_at_fp(0.99) == 0.5
    assert result.cpm == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)
    assert (result.n_scans, result.n_lesions) == (2, 2)


def test_froc_missed_lesion_caps_sensitivity() -> None:
    result = froc([FrocCase(2, [(0.5, 0)]), FrocCase(1, [])], fp_rates=(1.0,))
    assert result.sensitivities_at_rates == (pytest.approx(1 / 3),)


def test_froc_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match='Argument "candidates"'):
        FrocCase(1, [(0.5, 1)])
    with pytest.raises(ValueError, match='Argument "candidates"'):
        FrocCase(1, [(math.nan, None)])
    with pytest.raises(ValueError, match='Argument "n_lesions"'):
        FrocCase(-1)
    with pytest.raises(ValueError, match='Argument "cases"'):
        froc([FrocCase(0, [(0.5, None)])])
    with pytest.raises(ValueError, match='Argument "cases"'):
        froc([])


# --------------------------------------------------------------------------- localisation


def test_box_iou_and_overlap_are_half_open() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    # Sharing an edge is not overlapping: row 10 is outside the first box.
    assert not boxes_overlap((0, 0, 10, 10), (10, 0, 20, 10))
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert boxes_overlap((0, 0, 10, 10), (9, 9, 20, 20))
    with pytest.raises(ValueError, match='Argument "a"'):
        box_iou((10, 0, 0, 10), (0, 0, 1, 1))


def test_region_hits_lesion_needs_slices_and_pixels() -> None:
    lesion_box, lesion_slices = (100, 100, 120, 120), (10, 14)
    assert region_hits_lesion((110, 110, 130, 130), (14, 14), lesion_box, lesion_slices)
    assert not region_hits_lesion((110, 110, 130, 130), (15, 18), lesion_box, lesion_slices)
    assert not region_hits_lesion((120, 100, 130, 120), (12, 12), lesion_box, lesion_slices)
    # IoU of (110..130)^2 against (100..120)^2 is 100 / 700.
    assert region_hits_lesion((110, 110, 130, 130), (12, 12), lesion_box, lesion_slices, min_iou=0.14)
    assert not region_hits_lesion((110, 110, 130, 130), (12, 12), lesion_box, lesion_slices, min_iou=0.15)
    with pytest.raises(ValueError, match='Argument "region_slices"'):
        region_hits_lesion((0, 0, 1, 1), (3, 2), lesion_box, lesion_slices)
