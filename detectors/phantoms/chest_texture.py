"""What a real chest radiograph has and the plain phantom lacks: vessels, projected spheres, CR processing.

A detector trained on the plain PA chest phantom (smooth lung fields, one
flat-topped disc per nodule, a plain window) is blind on a real chest
radiograph: measured on the real CR of ``triage realdata``, even a 30 mm disc
of 0.5 display units inserted into its lungs scores a logit of -4.5. Three
things differ, and each is drawn here:

- **Vascular markings.** Every real lung field is full of vessels branching
  from the hila and tapering to the periphery; a vessel seen end-on is the
  classic nodule mimic. :func:`vessel_markings` draws a branching tree of
  tapering cylinders per lung, each adding its chord length times a
  contrast per mm, as a nodule does.
- **A nodule is a projected sphere**: densest in the middle, its edge as soft
  as the chord makes it (:func:`sphere_projection`), with the same contrast
  per mm as the vessels around it, so size, not a sharp rim, tells them apart.
- **Presentation processing.** CR/DX systems send images processed for
  reading: the large-scale range compressed (lungs and mediastinum brought
  together) and edges enhanced (multi-scale unsharp masking).
  :func:`present` applies a drawn amount of both.

Display units throughout: the phantom image's [0, 1], bright = dense.
"""

from __future__ import annotations

import math

import numpy as np

# Display units per mm of chord through soft tissue in aerated lung, drawn per image (see
# detectors.insertion.nodule.CONTRAST_PER_MM = 0.004 for the physics; the range covers
# displays that spread the lungs' range wider or narrower).
CONTRAST_PER_MM = (0.0025, 0.008)
# Vessels are blood-filled tubes against air with no scatter behind the heart to dull them;
# on real radiographs the central ones stand out more than a nodule of their width would.
VESSEL_GAIN = 2.0


def _capsule_chord(rows: np.ndarray, cols: np.ndarray, p0: np.ndarray, p1: np.ndarray,
                   r0: float, r1: float) -> np.ndarray:  # fmt: skip
    """Chord length (pixels) through a tapering cylinder from p0 (radius r0) to p1 (radius r1)."""
    seg = p1 - p0
    length2 = float(seg @ seg) or 1e-9
    t = np.clip(((rows - p0[0]) * seg[0] + (cols - p0[1]) * seg[1]) / length2, 0.0, 1.0)
    d2 = (rows - p0[0] - t * seg[0]) ** 2 + (cols - p0[1] - t * seg[1]) ** 2
    r = r0 + (r1 - r0) * t
    return 2.0 * np.sqrt(np.clip(r**2 - d2, 0.0, None))


def vessel_markings(shape: tuple[int, int], hila: list[tuple[float, float, float]], lung: np.ndarray,
                    spacing_mm: float, contrast_per_mm: float, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """(rows, cols) display units: branching, tapering vessel trees from each hilum, kept to ``lung``.

    ``hila`` holds (row, col, side) per lung, side -1 for the image's left
    lung and +1 for its right (lateral is ``side`` in columns); ``lung`` is a
    [0, 1] weight of aerated lung (vessels outside it are not drawn).
    """
    out = np.zeros(shape, np.float32)
    rows_n, cols_n = shape
    stack: list[tuple[np.ndarray, float, float, float, int]] = []  # (start, angle, length px, radius px, depth)
    for row, col, side in hila:
        # Trunks fan out upwards, laterally and downwards; angle 0 points laterally, positive downwards.
        for base in (-1.35, -0.75, -0.2, 0.35, 0.9, 1.35):
            angle = base + float(rng.normal(0.0, 0.12))
            length = float(rng.uniform(0.08, 0.13)) * rows_n
            radius = float(rng.uniform(3.0, 5.0)) / spacing_mm
            direction = angle if side > 0 else math.pi - angle
            # Trunks leave the hilum from points 0-15 mm along their way, not from one point.
            start = np.array([row, col], float) + float(rng.uniform(0, 15)) / spacing_mm * np.array([math.sin(direction), math.cos(direction)])
            stack.append((start, direction, length, radius, 0))
    while stack:
        start, angle, length, radius, depth = stack.pop()
        end = start + length * np.array([math.sin(angle), math.cos(angle)])
        end_radius = radius * 0.8
        reach = radius + 2
        r_lo, r_hi = int(max(min(start[0], end[0]) - reach, 0)), int(min(max(start[0], end[0]) + reach + 1, rows_n))
        c_lo, c_hi = int(max(min(start[1], end[1]) - reach, 0)), int(min(max(start[1], end[1]) + reach + 1, cols_n))
        if r_lo < r_hi and c_lo < c_hi:
            rr, cc = np.mgrid[r_lo:r_hi, c_lo:c_hi].astype(np.float32)
            # The maximum, not the sum: where a branch leaves its parent the two overlap, and a sum
            # would put a bright dot (a nodule mimic no real lung has) at every fork.
            np.maximum(out[r_lo:r_hi, c_lo:c_hi], _capsule_chord(rr, cc, start, end, radius, end_radius),
                       out=out[r_lo:r_hi, c_lo:c_hi])
        if depth < 7 and end_radius * spacing_mm > 0.4:
            spread = float(rng.uniform(0.25, 0.6))
            for turn in (-spread * rng.uniform(0.4, 1.0), spread * rng.uniform(0.4, 1.0)):
                stack.append((end, angle + float(turn), length * float(rng.uniform(0.65, 0.85)),
                              end_radius * float(rng.uniform(0.65, 0.8)), depth + 1))  # fmt: skip
    return (out * spacing_mm * contrast_per_mm * VESSEL_GAIN * lung).astype(np.float32)


def sphere_projection(shape: tuple[int, int], centre: tuple[float, float], diameter_mm: float,
                      spacing_mm: float, contrast_per_mm: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A sphere's projection (display units, its chord times the contrast) and its disc (bool)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    d2 = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) * spacing_mm**2
    radius = diameter_mm / 2
    chord = 2.0 * np.sqrt(np.clip(radius**2 - d2, 0.0, None))
    return (chord * contrast_per_mm).astype(np.float32), d2 <= radius**2


def _gaussian(image: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma_px, mode="nearest")


def present(image: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A drawn CR/DX presentation processing: range compression and edge enhancement, back in [0, 1]."""
    compress = float(rng.uniform(0.3, 0.85))  # share of the large-scale range taken away
    large_mm = float(rng.uniform(10.0, 35.0))
    enhance = float(rng.uniform(0.0, 1.2))  # gain on detail finer than small_mm
    small_mm = float(rng.uniform(0.8, 3.0))
    low = _gaussian(image, large_mm / spacing_mm)
    out = image - compress * (low - float(low.mean()))
    out = out + enhance * (image - _gaussian(image, small_mm / spacing_mm))
    lo, hi = np.percentile(out[::4, ::4], [0.5, 99.8])
    out = np.clip((out - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    return out, {"compress": compress, "compress_mm": large_mm, "enhance": enhance, "enhance_mm": small_mm}
