"""Hyperdense proposals on the real head: an inserted bleed the network does not see is still a candidate."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import numpy as np
import pytest

from detectors import realdata
from detectors.anatomy.intracranial import intracranial_mask
from detectors.base import Family, SeriesArrays
from detectors.features import CT_FEATURES, DENSE_FEATURES, feature_names
from detectors.fp_filter import LogisticFilter
from detectors.insertion.hemorrhage import insert_hemorrhage
from detectors.postprocess import candidate_scores
from detectors.preprocess import map_mask, prepare
from detectors.proposals import hyperdense
from detectors.registry import MODELS_DIR
from detectors.spec import CardError, load_card, parse_card

SLAB = slice(48, 72)  # supratentorial, 36 mm: ventricles, cortex, the inner table on both sides


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    scan = realdata.head_ct()
    pixels = np.ascontiguousarray(scan.pixels[SLAB])
    return pixels, scan.spacing_mm, intracranial_mask(pixels, scan.spacing_mm)


def _spec():
    # The shipped network with proposals on and no filter: candidates only.
    return replace(load_card(MODELS_DIR / "bleed-ct.toml"), anatomy="intracranial", filter=None, proposals=("hyperdense",))


def _series(pixels: np.ndarray, spacing: tuple[float, float, float]) -> SeriesArrays:
    return SeriesArrays("2.25.9", Family.CT, pixels.astype(np.float32), spacing, tuple(f"2.25.9.{i}" for i in range(len(pixels))))


@pytest.mark.parametrize(("kind", "volume"), [("subdural", 1.0), ("epidural", 0.5), ("intraparenchymal", 0.4)])
def test_a_small_bleed_is_a_candidate_without_any_network_evidence(head, kind: str, volume: float) -> None:
    pixels, spacing, inside = head
    inserted = insert_hemorrhage(pixels, spacing, inside, kind, volume, np.random.default_rng(3), density_hu=62.0)
    series = _series(inserted.hu, spacing)
    spec = _spec()
    prepared = prepare(series, spec)
    n, _, h, w = prepared.items.shape
    silent = np.full((n, 1, h // spec.stride, w // spec.stride), -8.0, dtype=np.float32)  # the network sees nothing
    cands, _, labels = candidate_scores(prepared, silent, spec)
    lesion = map_mask(inserted.mask, series, prepared.context["geometry"], spec) >= 0.25
    on_lesion = [c for c in cands if lesion[labels == c.label].any()]
    assert on_lesion, f"no candidate on a {volume} mL {kind} bleed"
    names = feature_names(Family.CT, spec.proposals)
    best = max(on_lesion, key=lambda c: c.features[names.index("dense_log_ml")])
    values = dict(zip(names, best.features, strict=True))
    assert values["dense_log_ml"] > np.log(0.02)
    assert 20.0 <= values["dense_hu"] < 80.0  # blood: above the brain, below bone
    assert values["dense_calcified_share"] < 0.1
    assert values["dense_contrast_hu"] > 15.0


def test_bone_and_calcification_are_told_from_blood(head) -> None:
    pixels, spacing, inside = head
    stride = 2
    cells = np.ones((len(pixels), 128, 128), dtype=bool)
    hu = pixels[:, :256, :256].astype(np.float32).copy()
    bone = hu > 300.0
    z, r, c = 12, 128, 128
    assert inside[z, r, c] and not bone[z, r - 6 : r + 7, c - 6 : c + 7].any()
    hu[z - 1 : z + 2, r - 3 : r + 4, c - 3 : c + 4] = 250.0  # a calcification: far denser than blood
    found = hyperdense(hu, bone, cells, stride, spacing[0], 1.0)
    assert found.mask[z, r, c]
    # Nothing within two pixels of bone is proposed: the inner table's partial volume is as dense as blood.
    for shift in (1, 2, -1, -2):
        assert not (found.mask & np.roll(bone, shift, axis=2)).any()
    region = np.zeros((3, 5, 5), dtype=bool)
    region[:, 1:4, 1:4] = True
    box = (slice(z - 1, z + 2), slice(r // stride - 2, r // stride + 3), slice(c // stride - 2, c // stride + 3))
    values = found.features(region, box, stride)
    assert values["dense_hu"] == 80.0 and values["dense_calcified_share"] > 0.5
    assert values["midline_mm"] < 15.0  # the test's blob sits near the middle of the head


def test_a_scan_without_brain_proposes_nothing() -> None:
    air = np.full((4, 64, 64), -1000.0, dtype=np.float32)
    found = hyperdense(air, air > 300, np.ones((4, 32, 32), bool), 2, 5.0, 1.0)
    assert not found.mask.any() and not found.cells(2).any()


def test_the_card_names_its_proposals_and_refuses_unmeasured_features() -> None:
    spec = _spec()
    names = feature_names(Family.CT, ("hyperdense",))
    assert names == CT_FEATURES + DENSE_FEATURES
    n = len(names)
    spec = replace(spec, filter=LogisticFilter(names, (0.1,) * n, 0.0, (0.0,) * n, (1.0,) * n))
    raw = tomllib.loads(spec.to_toml())
    assert raw["filter"]["proposals"] == ["hyperdense"]
    assert parse_card(raw) == spec
    raw["filter"]["proposals"] = ["everything"]
    with pytest.raises(CardError, match="filter.proposals"):
        parse_card(raw, "x.toml")
    raw["filter"]["proposals"] = []
    with pytest.raises(CardError, match="dense_log_ml"):  # dense features without the proposals that measure them
        parse_card(raw, "x.toml")


def test_proposals_need_windows_that_show_blood_and_bone() -> None:
    spec = _spec()
    names = feature_names(Family.CT, ("hyperdense",))
    n = len(names)
    raw = tomllib.loads(replace(spec, filter=LogisticFilter(names, (0.1,) * n, 0.0, (0.0,) * n, (1.0,) * n)).to_toml())
    raw["input"]["windows"] = [[40.0, 80.0]]  # the brain window alone: no bone, blood clipped at 80 HU
    raw["input"]["context_slices"] = 1
    with pytest.raises(CardError, match="hyperdense needs input.windows"):
        parse_card(raw, "x.toml")


@pytest.mark.parametrize("slice_mm", [1e9, float("nan"), 0.0])
def test_a_nonsense_slice_spacing_does_not_make_a_speck_large(slice_mm: float) -> None:
    hu = np.full((3, 64, 64), 25.0, dtype=np.float32)
    hu[1, 30:33, 30:33] = 70.0  # 9 pixels of blood-dense tissue
    found = hyperdense(hu, hu > 300, np.ones((3, 32, 32), bool), 2, slice_mm, 1.0)
    assert found.voxel_ml <= 10.0 / 1000.0


def test_an_atrophic_head_keeps_its_brain_reference() -> None:
    """Wider CSF spaces (an older patient) must not lower the reference that blood is measured against."""
    rng = np.random.default_rng(3)
    hu = (32.0 + 3.0 * rng.standard_normal((3, 96, 96))).astype(np.float32)  # parenchyma
    atrophic = hu.copy()
    rows = np.arange(96)
    sulci = (rows % 8 < 3)[None, :, None] & np.ones((3, 1, 96), bool)  # 3 of every 8 rows: CSF at 8 HU
    atrophic[sulci] = 8.0
    allowed = np.ones((3, 48, 48), bool)
    young = hyperdense(hu, hu > 300, allowed, 2, 5.0, 1.0)
    old = hyperdense(atrophic, atrophic > 300, allowed, 2, 5.0, 1.0)
    assert abs(old.brain_hu - young.brain_hu) < 2.5  # counting the CSF, it fell by 7 HU
    assert not old.mask.any()  # normal parenchyma next to the CSF is not proposed
