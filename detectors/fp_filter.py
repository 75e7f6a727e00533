"""The learned false-positive filter: a logistic model over a candidate's measured features.

The classic CAD design: a candidate stage with high sensitivity (the heatmap
network, inside its anatomy) and a second stage that says which candidates
look like a lesion. The second stage is deliberately small, a logistic
regression over a dozen named, physically meaningful features
(:mod:`detectors.candidates`), so that it trains in seconds on a CPU, cannot
memorise a scan, and sits in the card as plain numbers anyone can read.

Fitting is L2-regularised Newton-Raphson (IRLS) on standardised features,
with class weights that give positives and negatives equal total weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LogisticFilter:
    """``logit = bias + sum(weights * (x - mean) / scale)`` over the named features."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.features)
        for name in ("weights", "mean", "scale"):
            if len(getattr(self, name)) != n:
                raise ValueError(f'Argument "{name}" must have one value per feature ({n}), got {len(getattr(self, name))}')
        if any(not s > 0 for s in self.scale):
            raise ValueError(f'Argument "scale" must be positive, got {self.scale}')

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n, features) -> (n,) logits; a (features,) row gives a 0-d array."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def as_table(self) -> dict[str, Any]:
        # Full precision: the card must give back exactly the filter that was validated.
        return {
            "features": list(self.features),
            "weights": list(self.weights),
            "bias": self.bias,
            "mean": list(self.mean),
            "scale": list(self.scale),
        }

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> LogisticFilter:
        return cls(
            features=tuple(str(f) for f in table["features"]),
            weights=tuple(float(w) for w in table["weights"]),
            bias=float(table["bias"]),
            mean=tuple(float(m) for m in table["mean"]),
            scale=tuple(float(s) for s in table["scale"]),
        )


def fit_filter(x: np.ndarray, y: np.ndarray, features: Sequence[str], l2: float = 1.0, iterations: int = 50) -> LogisticFilter:
    """Fit a :class:`LogisticFilter` on (n, features) ``x`` and (n,) bool ``y``.

    ``l2`` is the ridge penalty on the standardised weights (not the bias),
    in units of the total (class-balanced) sample weight.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ValueError(f'Argument "x" must be (n, {len(features)}), got {x.shape}')
    if not (y.any() and (~y).any()):
        raise ValueError("fitting a filter needs positive and negative candidates")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.column_stack([(x - mean) / scale, np.ones(len(x))])
    # Equal total weight per class: there are far more negative candidates than lesions.
    w = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    beta = np.zeros(z.shape[1])
    ridge = np.full(z.shape[1], l2 / len(x))
    ridge[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
        grad = z.T @ (w * (p - y)) + ridge * beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(ridge + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticFilter(
        features=tuple(features),
        weights=tuple(float(b) for b in beta[:-1]),
        bias=float(beta[-1]),
        mean=tuple(float(m) for m in mean),
        scale=tuple(float(s) for s in scale),
    )
