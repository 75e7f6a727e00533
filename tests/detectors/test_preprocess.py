"""Series -> network items: resampling, crop/pad, CT windows in 2.5D, and the geometry back."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import DetectionError, Family, SeriesArrays
from detectors.preprocess import AIR_HU, Geometry, crop_or_pad, map_mask, normalise_radiograph, prepare, resample, window_channels
from detectors.routing import FindingKind
from detectors.spec import DetectorSpec, InputSpec, Window


def ct_spec(
    spacing_mm: float = 1.0, size: int = 32, windows: tuple[Window, ...] = (Window(500, 1000),), context: int = 0, stride: int = 2
) -> DetectorSpec:
    return DetectorSpec(
        name="tiny-ct",
        version="1",
        kind=FindingKind.BLEED,
        family=Family.CT,
        input=InputSpec(spacing_mm, size, size, context, windows),
        stride=stride,
    )


def xr_spec(spacing_mm: float = 1.0, size: int = 32, stride: int = 4) -> DetectorSpec:
    return DetectorSpec(
        name="tiny-xr",
        version="1",
        kind=FindingKind.FRACTURE,
        family=Family.RADIOGRAPH,
        input=InputSpec(spacing_mm, size, size),
        stride=stride,
    )


def ct_series(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> SeriesArrays:
    uids = tuple(f"2.25.1.{i}" for i in range(hu.shape[0]))
    return SeriesArrays("2.25.1", Family.CT, hu.astype(np.float32), spacing_mm, uids)


def xr_series(image: np.ndarray, spacing_mm: float) -> SeriesArrays:
    return SeriesArrays("2.25.2", Family.RADIOGRAPH, image[None].astype(np.float32), (0.0, spacing_mm, spacing_mm), ("2.25.2.1",))


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


# --- resample ---------------------------------------------------------------


def test_resample_changes_size_by_spacing_over_target() -> None:
    pixels = np.zeros((2, 100, 60), np.float32)
    out, scale = resample(pixels, (0.5, 2.0), 1.0)
    assert out.shape == (2, 50, 120)
    assert scale == (0.5, 2.0)


def test_resample_at_the_target_spacing_is_the_identity() -> None:
    pixels = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    out, scale = resample(pixels, (0.8, 0.8), 0.8)
    assert scale == (1.0, 1.0)
    np.testing.assert_array_equal(out, pixels)


def test_resample_keeps_a_constant_image_constant() -> None:
    out, _ = resample(np.full((1, 40, 40), 37.0, np.float32), (0.7, 0.7), 1.0)
    np.testing.assert_allclose(out, 37.0, rtol=1e-6)


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (1.0, -1.0)])
def test_resample_rejects_non_positive_spacing(spacing: tuple[float, float]) -> None:
    with pytest.raises(DetectionError, match="spacing"):
        resample(np.zeros((1, 4, 4), np.float32), spacing, 1.0)


# --- crop_or_pad ------------------------------------------------------------


def test_pad_keeps_an_off_centre_image_whole_and_fills_the_rest() -> None:
    pixels = np.arange(20 * 20, dtype=np.float32).reshape(1, 20, 20)
    # Centred on a corner, the window would cut the image; it is shifted to hold all of it.
    window, origin = crop_or_pad(pixels, (2.0, 2.0), 30, 30, fill=-7.0)
    assert origin == (-10, -10)
    np.testing.assert_array_equal(window[:, 10:30, 10:30], pixels)
    outside = np.ones((30, 30), bool)
    outside[10:30, 10:30] = False
    assert (window[0][outside] == -7.0).all()


def test_crop_keeps_an_off_centre_body_inside_the_window() -> None:
    pixels = np.zeros((1, 40, 40), np.float32)
    pixels[0, 33:38, 34:39] = 1.0  # the body, near the bottom-right corner
    window, origin = crop_or_pad(pixels, (35.0, 36.0), 10, 10, fill=-7.0)
    assert origin == (30, 30)  # clamped so the window stays inside the image
    assert window.shape == (1, 10, 10)
    assert window.sum() == pixels.sum()  # the whole body, no fill
    assert (window != -7.0).all()


def test_crop_is_centred_when_there_is_room() -> None:
    pixels = np.zeros((1, 40, 40), np.float32)
    _, origin = crop_or_pad(pixels, (20.0, 15.0), 10, 10, fill=0.0)
    assert origin == (15, 10)


# --- window_channels --------------------------------------------------------


def test_window_channels_are_slice_major_with_edges_replicated() -> None:
    hu = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 100.0, 200.0)])  # slice i is i * 100 HU
    spec = InputSpec(1.0, 2, 2, context_slices=1, windows=(Window(100, 200), Window(0, 400)))
    # Window (c, w) maps HU to (hu - (c - w / 2)) / w, clipped to [0, 1]:
    # window 1: 0 -> 0, 100 -> 0.5, 200 -> 1; window 2: 0 -> 0.5, 100 -> 0.75, 200 -> 1.
    out = window_channels(hu, spec)
    assert out.shape == (3, 6, 2, 2)
    expected = np.array(
        [
            [0.0, 0.5, 0.0, 0.5, 0.5, 0.75],  # slice 0: neighbours (0, 0, 1), slice 0 stands in for slice -1
            [0.0, 0.5, 0.5, 0.75, 1.0, 1.0],  # slice 1: neighbours (0, 1, 2)
            [0.5, 0.75, 1.0, 1.0, 1.0, 1.0],  # slice 2: neighbours (1, 2, 2)
        ]
    )
    np.testing.assert_allclose(out[:, :, 0, 0], expected)
    assert out.dtype == np.float32


def test_window_channels_clip_to_unit_range() -> None:
    hu = np.array([[[-3000.0, 3000.0]]], np.float32)
    out = window_channels(hu, InputSpec(1.0, 1, 2, 0, (Window(40, 80),)))
    np.testing.assert_array_equal(out[0, 0], [[0.0, 1.0]])


def test_single_slice_with_context_repeats_itself() -> None:
    hu = np.full((1, 2, 2), 100.0, np.float32)
    out = window_channels(hu, InputSpec(1.0, 2, 2, 2, (Window(100, 200),)))
    np.testing.assert_allclose(out, 0.5)
    assert out.shape == (1, 5, 2, 2)


# --- Geometry ---------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 96])  # item smaller than the resampled image (crop), larger (pad)
def test_a_square_found_in_the_item_maps_back_onto_the_source_square(size: int) -> None:
    hu = np.full((3, 120, 120), AIR_HU, np.float32)
    hu[:, 20:110, 30:115] = 0.0  # an off-centre body
    hu[1, 40:60, 70:90] = 1000.0  # a bright square on the middle slice
    series = ct_series(hu, (2.0, 0.5, 0.5))
    spec = ct_spec(spacing_mm=1.0, size=size)  # half the source's pixels in each direction
    prepared = prepare(series, spec)
    assert prepared.items.shape == (3, 1, size, size)
    geometry = prepared.context["geometry"]
    assert geometry.scale == (0.5, 0.5)
    item_box = box_of(prepared.items[1, 0] > 0.75)  # the window maps 1000 HU to 1 and 0 HU to 0
    source_box = geometry.to_source_box(item_box)
    np.testing.assert_allclose(source_box, (40, 70, 60, 90), atol=2)
    assert not (prepared.items[[0, 2], 0] > 0.75).any()


def test_to_source_box_is_clipped_to_the_image() -> None:
    geometry = Geometry(scale=(0.5, 2.0), origin=(-10, 4), source_shape=(50, 20))
    assert geometry.to_source_box((0, 0, 4, 4)) == (0, 2, 0, 4)
    assert geometry.to_source_box((20, 2, 60, 100)) == (20, 3, 50, 20)


def test_valid_mask_marks_padding() -> None:
    geometry = Geometry(scale=(1.0, 1.0), origin=(-2, -3), source_shape=(4, 5))
    mask = geometry.valid_mask(8, 8)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 3:8] = True
    np.testing.assert_array_equal(mask, expected)


# --- radiographs ------------------------------------------------------------


def test_normalise_radiograph_is_invariant_to_gain_and_offset() -> None:
    image = np.random.default_rng(0).random((1, 40, 30)).astype(np.float32)
    base = normalise_radiograph(image)
    np.testing.assert_allclose(normalise_radiograph(3.5 * image + 120.0), base, atol=1e-4)
    np.testing.assert_allclose(normalise_radiograph(0.01 * image - 2.0), base, atol=1e-4)
    assert base.min() >= -0.5 and base.max() <= 1.5
    assert np.percentile(base, 1) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(base, 99) == pytest.approx(1.0, abs=1e-6)


def test_blank_radiograph_is_a_detection_error() -> None:
    with pytest.raises(DetectionError, match="blank"):
        normalise_radiograph(np.full((1, 20, 20), 0.3, np.float32))
    with pytest.raises(DetectionError, match="blank"):
        prepare(xr_series(np.full((40, 40), 0.3), 0.5), xr_spec())


def test_prepare_radiograph_is_one_normalised_channel() -> None:
    image = np.random.default_rng(1).random((64, 48)).astype(np.float32)
    prepared = prepare(xr_series(image, 0.5), xr_spec(spacing_mm=1.0, size=32))
    assert prepared.items.shape == (1, 1, 32, 32)
    assert prepared.items.dtype == np.float32
    geometry = prepared.context["geometry"]
    assert geometry.source_shape == (64, 48)
    assert geometry.origin == (0, -4)  # 32 x 24 after resampling: 4 columns of padding on each side
    assert (prepared.items[0, 0, :, :4] == 0.0).all()


# --- prepare errors ---------------------------------------------------------


def test_prepare_rejects_a_family_mismatch() -> None:
    series = ct_series(np.zeros((2, 16, 16)), (1.0, 1.0, 1.0))
    with pytest.raises(DetectionError, match="tiny-xr reads radiograph series, got CT"):
        prepare(series, xr_spec())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_prepare_rejects_non_finite_pixels(bad: float) -> None:
    hu = np.zeros((2, 16, 16), np.float32)
    hu[1, 3, 4] = bad
    with pytest.raises(DetectionError, match="non-finite"):
        prepare(ct_series(hu, (1.0, 1.0, 1.0)), ct_spec())


def test_prepare_rejects_an_empty_series() -> None:
    with pytest.raises(DetectionError, match="no pixels"):
        prepare(ct_series(np.zeros((1, 0, 16)), (1.0, 1.0, 1.0)), ct_spec())


# --- map_mask ---------------------------------------------------------------


def test_map_mask_puts_the_target_where_the_lesion_is() -> None:
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    series = xr_series(image, 0.5)
    spec = xr_spec(spacing_mm=1.0, size=32, stride=4)
    prepared = prepare(series, spec)
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 16:32, 32:48] = True  # -> resampled rows 8:16, cols 16:24 -> cells rows 2:4, cols 4:6
    target = map_mask(mask, series, prepared.context["geometry"], spec)
    assert target.shape == (1, 8, 8)
    assert box_of(target[0] > 0.5) == (2, 4, 4, 6)
    assert target[0, 2:4, 4:6].min() > 0.8
    assert target.max() <= 1.0 + 1e-6
    far = np.ones((8, 8), bool)
    far[1:5, 3:7] = False
    assert (target[0][far] == 0).all()


def test_map_mask_follows_the_crop_of_a_ct() -> None:
    hu = np.full((2, 80, 80), AIR_HU, np.float32)
    hu[:, 40:80, 40:80] = 0.0  # body in the bottom-right quarter: the item is cropped there
    series = ct_series(hu, (1.0, 1.0, 1.0))
    spec = ct_spec(spacing_mm=1.0, size=32, stride=2)
    prepared = prepare(series, spec)
    geometry = prepared.context["geometry"]
    assert geometry.origin == (44, 44)
    mask = np.zeros((2, 80, 80), bool)
    mask[1, 60:64, 50:54] = True  # item pixels rows 16:20, cols 6:10 -> cells rows 8:10, cols 3:5
    target = map_mask(mask, series, geometry, spec)
    assert target.shape == (2, 16, 16)
    assert not target[0].any()
    expected = np.zeros((16, 16))
    expected[8:10, 3:5] = 1.0
    np.testing.assert_allclose(target[1], expected)


# --- context in millimetres -------------------------------------------------


def test_context_mm_picks_neighbours_at_the_same_distance_for_any_thickness() -> None:
    from detectors.preprocess import neighbour_step

    spec = InputSpec(1.0, 2, 2, context_slices=1, windows=(Window(0, 100),), context_mm=2.5)
    assert neighbour_step(spec, 0.625) == 4
    assert neighbour_step(spec, 1.25) == 2
    assert neighbour_step(spec, 5.0) == 1  # never the slice itself
    assert neighbour_step(InputSpec(1.0, 2, 2, 1, (Window(0, 100),)), 0.625) == 1  # 0 mm: adjacent slices
    hu = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    out = window_channels(hu, spec, slice_spacing_mm=1.25)  # step 2
    # Window 0/100 maps HU h to h / 100 + 0.5; slice 4's neighbours are slices 2 and 6.
    assert np.allclose(out[4, :, 0, 0], [0.52, 0.54, 0.56])
    assert np.allclose(out[0, :, 0, 0], [0.50, 0.50, 0.52])  # edges repeat themselves
