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
    a, b = 1.0, 0.0
    for _ in range(iterations):  # Newton's method on the logistic loss, with a tiny ridge for stability
        p = 1 / (1 + np.exp(-np.clip(a * x + b, -60, 60)))
        g = np.array([np.sum((p - t) * x), np.sum(p - t)]) + 1e-6 * np.array([a, b])
        w = p * (1 - p)
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(b)
