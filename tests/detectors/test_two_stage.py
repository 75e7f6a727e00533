"""Anatomy gating and the two-stage path of postprocess, on a slab of the real head with crafted logits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from detectors import realdata
from detectors.base import DetectionError, Family, ModelIdentity, SeriesArrays
from detectors.features import CT_FEATURES
from detectors.fp_filter import LogisticFilter
from detectors.postprocess import NO_CANDIDATE_LOGIT, postprocess
from detectors.preprocess import prepare
from detectors.registry import MODELS_DIR
from detectors.spec import load_card

IDENTITY = ModelIdentity("test", "0", "0" * 64)


@pytest.fixture(scope="module")
def slab() -> SeriesArrays:
    head = realdata.head_ct()
    z = slice(55, 63)  # supratentorial: the lateral ventricles
    return SeriesArrays("2.25.1", Family.CT, head.pixels[z], head.spacing_mm, head.sop_instance_uids[z])


def _spec(anatomy: str = "intracranial", with_filter: bool = True):
    spec = replace(
        load_card(MODELS_DIR / "bleed-ct.toml"), anatomy=anatomy, region_threshold=0.5, platt_a=1.0, platt_b=0.0, operating_point=0.5
    )
    if with_filter:
        n = len(CT_FEATURES)
        weights = tuple(1.0 if f == "peak_logit" else 0.0 for f in CT_FEATURES)  # the filter logit is the peak logit
        spec = replace(spec, filter=LogisticFilter(CT_FEATURES, weights, 0.0, (0.0,) * n, (1.0,) * n), candidate_logit=-1.0)
    else:
        spec = replace(spec, filter=None)  # the gated heatmap alone, not the shipped card's filter
    return spec


def _logits(prepared, cells: list[tuple[int, int, int]]) -> np.ndarray:
    n = prepared.items.shape[0]
    h = prepared.items.shape[2] // 2
    logits = np.full((n, 1, h, h), -6.0, dtype=np.float32)
    for z, r, c in cells:
        logits[z, 0, r - 2 : r + 3, c - 2 : c + 3] = 6.0
    return logits


def _inside_and_outside(prepared) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    anatomy = prepared.context["anatomy"]
    z = anatomy.shape[0] // 2
    rows, cols = np.nonzero(anatomy[z])
    inside = (z, int(np.median(rows)), int(np.median(cols)))
    # Scalp: the first image cells left of the skull on the middle row, well outside the anatomy.
    row = inside[1]
    first = int(np.flatnonzero(anatomy[z, row])[0])
    outside = (z, row, max(first - 12, 3))
    assert not anatomy[z, outside[1] - 2 : outside[1] + 3, outside[2] - 2 : outside[2] + 3].any()
    return inside, outside


@pytest.mark.parametrize("with_filter", [False, True], ids=["gated heatmap", "two-stage"])
def test_a_region_outside_its_anatomy_is_never_reported(slab: SeriesArrays, with_filter: bool) -> None:
    spec = _spec(with_filter=with_filter)
    prepared = prepare(slab, spec)
    inside, outside = _inside_and_outside(prepared)
    finding = postprocess(prepared, _logits(prepared, [inside, outside]), spec, IDENTITY)
    assert len(finding.regions) == 1
    region = finding.regions[0]
    assert region.slice_index == inside[0]
    geometry = prepared.context["geometry"]
    r0, c0, r1, c1 = region.box
    centre_item = ((r0 + r1) / 2 * geometry.scale[0] - geometry.origin[0], (c0 + c1) / 2 * geometry.scale[1] - geometry.origin[1])
    assert abs(centre_item[1] / spec.stride - inside[2]) < 4
    # The scalp alone is no evidence at all.
    alone = postprocess(prepared, _logits(prepared, [outside]), spec, IDENTITY)
    assert alone.regions == () and alone.probability < 0.01


def test_without_anatomy_the_scalp_counts(slab: SeriesArrays) -> None:
    spec = _spec(anatomy="none", with_filter=False)
    prepared = prepare(slab, spec)
    _, outside = _inside_and_outside(prepare(slab, _spec()))
    finding = postprocess(prepared, _logits(prepared, [outside]), spec, IDENTITY)
    assert finding.probability > 0.99 and len(finding.regions) == 1


def test_no_candidate_gives_the_floor(slab: SeriesArrays) -> None:
    spec = replace(_spec(), proposals=())  # the heatmap's candidates only: none where it is silent
    prepared = prepare(slab, spec)
    finding = postprocess(prepared, _logits(prepared, []), spec, IDENTITY)
    assert finding.regions == ()
    assert finding.probability == pytest.approx(1 / (1 + np.exp(-NO_CANDIDATE_LOGIT)))


def test_a_head_without_a_skull_is_not_assessed() -> None:
    soft = np.full((6, 128, 128), 35.0, dtype=np.float32)
    series = SeriesArrays("2.25.2", Family.CT, soft, (5.0, 1.0, 1.0), tuple(f"2.25.2.{i}" for i in range(6)))
    with pytest.raises(DetectionError, match="anatomy not found"):
        prepare(series, _spec())
