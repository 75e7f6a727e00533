"""Raw logit heatmaps -> a calibrated study score and regions in source pixels. Pure functions.

The study score is the strongest evidence anywhere in the series: the largest
logit after a 3x3 mean (one hot cell of noise is not evidence; a blob is),
counted only where the item holds image, not padding. It is then calibrated
by Platt scaling fitted on the detector's validation set. Regions are the
connected components of the heatmap above the card's region threshold, joined
across neighbouring slices for CT (a bleed or nodule spans slices), each with
its own calibrated score, its strongest slice, and for nodules a diameter.

A card's ``[anatomy] mask`` limits all of this to the cells inside that
anatomy (computed in :func:`detectors.preprocess.prepare`): a region outside
it is never reported. A card's ``[filter]`` makes the detector two-stage: the
heatmap's components are candidates (:mod:`detectors.candidates`), the
logistic filter scores each, the study logit is the best candidate's filter
logit, and regions are the candidates whose calibrated probability reaches
the region threshold.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from detectors.base import Finding, ModelIdentity, Prepared, Region
from detectors.candidates import Candidate, find_candidates, item_images, proposals_for
from detectors.features import feature_names
from detectors.preprocess import Geometry
from detectors.routing import FindingKind
from detectors.spec import DetectorSpec

MAX_REGIONS = 10  # per series: enough for the FROC and for several bleeds; more is noise


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def platt(raw: np.ndarray | float, a: float, b: float) -> np.ndarray | float:
    """Calibrated probability of a raw study logit."""
    return sigmoid(a * np.asarray(raw, dtype=np.float64) + b)


def smoothed(logits: np.ndarray) -> np.ndarray:
    """(n, h, w) logits averaged over 3x3 in-plane neighbourhoods."""
    return ndimage.uniform_filter(logits.astype(np.float32), size=(1, 3, 3), mode="nearest")


def valid_cells(geometry: Geometry, spec: DetectorSpec, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: heatmap cells whose pixels are mostly image, not padding."""
    valid = geometry.valid_mask(spec.input.height, spec.input.width).astype(np.float32)
    h, w = shape
    pooled = valid[: h * spec.stride, : w * spec.stride].reshape(h, spec.stride, w, spec.stride).mean(axis=(1, 3))
    return pooled >= 0.5


def study_logit(logits: np.ndarray, valid: np.ndarray) -> float:
    """The strongest smoothed logit over the series: (n, h, w) logits, (h, w) or (n, h, w) valid cells."""
    if logits.size == 0 or not valid.any():
        return -60.0
    cells = smoothed(logits)
    return float((cells[:, valid] if valid.ndim == 2 else cells[valid]).max())


NO_CANDIDATE_LOGIT = -12.0  # a two-stage detector's study logit when nothing is a candidate


def allowed_cells(prepared: Prepared, spec: DetectorSpec, shape: tuple[int, int, int]) -> np.ndarray:
    """(n, h, w) bool: cells that hold image and lie inside the card's anatomy."""
    valid = valid_cells(prepared.context["geometry"], spec, shape[1:])
    anatomy = prepared.context.get("anatomy")
    return np.broadcast_to(valid, shape) & anatomy if anatomy is not None else np.broadcast_to(valid, shape).copy()


def candidate_scores(prepared: Prepared, logits: np.ndarray, spec: DetectorSpec) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """A two-stage detector's candidates, their filter logits, and the component labels."""
    maps = logits[:, 0].astype(np.float32)
    allowed = allowed_cells(prepared, spec, maps.shape)
    gated = np.where(allowed, maps, -60.0)
    images = item_images(prepared.items, spec)
    proposal = proposals_for(prepared.items, spec, allowed, prepared.series.spacing_mm)
    cands, labels = find_candidates(
        smoothed(gated), gated, allowed, images, spec, prepared.series.spacing_mm, spec.candidate_logit, proposal
    )
    if not cands or spec.filter is None:
        return cands, np.zeros(len(cands)), labels
    names = feature_names(spec.family, spec.proposals)
    columns = [names.index(f) for f in spec.filter.features]  # the card names its features; candidates carry all
    return cands, spec.filter.logits(np.stack([c.features for c in cands])[:, columns]), labels


def postprocess(prepared: Prepared, logits: np.ndarray, spec: DetectorSpec, identity: ModelIdentity) -> Finding:
    """(n, 1, h, w) raw logits for all of a series' items -> :class:`Finding`."""
    series = prepared.series
    geometry: Geometry = prepared.context["geometry"]
    if spec.filter is not None:
        cands, scores, labels = candidate_scores(prepared, logits, spec)
        raw = float(scores.max()) if len(cands) else NO_CANDIDATE_LOGIT
        regions = _candidate_regions(cands, scores, labels, geometry, spec, series.series_uid, series.sop_instance_uids)
    else:
        maps = logits[:, 0].astype(np.float32)  # (n, h, w)
        allowed = allowed_cells(prepared, spec, maps.shape)
        maps = np.where(allowed, maps, -60.0)
        raw = study_logit(maps, allowed)
        regions = find_regions(maps, geometry, spec, series.series_uid, series.sop_instance_uids, series.spacing_mm)
    probability = float(platt(raw, spec.platt_a, spec.platt_b))
    return Finding(
        kind=spec.kind,
        series_uid=series.series_uid,
        probability=probability,
        operating_point=spec.operating_point,
        regions=tuple(regions),
        model=identity,
        detector=spec.name,
        notes=series.notes,
    )


def find_regions(
    maps: np.ndarray,
    geometry: Geometry,
    spec: DetectorSpec,
    series_uid: str,
    sop_uids: tuple[str, ...],
    spacing_mm: tuple[float, float, float],
) -> list[Region]:
    """Connected components of the heatmap above the region threshold, strongest first."""
    p = spec.region_threshold
    # 0 and 1 have no logit: 1 outlines nothing; 0 every image cell (padding sits at -60, not above it).
    threshold = math.log(p / (1 - p)) if 0 < p < 1 else (math.inf if p >= 1 else -60.0)
    above = maps > threshold
    if not above.any():
        return []
    # CT: 3D components (a finding continues on the next slice); radiographs have one slice.
    structure = ndimage.generate_binary_structure(3, 1)
    structure[0] = structure[2] = structure[1]  # face and in-plane diagonal neighbours on adjacent slices
    labels, count = ndimage.label(above, structure=structure)
    strongest = smoothed(maps)
    peaks = ndimage.maximum(strongest, labels, index=np.arange(1, count + 1))
    order = np.argsort(peaks)[::-1][:MAX_REGIONS]
    objects = ndimage.find_objects(labels)
    regions = []
    for i in order:
        label = int(i) + 1
        zs, ys, xs = objects[i]
        component = labels[zs, ys, xs] == label
        # Cells outside the component must not count (a product with the mask would count them
        # as 0, which beats a slice whose smoothed logits are all negative).
        best = int(zs.start + np.argmax(np.where(component, strongest[zs, ys, xs], -np.inf).max(axis=(1, 2))))
        regions.append(_region(labels, label, objects[i], best, float(peaks[i]), geometry, spec, series_uid, sop_uids))
    return regions


def _region(
    labels: np.ndarray,
    label: int,
    cells: tuple[slice, slice, slice],
    best: int,
    logit: float,
    geometry: Geometry,
    spec: DetectorSpec,
    series_uid: str,
    sop_uids: tuple[str, ...],
) -> Region:
    """One labelled component on the heatmap grid -> a :class:`Region` in source pixels."""
    zs, ys, xs = cells
    s = spec.stride
    box = geometry.to_source_box((ys.start * s, xs.start * s, ys.stop * s, xs.stop * s))
    diameter = None
    if spec.kind is FindingKind.NODULE:
        rows, cols = np.nonzero(labels[best, ys, xs] == label)
        extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) if len(rows) else 1
        diameter = round(float(extent * spec.input.spacing_mm * s), 1)
    return Region(
        series_uid=series_uid,
        sop_instance_uid=sop_uids[best],
        slice_index=best,
        slices=(int(zs.start), int(zs.stop - 1)),
        box=box,
        probability=float(platt(logit, spec.platt_a, spec.platt_b)),
        diameter_mm=diameter,
    )


def _candidate_regions(
    cands: list[Candidate],
    scores: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    spec: DetectorSpec,
    series_uid: str,
    sop_uids: tuple[str, ...],
) -> list[Region]:
    """Candidates whose calibrated filter probability reaches the region threshold, strongest first."""
    order = np.argsort(scores)[::-1]
    regions = []
    for i in order[:MAX_REGIONS]:
        if float(platt(float(scores[i]), spec.platt_a, spec.platt_b)) < spec.region_threshold:
            break
        c = cands[int(i)]
        regions.append(_region(labels, c.label, c.cells, c.peak[0], float(scores[i]), geometry, spec, series_uid, sop_uids))
    return regions
