"""Candidates and their features: the first stage of a two-stage detector, on the heatmap grid.

A candidate is a connected component (3D for CT: it continues on the next
slice) of the smoothed logit heatmap above the card's ``candidate_logit``,
inside the detector's anatomy. Each gets a row of named features, measured
from the network's own input items (the HU of the windows it was given, so
nothing has to be read twice) and from its logits:

- ``peak_logit``, ``mean_logit``: how sure the network is, at its strongest and on average;
- ``log_area_mm2``: log(1 + in-plane area summed over slices), ``depth_mm``: extent along the slices;
- ``anatomy_depth_mm``: how far inside its anatomy the peak lies (a lesion can touch the
  inner table, but an edge artefact lies on it);
- ``hu_mean``, ``hu_excess``, ``hu_contrast`` (CT): density, how far it is above 90 HU, and
  density above the ring of tissue around it (acute blood is 50-90 HU and brighter than the
  brain beside it; the partial-volume rim of bone and calcifications are denser still, which a
  linear filter can only see through a feature that starts where blood ends);
- ``bone_adjacent``, ``bone_through`` (CT with a bone window): the share of the candidate
  beside bone in-plane, and in front of bone on the neighbouring slices (the vertex and
  the floors of the skull cut at a tangent);
- ``intensity_mean``, ``intensity_contrast`` (radiographs): the same on the normalised image;
- with a card's ``proposals = ["hyperdense"]``, components of pixels clearly denser than the
  scan's brain are candidates too, whatever the network says, and ``dense_*`` features
  measure them (:mod:`detectors.proposals`).

Pure numpy and scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from detectors.anatomy.grid import block_reduce, grow_in_plane
from detectors.base import Family
from detectors.features import feature_names
from detectors.proposals import Hyperdense, hyperdense
from detectors.spec import DetectorSpec

MAX_CANDIDATES = 100  # per series, strongest first: more are noise and cost time
BONE_HU = 300.0
BLOOD_MAX_HU = 90.0  # acute blood is at most this dense; denser is bone, calcification or contrast


@dataclass(frozen=True)
class Candidate:
    """One component on the heatmap grid: its cells, where it peaks, and its features."""

    label: int
    cells: tuple[slice, slice, slice]  # bounding box (slices, rows, cols) on the heatmap grid
    peak: tuple[int, int, int]  # (slice, row, col) of the strongest smoothed logit
    peak_logit: float
    features: np.ndarray  # (len(feature_names),) float64


def _window_index(spec: DetectorSpec, lo: float, hi: float) -> int | None:
    """The narrowest window that shows all of [lo, hi] HU, or None."""
    fits = [(w.width, i) for i, w in enumerate(spec.input.windows) if w.center - w.width / 2 <= lo and w.center + w.width / 2 >= hi]
    return min(fits)[1] if fits else None


def _channel(items: np.ndarray, spec: DetectorSpec, window: int, offset: int) -> np.ndarray:
    """HU of one window at slice ``offset`` (-k..k) from each item's own slice: (n, H, W)."""
    windows = spec.input.windows
    k = spec.input.context_slices
    w = windows[window]
    values = items[:, (offset + k) * len(windows) + window]
    return values * w.width + (w.center - w.width / 2)


def item_images(items: np.ndarray, spec: DetectorSpec) -> dict[str, np.ndarray]:
    """Cell-level images the features read: "value" (HU or normalised) and, for CT, "bone" maps."""
    s = spec.stride
    if spec.family is Family.RADIOGRAPH:
        return {"value": block_reduce(items[:, 0], s)}
    soft = _window_index(spec, 0.0, 100.0)
    bone_window = _window_index(spec, BONE_HU, 1000.0)
    out: dict[str, np.ndarray] = {}
    if soft is not None:
        out["value"] = block_reduce(_channel(items, spec, soft, 0), s)
    if bone_window is not None:
        # A cell is bone when any of its pixels is: thin cortex is one pixel wide.
        bone = _channel(items, spec, bone_window, 0) > BONE_HU
        out["bone"] = block_reduce(bone.astype(np.float32), s) > 0
        k = spec.input.context_slices
        if k:
            near = (_channel(items, spec, bone_window, -1) > BONE_HU) | (_channel(items, spec, bone_window, 1) > BONE_HU)
            out["bone_near_slices"] = block_reduce(near.astype(np.float32), s) > 0.5
    return out


def proposals_for(items: np.ndarray, spec: DetectorSpec, allowed: np.ndarray, spacing_mm: tuple[float, float, float]) -> Hyperdense | None:
    """The card's classical proposals on the items, or None when it asks for none.

    A card asking for hyperdense proposals without windows that show them is refused when
    it is loaded (:func:`detectors.spec.load_card`), so both windows exist here.
    """
    if "hyperdense" not in spec.proposals or spec.family is not Family.CT:
        return None
    soft = _window_index(spec, 0.0, 100.0)
    bone_window = _window_index(spec, BONE_HU, 1000.0)
    if soft is None or bone_window is None:
        raise ValueError(f"{spec.name}: hyperdense proposals need windows showing 0-100 HU and {BONE_HU:g}-1000 HU")
    hu = _channel(items, spec, soft, 0)
    bone = _channel(items, spec, bone_window, 0) > BONE_HU
    return hyperdense(hu, bone, allowed, spec.stride, float(spacing_mm[0]), spec.input.spacing_mm)


def find_candidates(
    smoothed: np.ndarray,
    logits: np.ndarray,
    allowed: np.ndarray,
    images: dict[str, np.ndarray],
    spec: DetectorSpec,
    spacing_mm: tuple[float, float, float],
    candidate_logit: float,
    proposal: Hyperdense | None = None,
) -> tuple[list[Candidate], np.ndarray]:
    """Components of ``smoothed`` (n, h, w) above ``candidate_logit`` within ``allowed``; returns (candidates, labels).

    With ``proposal``, its cells are candidates too (joined with the heatmap's where they touch).
    """
    above = smoothed > candidate_logit
    if proposal is not None:
        above |= proposal.cells(spec.stride)
    above &= allowed
    if not above.any():
        return [], np.zeros(above.shape, dtype=np.int32)
    structure = ndimage.generate_binary_structure(3, 1)
    structure[0] = structure[2] = structure[1]
    labels, count = ndimage.label(above, structure=structure)
    # Each component's peak; np.maximum.at over the labelled cells only (ndimage.maximum sorts them all).
    labelled = labels > 0
    peaks = np.full(count + 1, -np.inf)
    np.maximum.at(peaks, labels[labelled], smoothed[labelled])
    peaks = peaks[1:]
    order = np.argsort(peaks)[::-1][:MAX_CANDIDATES]
    objects = ndimage.find_objects(labels)
    cell_mm = spec.input.spacing_mm * spec.stride
    # Distance (mm) from each allowed cell to the edge of the anatomy, per slice.
    depth_mm = np.stack([ndimage.distance_transform_edt(a) for a in allowed]) * cell_mm if allowed.any() else np.zeros(allowed.shape)
    out = []
    for i in order:
        label = int(i) + 1
        box = objects[i]
        region = labels[box] == label
        local = np.where(region, smoothed[box], -np.inf)
        pz, pr, pc = np.unravel_index(int(np.argmax(local)), local.shape)
        peak = (int(box[0].start + pz), int(box[1].start + pr), int(box[2].start + pc))
        features = _features(region, box, peak, float(peaks[i]), logits, allowed, images, depth_mm, spec, spacing_mm, cell_mm, proposal)
        out.append(Candidate(label, box, peak, float(peaks[i]), features))
    return out, labels


def _features(
    region: np.ndarray,
    box: tuple[slice, slice, slice],
    peak: tuple[int, int, int],
    peak_logit: float,
    logits: np.ndarray,
    allowed: np.ndarray,
    images: dict[str, np.ndarray],
    depth_mm: np.ndarray,
    spec: DetectorSpec,
    spacing_mm: tuple[float, float, float],
    cell_mm: float,
    proposal: Hyperdense | None,
) -> np.ndarray:
    cells = int(region.sum())
    values: dict[str, float] = {
        "peak_logit": peak_logit,
        "mean_logit": float(logits[box][region].mean()),
        "log_area_mm2": math.log1p(cells * cell_mm * cell_mm),
        "depth_mm": float((box[0].stop - box[0].start) * max(spacing_mm[0], 0.0)),
        "anatomy_depth_mm": float(depth_mm[peak]),
    }
    # The ring: cells within two cells of the candidate, inside the anatomy, not the candidate.
    grow = (
        slice(box[0].start, box[0].stop),
        slice(max(box[1].start - 2, 0), box[1].stop + 2),
        slice(max(box[2].start - 2, 0), box[2].stop + 2),
    )
    big = np.zeros(tuple(s.stop - s.start for s in grow), dtype=bool)
    off = (0, box[1].start - grow[1].start, box[2].start - grow[2].start)
    big[:, off[1] : off[1] + region.shape[1], off[2] : off[2] + region.shape[2]] = region
    ring = grow_in_plane(big, 2) & ~big & allowed[grow]
    value = images.get("value")
    if value is not None:
        inside = float(value[grow][big].mean())
        around = float(value[grow][ring].mean()) if ring.any() else inside
        key = "hu" if spec.family is Family.CT else "intensity"
        values[f"{key}_mean"] = inside
        values[f"{key}_contrast"] = inside - around
        values["hu_excess"] = max(0.0, inside - BLOOD_MAX_HU)
    bone = images.get("bone")
    if bone is not None:
        near_bone = grow_in_plane(bone[grow], 1)
        values["bone_adjacent"] = float(near_bone[big].mean())
    through = images.get("bone_near_slices")
    if through is not None:
        values["bone_through"] = float(through[grow][big].mean())
    if proposal is not None:
        values |= proposal.features(region, box, spec.stride)
    return np.array([values.get(name, 0.0) for name in feature_names(spec.family, spec.proposals)], dtype=np.float64)
