"""Platt scaling and the operating point, fitted on a detector's validation set. Pure NumPy."""

from __future__ import annotations

import numpy as np


def fit_platt(raw: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """``(a, b)`` such that ``sigmoid(a * raw + b)`` is calibrated on (raw logit, label) pairs.

    Uses Platt's smoothed targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)) so that
    a perfectly separated validation set still gives finite, modest slopes
    instead of probabilities of exactly 0 and 1.
    """
    x = np.asarray(raw, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f'Arguments "raw" and "labels" must be 1-D and of one length, got {x.shape} and {y.shape}')
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f'Argument "labels" must hold both classes, got {n_pos} positive and {n_neg} negative')
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    # Fit on standardised logits (well conditioned whatever the network's scale),
    # by damped Newton steps: a step that does not lower the loss is halved, so
    # the fit cannot run away as plain Newton can on near-separable data.
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    z = (x - mu) / sd
    w = np.zeros(2)

    def loss(v: np.ndarray) -> float:
        m = v[0] * z + v[1]
        return float(np.sum(np.logaddexp(0.0, m) - t * m) + 1e-4 * v @ v)

    current = loss(w)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(w[0] * z + w[1], -60, 60)))
        g = np.array([np.sum((p - t) * z), np.sum(p - t)]) + 2e-4 * w
        q = p * (1 - p)
        h = np.array([[np.sum(q * z * z), np.sum(q * z)], [np.sum(q * z), np.sum(q)]]) + 2e-4 * np.eye(2)
        step = np.linalg.solve(h, g)
        scale = 1.0
        while scale > 1e-6 and loss(w - scale * step) > current:
            scale /= 2
        w = w - scale * step
        previous, current = current, loss(w)
        if previous - current < 1e-12:
            break
    a = w[0] / sd
    return float(a), float(w[1] - a * mu)


def operating_point_in_gap(labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float) -> float:
    """The "urgent" threshold: sensitivity >= target on these data, placed mid-gap below that.

    Starts from the largest threshold that keeps ``target_sensitivity``, then
    lowers it to halfway (in logit space) to the highest negative below it.
    Validation sensitivity and specificity stay what they were; positives of
    new data that score a little lower than the validation positives still
    pass, which matters most when a detector separates its validation set.
    """
    from detectors.metrics import operating_point_for_sensitivity

    y = np.asarray(labels, dtype=bool)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    top = operating_point_for_sensitivity(y, p, target_sensitivity)
    below = p[~y & (p < top)]
    if below.size == 0:
        return float(top)

    def logit(q: float) -> float:
        return float(np.log(q / (1 - q)))

    return float(1 / (1 + np.exp(-(logit(top) + logit(below.max())) / 2)))
