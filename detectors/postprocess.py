"""Raw logit heatmaps -> a calibrated study score and regions in source pixels. Pure functions.

The study score is the strongest evidence anywhere in the series: the largest
logit after a 3x3 mean (one hot cell of noise is not evidence; a blob is),
counted only where the item holds image, not padding. It is then calibrated
by Platt scaling fitted on the detector's validation set. Regions are the
connected components of the heatmap above the card's region threshold, joined
across neighbouring slices for CT (a bleed or nodule spans slices), each with
its own calibrated score, its strongest slice, and for nodules a diameter.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from detectors.base import Finding, ModelIdentity, Prepared, Region
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
    """The strongest smoothed logit over the series: (n, h, w) logits, (h, w) valid cells."""
    if logits.size == 0 or not valid.any():
        return -60.0
    return float(smoothed(logits)[:, valid].max())


def postprocess(prepared: Prepared, logits: np.ndarray, spec: DetectorSpec, identity: ModelIdentity) -> Finding:
    """(n, 1, h, w) raw logits for all of a series' items -> :class:`Finding`."""
    series = prepared.series
    geometry: Geometry = prepared.context["geometry"]
    maps = logits[:, 0].astype(np.float32)  # (n, h, w)
    valid = valid_cells(geometry, spec, maps.shape[1:])
    maps = np.where(valid[None], maps, -60.0)
    raw = study_logit(maps, valid)
    probability = float(platt(raw, spec.platt_a, spec.platt_b))
    regions = find_regions(maps, geometry, spec, series.series_uid, series.sop_instance_uids, series.spacing_mm)
    return Finding(
        kind=spec.kind,
        series_uid=series.series_uid,
        probability=probability,
        operating_point=spec.operating_point,
        regions=tuple(regions),
        model=identity,
        detector=spec.name,
    )


def find_regions(maps: np.ndarray, geometry: Geometry, spec: DetectorSpec, series_uid: str,
                 sop_uids: tuple[str, ...], spacing_mm: tuple[float, float, float]) -> list[Region]:  # fmt: skip
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
    cell_mm = (spec.input.spacing_mm * spec.stride)
    regions = []
    for i in order:
        label = int(i) + 1
        zs, ys, xs = objects[i]
        component = labels[zs, ys, xs] == label
        # Cells outside the component must not count (a product with the mask would count them
        # as 0, which beats a slice whose smoothed logits are all negative).
        best = int(zs.start + np.argmax(np.where(component, strongest[zs, ys, xs], -np.inf).max(axis=(1, 2))))
        s = spec.stride
        box = geometry.to_source_box((ys.start * s, xs.start * s, ys.stop * s, xs.stop * s))
        diameter = None
        if spec.kind is FindingKind.NODULE:
            on_slice = labels[best, ys, xs] == label
            rows, cols = np.nonzero(on_slice)
            extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
            diameter = round(float(extent * cell_mm), 1)
        regions.append(Region(
            series_uid=series_uid,
            sop_instance_uid=sop_uids[best],
            slice_index=best,
            slices=(int(zs.start), int(zs.stop - 1)),
            box=box,
            probability=float(platt(float(peaks[i]), spec.platt_a, spec.platt_b)),
            diameter_mm=diameter,
        ))  # fmt: skip
    return regions
