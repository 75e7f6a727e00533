"""Evaluation metrics for detectors: ROC/AUC, bootstrap intervals, operating points, FROC, localisation.

Pure NumPy (and the standard library): no torch, no matplotlib, so that
``triage evaluate`` and the calibration code can import it cheaply.

Conventions used throughout:

- ``labels`` are truth per study (``True``/``1`` = finding present), ``scores``
  the detector's study-level probability; a study is called positive when
  ``score >= threshold``.
- Boxes are ``(row0, col0, row1, col1)`` in pixels, half-open; slice ranges are
  ``(first, last)``, inclusive (as in :class:`detectors.base.Region` and the
  sample manifest).
- Invalid arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

Box = tuple[int, int, int, int]
SliceRange = tuple[int, int]

# LUNA16's FROC operating points: 1/8 .. 8 false positives per scan. The CPM
# (competition performance metric) is the mean sensitivity at these seven.
LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# --------------------------------------------------------------------------- validation


def _bools(name: str, values: ArrayLike) -> np.ndarray:
    """Check and normalise a 1-D array of booleans or 0/1 values."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f'Argument "{name}" must be one-dimensional, got shape {v.shape}')
    if v.dtype != np.bool_:
        # Accept 0/1 (ints or floats) but nothing else: a label of 2 or 0.7 is
        # a bug upstream, not something to round silently.
        if v.size and not np.isin(v, (0, 1)).all():
            raise ValueError(f'Argument "{name}" must hold only booleans or 0/1')
        v = v.astype(bool)
    return v


def _labels_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check and normalise ``labels`` (-> bool) and ``scores`` (-> float64), both 1-D, same length."""
    y = _bools("labels", labels)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f'Argument "scores" must be one-dimensional, got shape {s.shape}')
    if y.shape != s.shape:
        raise ValueError(f'Argument "scores" must have one score per label ({y.shape[0]}), got {s.shape[0]}')
    if not np.isfinite(s).all():
        raise ValueError('Argument "scores" must be finite (no NaN or infinity)')
    return y, s


def _both_classes(y: np.ndarray) -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f'Argument "labels" must contain both classes, got {n_pos} positive and {n_neg} negative')
    return n_pos, n_neg


# --------------------------------------------------------------------------- ROC and AUC


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The empirical ROC curve, one point per distinct score.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n,)
        Truth per study; both classes must be present.
    scores : array_like of float, shape (n,)
        Study-level scores; larger means more likely positive.

    Returns
    -------
    fpr, tpr, thresholds : ndarray, shape (k + 1,)
        ``thresholds`` are the ``k`` distinct scores in decreasing order,
        preceded by ``+inf`` so the curve starts at (0, 0); ``fpr[i]`` and
        ``tpr[i]`` are the rates when ``score >= thresholds[i]`` is called
        positive. The last point is (1, 1).
    """
    y, s = _labels_scores(labels, scores)
    n_pos, n_neg = _both_classes(y)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: ties move the curve
    # diagonally in one step, which is what makes the trapezoid area equal
    # the Mann-Whitney statistic with ties counted 1/2.
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = (last_of_run + 1) - tp
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start and end (exclusive) of each run of equal values in sorted order.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], sorted_values.size]
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve as the Mann-Whitney probability.

    ``P(score_pos > score_neg) + 0.5 * P(score_pos == score_neg)`` over all
    positive-negative pairs, computed exactly from mid-ranks in O(n log n).

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n,)
        Truth per study; both classes must be present.
    scores : array_like of float, shape (n,)
        Study-level scores.

    Returns
    -------
    float
        In [0, 1]; 0.5 for uninformative (e.g. constant) scores.
    """
    y, s = _labels_scores(labels, scores)
    n_pos, n_neg = _both_classes(y)
    rank_sum = _midranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(labels: ArrayLike, scores: ArrayLike, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC.

    Studies are resampled with replacement within each class (stratified), so
    every resample keeps the original numbers of positives and negatives and
    its AUC is always defined.

    Parameters
    ----------
    labels, scores : array_like, shape (n,)
        As for :func:`auc`; both classes must be present.
    n_boot : int
        Number of bootstrap resamples (>= 1).
    seed : int
        Seed of the NumPy generator, for reproducible reports.
    level : float
        Two-sided confidence level in (0, 1).

    Returns
    -------
    low, high : float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
        resampled AUCs.
    """
    y, s = _labels_scores(labels, scores)
    n_pos, n_neg = _both_classes(y)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f'Argument "n_boot" must be a positive integer, got {n_boot!r}')
    if not 0.0 < level < 1.0:
        raise ValueError(f'Argument "level" must be in (0, 1), got {level!r}')
    rng = np.random.default_rng(seed)
    pos = s[y]
    neg = np.sort(s[~y])
    # Resample as counts (how often each original study is drawn) rather than
    # as index arrays: the AUC of a resample is then a weighted sum that needs
    # no per-resample sort. bincount over offset indices builds all rows at once.
    pos_counts = _multinomial_counts(rng, n_boot, n_pos)  # (n_boot, n_pos)
    neg_counts = _multinomial_counts(rng, n_boot, n_neg)  # (n_boot, n_neg), in sorted-neg order
    # cum[b, j] = how many resampled negatives are among the j smallest originals.
    cum = np.zeros((n_boot, n_neg + 1), dtype=np.int64)
    np.cumsum(neg_counts, axis=1, out=cum[:, 1:])
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    not_above = np.searchsorted(neg, pos, side="right")  # ... below or tied
    n_below = cum[:, below]  # (n_boot, n_pos)
    n_tied = cum[:, not_above] - n_below
    wins = (pos_counts * (n_below + 0.5 * n_tied)).sum(axis=1)
    aucs = wins / (n_pos * n_neg)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _multinomial_counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(n_boot, n) draw counts of n items resampled n times with replacement, per row."""
    draws = rng.integers(0, n, size=(n_boot, n))
    draws += np.arange(n_boot)[:, None] * n
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)


# --------------------------------------------------------------------------- operating points


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Preferred to the Wald interval because it stays inside [0, 1] and keeps
    sensible coverage at proportions near 0 or 1 (sensitivities of 0.95+ on a
    few dozen positives are the usual case here).

    Parameters
    ----------
    k : int
        Successes, ``0 <= k <= n``.
    n : int
        Trials, ``n >= 1``.
    level : float
        Two-sided confidence level in (0, 1).

    Returns
    -------
    low, high : float
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f'Argument "n" must be a positive integer, got {n!r}')
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f'Argument "k" must be an integer in [0, n={n}], got {k!r}')
    if not 0.0 < level < 1.0:
        raise ValueError(f'Argument "level" must be in (0, 1), got {level!r}')
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # At k = 0 (k = n) the exact lower (upper) bound is 0 (1); computed, it
    # would be off by rounding.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold, with sensitivity and specificity and their Wilson intervals.

    A rate whose class is absent (no positives, or no negatives) is ``None``.
    """

    tp: int
    fn: int
    tn: int
    fp: int
    level: float = 0.95

    @property
    def sensitivity(self) -> float | None:
        n = self.tp + self.fn
        return self.tp / n if n else None

    @property
    def specificity(self) -> float | None:
        n = self.tn + self.fp
        return self.tn / n if n else None

    @property
    def sensitivity_ci(self) -> tuple[float, float] | None:
        n = self.tp + self.fn
        return wilson_interval(self.tp, n, self.level) if n else None

    @property
    def specificity_ci(self) -> tuple[float, float] | None:
        n = self.tn + self.fp
        return wilson_interval(self.tn, n, self.level) if n else None


def confusion(labels: ArrayLike, predicted: ArrayLike, level: float = 0.95) -> Confusion:
    """Confusion counts of boolean decisions ``predicted`` against ``labels``.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n,)
    predicted : array_like of bool or {0, 1}, shape (n,)
        The decisions actually taken (e.g. each study's ``urgent`` flag).
    level : float
        Confidence level of the Wilson intervals.
    """
    y = _bools("labels", labels)
    p = _bools("predicted", predicted)
    if p.shape != y.shape:
        raise ValueError(f'Argument "predicted" must have one value per label ({y.size}), got {p.size}')
    return Confusion(tp=int((y & p).sum()), fn=int((y & ~p).sum()), tn=int((~y & ~p).sum()), fp=int((~y & p).sum()), level=level)


def confusion_at(labels: ArrayLike, scores: ArrayLike, threshold: float, level: float = 0.95) -> Confusion:
    """Confusion counts when ``score >= threshold`` is called positive (see :func:`confusion`)."""
    y, s = _labels_scores(labels, scores)
    if not math.isfinite(threshold):
        raise ValueError(f'Argument "threshold" must be finite, got {threshold!r}')
    return confusion(y, s >= threshold, level)


def sensitivity_specificity(labels: ArrayLike, scores: ArrayLike, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` is called positive.

    Parameters
    ----------
    labels, scores : array_like, shape (n,)
        As for :func:`auc`.
    threshold : float
        Decision threshold (finite).

    Returns
    -------
    sensitivity, specificity : float
        NaN when the class it is computed on is absent. For counts and Wilson
        intervals use :func:`confusion_at`.
    """
    c = confusion_at(labels, scores, threshold)
    sens, spec = c.sensitivity, c.specificity
    return (math.nan if sens is None else sens), (math.nan if spec is None else spec)


def operating_point_for_sensitivity(labels: ArrayLike, scores: ArrayLike, target: float = 0.95) -> float:
    """The largest threshold whose sensitivity on these data is at least ``target``.

    Used to calibrate a detector's operating point on its validation set: the
    threshold is the ``k``-th highest positive score, where ``k`` is the
    fewest positives that reach the target; any higher threshold would lose
    one of them.

    Parameters
    ----------
    labels, scores : array_like, shape (n,)
        As for :func:`auc`; at least one positive is needed (negatives are not).
    target : float
        Sensitivity to reach, in (0, 1].

    Returns
    -------
    float
        A score of one of the positives.
    """
    y, s = _labels_scores(labels, scores)
    if not 0.0 < target <= 1.0:
        raise ValueError(f'Argument "target" must be in (0, 1], got {target!r}')
    pos = np.sort(s[y])[::-1]
    n_pos = pos.size
    if n_pos == 0:
        raise ValueError('Argument "labels" must contain at least one positive')
    # The smallest k with k / n_pos >= target, decided by the same comparison
    # a caller would use to check it: ceil(target * n) alone can overshoot by
    # one when target * n rounds up (0.7 * 10 = 7.000000000000001).
    k = min(n_pos, math.ceil(target * n_pos))
    while k > 1 and (k - 1) / n_pos >= target:
        k -= 1
    while k / n_pos < target:  # only on rounding down; k <= n_pos since target <= 1
        k += 1
    return float(pos[k - 1])


# --------------------------------------------------------------------------- FROC


@dataclass(frozen=True)
class FrocCase:
    """One scan for FROC: how many true lesions it has, and the detector's candidates.

    Parameters
    ----------
    n_lesions : int
        True lesions in the scan (0 for a normal scan).
    candidates : sequence of (score, lesion index or None)
        Each candidate's score and the index (``0 <= i < n_lesions``) of the
        lesion it hits, or ``None`` for a false positive. Decide hits before
        building the case, e.g. with :func:`region_hits_lesion`.
    """

    n_lesions: int
    candidates: Sequence[tuple[float, int | None]] = ()

    def __post_init__(self) -> None:
        if isinstance(self.n_lesions, bool) or not isinstance(self.n_lesions, (int, np.integer)) or self.n_lesions < 0:
            raise ValueError(f'Argument "n_lesions" must be a non-negative integer, got {self.n_lesions!r}')
        normalised = []
        for i, candidate in enumerate(self.candidates):
            try:
                score, hit = candidate
            except (TypeError, ValueError):
                raise ValueError(
                    f'Argument "candidates" must hold (score, lesion index or None) pairs, item {i} is {candidate!r}'
                ) from None
            if not isinstance(score, (int, float, np.number)) or not math.isfinite(score):
                raise ValueError(f'Argument "candidates" item {i} must have a finite score, got {score!r}')
            if hit is not None and (isinstance(hit, bool) or not isinstance(hit, (int, np.integer)) or not 0 <= hit < self.n_lesions):
                raise ValueError(f'Argument "candidates" item {i} must hit a lesion index in [0, {self.n_lesions}) or None, got {hit!r}')
            normalised.append((float(score), None if hit is None else int(hit)))
        # A tuple keeps the frozen case really immutable (and hashable).
        object.__setattr__(self, "candidates", tuple(normalised))


@dataclass(frozen=True)
class FrocResult:
    """A FROC curve and its summary numbers.

    ``thresholds`` (decreasing, starting at ``+inf``), ``avg_fps`` (false
    positives per scan) and ``sensitivities`` (share of all lesions hit) are
    parallel arrays: one point per distinct candidate score. ``fp_rates`` and
    ``sensitivities_at_rates`` are the requested operating points; ``cpm`` is
    the mean sensitivity at LUNA16's seven rates (1/8 .. 8 FPs per scan).
    """

    thresholds: np.ndarray = field(repr=False)
    avg_fps: np.ndarray = field(repr=False)
    sensitivities: np.ndarray = field(repr=False)
    fp_rates: tuple[float, ...]
    sensitivities_at_rates: tuple[float, ...]
    cpm: float
    n_scans: int
    n_lesions: int

    def sensitivity_at_fp(self, rate: float) -> float:
        """Lesion sensitivity at no more than ``rate`` false positives per scan.

        The best sensitivity among curve points with ``avg_fps <= rate`` (a
        step function, so never interpolated above what a real threshold
        achieves). LUNA16 interpolates linearly instead, which reads slightly
        higher between points.
        """
        if not (isinstance(rate, (int, float, np.number)) and rate >= 0 and math.isfinite(rate)):
            raise ValueError(f'Argument "rate" must be a non-negative finite number, got {rate!r}')
        return _sensitivity_at(self.avg_fps, self.sensitivities, float(rate))


def froc(cases: Sequence[FrocCase], fp_rates: Sequence[float] = LUNA16_FP_RATES) -> FrocResult:
    """Free-response ROC over candidate detections.

    Within each scan a lesion counts once, at its highest-scoring hitting
    candidate; further candidates on a lesion already hit are neither true nor
    false positives (as in LUNA16). Candidates that hit no lesion are false
    positives.

    Parameters
    ----------
    cases : sequence of FrocCase
        One per scan, normal scans included (they contribute false positives
        and to the per-scan average). At least one lesion overall is needed.
    fp_rates : sequence of float
        False positives per scan at which to report sensitivity.

    Returns
    -------
    FrocResult
    """
    cases = list(cases)
    if not cases:
        raise ValueError('Argument "cases" must hold at least one scan')
    for i, case in enumerate(cases):
        if not isinstance(case, FrocCase):
            raise ValueError(f'Argument "cases" must hold FrocCase items, item {i} is {type(case).__name__}')
    rates = tuple(float(r) for r in fp_rates)
    if any(not (math.isfinite(r) and r >= 0) for r in rates):
        raise ValueError(f'Argument "fp_rates" must hold non-negative finite numbers, got {fp_rates!r}')
    n_lesions = sum(case.n_lesions for case in cases)
    if n_lesions == 0:
        raise ValueError('Argument "cases" must contain at least one lesion (FROC sensitivity is undefined)')

    tp_scores: list[float] = []
    fp_scores: list[float] = []
    for case in cases:
        best: dict[int, float] = {}
        for score, hit in case.candidates:
            if hit is None:
                fp_scores.append(score)
            elif score > best.get(hit, -math.inf):
                best[hit] = score
        tp_scores.extend(best.values())

    tp = np.sort(np.asarray(tp_scores, dtype=np.float64))
    fp = np.sort(np.asarray(fp_scores, dtype=np.float64))
    thresholds: np.ndarray = np.r_[np.inf, np.unique(np.r_[tp, fp])[::-1]]
    # Count candidates with score >= t via searchsorted on the ascending arrays.
    tp_at = tp.size - np.searchsorted(tp, thresholds, side="left")
    fp_at = fp.size - np.searchsorted(fp, thresholds, side="left")
    avg_fps = fp_at / len(cases)
    sensitivities = tp_at / n_lesions
    return FrocResult(
        thresholds=thresholds,
        avg_fps=avg_fps,
        sensitivities=sensitivities,
        fp_rates=rates,
        sensitivities_at_rates=tuple(_sensitivity_at(avg_fps, sensitivities, r) for r in rates),
        cpm=float(np.mean([_sensitivity_at(avg_fps, sensitivities, r) for r in LUNA16_FP_RATES])),
        n_scans=len(cases),
        n_lesions=n_lesions,
    )


def _sensitivity_at(avg_fps: np.ndarray, sensitivities: np.ndarray, rate: float) -> float:
    reachable = avg_fps <= rate + 1e-12  # tolerate rounding in count / n_scans
    # The first point (threshold +inf, 0 FPs) is always reachable.
    return float(sensitivities[reachable].max())


# --------------------------------------------------------------------------- localisation


def as_box(name: str, box: Sequence[int]) -> Box:
    """``box`` as a checked ``(row0, col0, row1, col1)`` of ints; errors name argument ``name``."""
    try:
        r0, c0, r1, c1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f'Argument "{name}" must be (row0, col0, row1, col1), got {box!r}') from None
    if r1 < r0 or c1 < c0:
        raise ValueError(f'Argument "{name}" must have row1 >= row0 and col1 >= col0, got {box!r}')
    return r0, c0, r1, c1


def as_slice_range(name: str, slices: Sequence[int]) -> SliceRange:
    """``slices`` as a checked inclusive ``(first, last)``; errors name argument ``name``."""
    try:
        first, last = (int(v) for v in slices)
    except (TypeError, ValueError):
        raise ValueError(f'Argument "{name}" must be (first, last), got {slices!r}') from None
    if last < first:
        raise ValueError(f'Argument "{name}" must have last >= first, got {slices!r}')
    return first, last


def _intersection(a: Box, b: Box) -> int:
    rows = min(a[2], b[2]) - max(a[0], b[0])
    cols = min(a[3], b[3]) - max(a[1], b[1])
    return max(rows, 0) * max(cols, 0)


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two half-open boxes ``(row0, col0, row1, col1)``.

    Returns 0.0 when both boxes are empty (the union is empty).
    """
    a, b = as_box("a", a), as_box("b", b)
    inter = _intersection(a, b)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def boxes_overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether two half-open boxes share at least one pixel (touching edges do not)."""
    return _intersection(as_box("a", a), as_box("b", b)) > 0


def region_hits_lesion(
    region_box: Sequence[int], region_slices: Sequence[int], lesion_box: Sequence[int], lesion_slices: Sequence[int], min_iou: float = 0.0
) -> bool:
    """Whether a detector's region localises a true lesion.

    A hit needs the inclusive slice ranges to intersect, the boxes to share at
    least one pixel, and their IoU to be at least ``min_iou``. The default
    (any overlap) suits boxes of very different tightness: a lesion box is the
    union over all its slices, a region box is drawn on one slice.

    Parameters
    ----------
    region_box, lesion_box : (row0, col0, row1, col1)
        Half-open pixel boxes.
    region_slices, lesion_slices : (first, last)
        Inclusive slice ranges; radiographs use ``(0, 0)``.
    min_iou : float
        Extra IoU requirement in [0, 1].
    """
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f'Argument "min_iou" must be in [0, 1], got {min_iou!r}')
    rb, lb = as_box("region_box", region_box), as_box("lesion_box", lesion_box)
    rs, ls = as_slice_range("region_slices", region_slices), as_slice_range("lesion_slices", lesion_slices)
    if max(rs[0], ls[0]) > min(rs[1], ls[1]):
        return False
    if _intersection(rb, lb) == 0:
        return False
    return min_iou == 0.0 or box_iou(rb, lb) >= min_iou
