"""Synthetic phantoms with ground truth, for training, samples and tests.

Seeded and deterministic: the same ``seed`` and parameters give the same
arrays. No torch here; the phantoms are numpy arrays plus ground truth.
"""
