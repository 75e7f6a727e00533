"""Logit heatmaps -> Finding: study score, calibration, 3D regions, boxes in source pixels, diameters.

The heatmaps are written by hand, so every expected number follows from the
module's rules: study logit = max of the 3x3-smoothed logits over valid cells,
probability = sigmoid(a * logit + b), regions = components above the region
threshold, box = the component's cells x stride mapped through the Geometry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.base import Family, ModelIdentity, Prepared, SeriesArrays
from detectors.postprocess import platt, postprocess, smoothed, study_logit, valid_cells
from detectors.preprocess import Geometry
from detectors.routing import FindingKind
from detectors.spec import DetectorSpec, InputSpec, Window

A, B = 2.0, -1.0  # the card's Platt calibration
BASE = -5.0  # background logit
IDENTITY = ModelIdentity("tiny-nodule", "1.2.3", "0" * 64)
SLICES = 8

# Item pixels (r, c) come from source pixels ((r + 4) / 0.5, (c + 6) / 0.5): the source is
# 64 x 64 at 0.5 mm, resampled to 32 x 32 at 1 mm, and the 32 x 32 item starts at (4, 6), so its
# last 6 columns (heatmap cells 13-15 at stride 2) and last 4 rows (cells 14-15) are padding.
GEOMETRY = Geometry(scale=(0.5, 0.5), origin=(4, 6), source_shape=(64, 64))


def spec(kind: FindingKind = FindingKind.NODULE, region: float = 0.5) -> DetectorSpec:
    return DetectorSpec(
        name="tiny-nodule",
        version="1.2.3",
        kind=kind,
        family=Family.CT,
        input=InputSpec(1.0, 32, 32, 0, (Window(-600, 1500),)),
        stride=2,
        region_threshold=region,
        platt_a=A,
        platt_b=B,
        operating_point=0.9,
    )


def prepared(slices: int = SLICES) -> Prepared:
    uids = tuple(f"2.25.9.{i}" for i in range(slices))
    series = SeriesArrays("2.25.9", Family.CT, np.zeros((slices, 64, 64), np.float32), (2.0, 0.5, 0.5), uids)
    return Prepared(series=series, items=np.zeros((slices, 1, 32, 32), np.float32), context={"geometry": GEOMETRY})


def heatmap(slices: int = SLICES) -> np.ndarray:
    """(slices, 16, 16) logits at the background level."""
    return np.full((slices, 16, 16), BASE, np.float32)


def run(maps: np.ndarray, card: DetectorSpec | None = None):  # noqa: ANN201 - a Finding
    return postprocess(prepared(len(maps)), maps[:, None], card or spec(), IDENTITY)


def test_valid_cells_exclude_padding() -> None:
    valid = valid_cells(GEOMETRY, spec(), (16, 16))
    expected = np.zeros((16, 16), bool)
    expected[:14, :13] = True
    np.testing.assert_array_equal(valid, expected)


def test_one_blob_over_three_slices_is_one_region() -> None:
    maps = heatmap()
    maps[3:6, 4:7, 8:11] = 3.0
    maps[4, 4:7, 8:11] = 4.0  # strongest on slice 4
    finding = run(maps)

    assert finding.probability == pytest.approx(platt(4.0, A, B))  # the 3x3 mean at the blob centre is 4
    assert finding.probability == pytest.approx(1 / (1 + math.exp(-7.0)))
    assert finding.urgent  # sigmoid(7) >= 0.9
    assert (finding.kind, finding.series_uid, finding.detector, finding.model) == (FindingKind.NODULE, "2.25.9", "tiny-nodule", IDENTITY)
    (region,) = finding.regions
    assert region.slices == (3, 5)
    assert region.slice_index == 4
    assert region.sop_instance_uid == "2.25.9.4"
    # Cells rows 4:7, cols 8:11 -> item pixels rows 8:14, cols 16:22 -> source rows 24:36, cols 44:56.
    assert region.box == (24, 44, 36, 56)
    assert region.probability == pytest.approx(platt(4.0, A, B))
    assert region.diameter_mm == 6.0  # 3 cells x (1.0 mm x stride 2)


def test_padding_cells_never_make_the_study_score_or_a_region() -> None:
    maps = heatmap()
    maps[4, 4:7, 8:11] = 2.0
    maps[0, 10:13, 13:16] = 30.0  # a hot blob in the padding columns
    maps[1, 14:16, 0:5] = 30.0  # and in the padding rows
    finding = run(maps)
    assert finding.probability == pytest.approx(platt(2.0, A, B))
    assert [r.slice_index for r in finding.regions] == [4]


def test_all_padding_hot_gives_the_floor_score() -> None:
    maps = heatmap()
    maps[:, :, 13:] = 30.0
    maps[:, 14:, :] = 30.0
    finding = run(maps)
    assert finding.probability == pytest.approx(platt(-5.0, A, B))
    assert finding.regions == ()


def test_two_blobs_are_two_regions_strongest_first() -> None:
    maps = heatmap()
    maps[4, 2:5, 2:5] = 3.0  # weaker, upper left
    maps[6, 8:13, 6:11] = 6.0  # stronger, 5 x 5 cells
    finding = run(maps)
    assert [r.slice_index for r in finding.regions] == [6, 4]
    strong, weak = finding.regions
    assert strong.probability == pytest.approx(platt(6.0, A, B))
    assert weak.probability == pytest.approx(platt(3.0, A, B))
    assert strong.probability > weak.probability
    assert finding.probability == pytest.approx(strong.probability)
    assert strong.diameter_mm == 10.0 and weak.diameter_mm == 6.0
    assert strong.slices == (6, 6)
    # Cells rows 8:13, cols 6:11 -> item rows 16:26, cols 12:22 -> source rows 40:60, cols 36:56.
    assert strong.box == (40, 36, 60, 56)


def test_diameter_is_the_largest_extent_on_the_strongest_slice() -> None:
    maps = heatmap()
    maps[2, 5:7, 3:10] = 4.0  # 2 x 7 cells: 14 mm across
    maps[3, 5:6, 3:5] = 1.0  # the same component on the next slice, smaller and weaker
    (region,) = run(maps).regions
    assert region.slice_index == 2
    assert region.slices == (2, 3)
    assert region.diameter_mm == 14.0


def test_only_nodules_get_a_diameter() -> None:
    maps = heatmap()
    maps[4, 4:7, 8:11] = 4.0
    (region,) = run(maps, spec(kind=FindingKind.BLEED)).regions
    assert region.diameter_mm is None


def test_connectivity_across_slices_and_in_plane() -> None:
    maps = heatmap()
    maps[2, 3, 3] = 5.0
    maps[3, 3, 4] = 5.0  # next slice, one column over: the same finding
    maps[5, 3, 3] = 5.0
    maps[5, 4, 4] = 5.0  # diagonal on the same slice: not connected (in-plane face neighbours only)
    maps[6, 10, 10] = 5.0
    maps[7, 11, 11] = 5.0  # diagonal in-plane and on the next slice: not connected either
    regions = run(maps).regions
    assert sorted(r.slices for r in regions) == [(2, 3), (5, 5), (5, 5), (6, 6), (7, 7)]


def test_single_hot_cell_is_smoothed_down_relative_to_a_blob() -> None:
    lone = np.zeros((1, 16, 16), np.float32)
    lone[0, 5, 5] = 9.0
    blob = np.zeros((1, 16, 16), np.float32)
    blob[0, 4:7, 4:7] = 9.0
    valid = np.ones((16, 16), bool)
    assert study_logit(lone, valid) == pytest.approx(1.0)  # 9 / 9 cells
    assert study_logit(blob, valid) == pytest.approx(9.0)
    assert smoothed(lone)[0, 4, 4] == pytest.approx(1.0)  # the mean reaches the neighbours too


def test_region_probability_is_its_smoothed_peak() -> None:
    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, 5, 5] = 9.0  # above the region threshold, but only 1.0 after smoothing
    finding = run(maps)
    (region,) = finding.regions
    assert region.probability == pytest.approx(platt(1.0, A, B))
    assert finding.probability == pytest.approx(platt(1.0, A, B))
    assert not finding.urgent


def test_strongest_slice_is_found_when_all_smoothed_logits_are_negative() -> None:
    # A low region threshold (0.1: logit -2.2) outlines regions whose smoothed logits are negative.
    maps = heatmap()
    maps[2, 4:7, 4:7] = -1.0  # fills the component's box: smoothed -1.0 at its centre
    maps[3, 5, 5] = -2.0  # one cell joined on the next slice: smoothed (-2 - 8 * 5) / 9 = -4.67
    (region,) = run(maps, spec(region=0.1)).regions
    assert region.slices == (2, 3)
    assert region.slice_index == 2
    assert region.probability == pytest.approx(platt(-1.0, A, B))


def test_region_threshold_is_a_probability() -> None:
    maps = heatmap()
    maps[4, 4:7, 8:11] = 1.0  # sigmoid(1) = 0.73
    assert len(run(maps, spec(region=0.7)).regions) == 1
    assert run(maps, spec(region=0.75)).regions == ()


def test_empty_series_scores_the_floor() -> None:
    finding = run(heatmap(0))
    assert finding.regions == ()
    assert finding.probability == pytest.approx(platt(-60.0, A, B))


def test_region_thresholds_of_zero_and_one() -> None:
    maps = heatmap()
    maps[4, 4:7, 8:11] = 100.0
    assert run(maps, spec(region=1.0)).regions == ()  # no logit is a certainty
    (everything,) = run(maps, spec(region=0.0)).regions  # every image cell, none of the padding
    assert everything.slices == (0, SLICES - 1)
    assert everything.box == GEOMETRY.to_source_box((0, 0, 28, 26))
