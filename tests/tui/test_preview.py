"""The image preview's pure parts (windowing, boxes, fitting, half blocks, regions)
and rendering a real sample series with its ground-truth box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from textual.strip import Strip

from dicom_io.pixels import PixelDataError
from triage.flow.cases import FindingRow
from triage.reading.pixels import read_series_pixels
from triage.reading.views import SeriesImages
from tui.imaging import (
    BOX_COLOUR,
    HALF_BLOCK,
    WINDOWS,
    apply_window,
    default_window,
    display_slice,
    draw_boxes,
    fit,
    fit_shape,
    flagged_slices,
    half_block_lines,
    next_flagged,
    regions_for_slice,
    render_half_block,
    scale_box,
    strongest_slice,
)
from tui.preview import probe_graphics

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_studies"


def cell(strip: Strip, x: int) -> tuple[str, tuple[int, int, int], tuple[int, int, int]]:
    """(character, foreground, background) of cell ``x`` of a line."""
    (segment,) = list(strip.crop(x, x + 1))
    style = segment.style
    assert style is not None and style.color is not None and style.bgcolor is not None
    fg, bg = tuple(style.color.get_truecolor()), tuple(style.bgcolor.get_truecolor())
    return segment.text, fg, bg


def finding(series_uid: str, regions: list[dict], probability: float = 0.9, fid: int = 1) -> FindingRow:
    return FindingRow(
        id=fid,
        study_pk=1,
        series_uid=series_uid,
        kind="bleed",
        probability=probability,
        operating_point=0.5,
        urgent=True,
        model_name="bleed-ct",
        model_version="1.0.0",
        weights_sha256="ab" * 32,
        regions=tuple(regions),
    )


# --- windows ------------------------------------------------------------------------------------


def test_window_presets_are_the_usual_ct_windows() -> None:
    assert WINDOWS == {"brain": (40, 80), "subdural": (75, 215), "bone": (600, 2800), "lung": (-600, 1500), "soft tissue": (40, 400)}


def test_apply_window_maps_the_window_linearly_to_0_255_and_clips_outside() -> None:
    hu = np.array([[-1000.0, 0.0, 20.0, 40.0], [60.0, 80.0, 81.0, 3000.0]])
    out = apply_window(hu, 40, 80)  # brain: 0 HU black, 80 HU white
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 64, 128], [191, 255, 255, 255]]
    lung = apply_window(np.array([[-1350.0, -600.0, 150.0]]), *WINDOWS["lung"])
    assert lung.tolist() == [[0, 128, 255]]


def test_apply_window_refuses_a_non_positive_width() -> None:
    with pytest.raises(ValueError, match='"width"'):
        apply_window(np.zeros((2, 2)), 40, 0)


# --- boxes --------------------------------------------------------------------------------------


def test_draw_boxes_colours_exactly_the_outline_of_the_half_open_box() -> None:
    gray = np.full((10, 12), 50, dtype=np.uint8)
    rgb = draw_boxes(gray, [(2, 3, 6, 8)], colour=(255, 0, 0))
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    red = np.all(rgb == (255, 0, 0), axis=2)
    expected = np.zeros((10, 12), dtype=bool)
    expected[2, 3:8] = expected[5, 3:8] = True  # rows row0 and row1 - 1
    expected[2:6, 3] = expected[2:6, 7] = True  # columns col0 and col1 - 1
    assert np.array_equal(red, expected)
    assert np.all(rgb[~red] == 50)  # everything else is the grey, untouched
    assert np.all(gray == 50)  # the input is not modified


def test_draw_boxes_clips_to_the_image_and_skips_empty_boxes() -> None:
    rgb = draw_boxes(np.zeros((4, 4), dtype=np.uint8), [(2, 2, 9, 9), (1, 1, 1, 3)], colour=(0, 255, 0))
    green = np.all(rgb == (0, 255, 0), axis=2)
    assert green[2, 2:].all() and green[2:, 2].all() and green[3, 2:].all() and green[2:, 3].all()
    assert not green[:2].any() and not green[:, :2].any()


# --- fitting and half blocks --------------------------------------------------------------------


def test_fit_keeps_the_aspect_and_never_enlarges() -> None:
    # A cell is 1 x 2 pixels: 40 x 30 cells hold 40 x 60 pixels.
    assert fit_shape(256, 256, 40, 30) == (40, 40)
    assert fit_shape(256, 512, 40, 30) == (20, 40)
    assert fit_shape(512, 256, 40, 10) == (20, 10)
    assert fit_shape(8, 6, 40, 30) == (8, 6)  # small images stay as they are
    assert fit_shape(100, 100, 100, 100, pixel_aspect=0.5) == (50, 100)  # rows 0.5 mm, columns 1 mm
    out = fit(np.zeros((256, 512, 3), dtype=np.uint8), 40, 30)
    assert out.shape == (20, 40, 3) and out.dtype == np.uint8


def test_fit_averages_areas() -> None:
    image = np.zeros((4, 4), dtype=np.uint8)
    image[:2, :2] = 200
    assert fit(image, 2, 1).tolist() == [[200, 0], [0, 0]]


def test_half_block_cells_carry_top_pixel_as_foreground_and_bottom_as_background() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    (line,) = half_block_lines(rgb)
    assert line.cell_length == 2
    assert cell(line, 0) == (HALF_BLOCK, (255, 0, 0), (0, 0, 255))
    assert cell(line, 1) == (HALF_BLOCK, (0, 255, 0), (10, 20, 30))


def test_half_block_pads_an_odd_last_row_with_black_and_merges_equal_neighbours() -> None:
    rgb = np.full((3, 5, 3), 7, dtype=np.uint8)
    lines = half_block_lines(rgb)
    assert len(lines) == 2
    assert len(list(lines[0])) == 1 and lines[0].text == HALF_BLOCK * 5  # one segment for the run
    assert cell(lines[1], 4) == (HALF_BLOCK, (7, 7, 7), (0, 0, 0))


def test_scale_box_covers_what_the_source_box_touches_and_never_vanishes() -> None:
    assert scale_box((165, 121, 188, 144), (256, 256), (64, 64)) == (41, 30, 47, 36)
    assert scale_box((10, 10, 11, 11), (256, 256), (32, 32)) == (1, 1, 2, 2)


def test_render_half_block_draws_the_box_after_scaling() -> None:
    gray = np.full((100, 100), 128, dtype=np.uint8)
    out = render_half_block(gray, [(40, 40, 60, 60)], 20, 10)  # 20 x 20 pixels
    assert out.shape == (20, 20) and out.boxes == ((8, 8, 12, 12),)
    assert len(out.lines) == 10
    # Row 8 is the top half of line 4; row 11 the bottom half of line 5.
    assert cell(out.lines[4], 10)[1:] == (BOX_COLOUR, (128, 128, 128))  # row 9 is inside the box
    assert cell(out.lines[4], 8)[1:] == (BOX_COLOUR, BOX_COLOUR)  # column 8 is the left edge
    assert cell(out.lines[5], 10)[1:] == ((128, 128, 128), BOX_COLOUR)  # row 10 inside, row 11 the bottom edge
    assert cell(out.lines[2], 8) == (HALF_BLOCK, (128, 128, 128), (128, 128, 128))


# --- regions ------------------------------------------------------------------------------------


def test_regions_cover_their_slice_range_inclusive_and_only_their_series() -> None:
    findings = [
        finding(
            "S1",
            [
                {"series_uid": "S1", "slice_index": 15, "slices": [14, 17], "box": [1, 2, 3, 4]},
                {"series_uid": "S1", "slice_index": 2, "slices": [2, 2], "box": [5, 6, 7, 8], "probability": 0.95},
            ],
        ),
        finding("S2", [{"series_uid": "S2", "slice_index": 15, "slices": [15, 15], "box": [9, 9, 10, 10]}], fid=2),
    ]
    assert regions_for_slice(findings, "S1", 13) == []
    assert regions_for_slice(findings, "S1", 14) == [(1, 2, 3, 4)]
    assert regions_for_slice(findings, "S1", 17) == [(1, 2, 3, 4)]
    assert regions_for_slice(findings, "S1", 18) == []
    assert regions_for_slice(findings, "S2", 15) == [(9, 9, 10, 10)]
    assert flagged_slices(findings, "S1") == [2, 14, 15, 16, 17]
    assert next_flagged([2, 14, 15], 0) == 2
    assert next_flagged([2, 14, 15], 2) == 14
    assert next_flagged([2, 14, 15], 15) == 2  # wraps round
    assert next_flagged([], 3) is None
    assert strongest_slice(findings, "S1") == 2  # the region with probability 0.95


def test_default_window_follows_the_body_part() -> None:
    def series(body_part: str | None, description: str | None) -> SeriesImages:
        return SeriesImages("1.2", "CT", description, body_part, None, 1, (), ())

    assert default_window(series("HEAD", None)) == "brain"
    assert default_window(series(None, "CT CHEST WO")) == "lung"
    assert default_window(series("ABDOMEN", None)) == "soft tissue"


# --- a real sample series -----------------------------------------------------------------------


def _sample_series(folder: str) -> tuple[SeriesImages, dict]:
    manifest = json.loads((SAMPLES / "manifest.json").read_text())
    entry = next(s for s in manifest["studies"] if s["folder"] == folder)
    paths = sorted((SAMPLES / folder).glob("*.dcm"))
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    order = sorted(range(len(paths)), key=lambda i: int(headers[i].InstanceNumber))
    series = SeriesImages(
        series_uid=entry["series_uid"],
        modality=entry["modality"],
        description=None,
        body_part=entry["body_part"],
        manufacturer=None,
        series_number=1,
        files=tuple(paths[i] for i in order),
        sop_instance_uids=tuple(str(headers[i].SOPInstanceUID) for i in order),
    )
    return series, entry


def test_a_real_head_ct_renders_the_bleed_box_at_its_scaled_place() -> None:
    series, entry = _sample_series("05_head_ct")
    truth = entry["findings"][0]
    pixels = read_series_pixels(series)
    assert pixels.n_slices == 24 and pixels.hu_windows and not pixels.radiograph
    # The manifest's slices are volume order, the order the preview pages through.
    first, last = truth["slices"]
    assert list(pixels.sop_instance_uids[first : last + 1]) == truth["sop_instance_uids"]

    region = {"series_uid": series.series_uid, "slice_index": first + 1, "slices": [first, last], "box": truth["box"]}
    findings = [finding(series.series_uid, [region])]
    boxes = regions_for_slice(findings, series.series_uid, first + 1)
    assert boxes == [tuple(truth["box"])]

    gray = display_slice(pixels, first + 1, "brain")
    out = render_half_block(gray, boxes, 64, 32)  # 256 x 256 -> 64 x 64 pixels
    assert out.shape == (64, 64)
    r0, c0, r1, c1 = scale_box(tuple(truth["box"]), gray.shape, out.shape)
    assert out.boxes == ((r0, c0, r1, c1),)
    top_line = out.lines[r0 // 2]
    for x in (c0, (c0 + c1) // 2, c1 - 1):  # along the top edge
        _, fg, bg = cell(top_line, x)
        assert (fg if r0 % 2 == 0 else bg) == BOX_COLOUR

    # Inside the box the blood is shown in grey, brighter than the brain above the box.
    def pixel(row: int, col: int) -> tuple[int, int, int]:
        _, fg, bg = cell(out.lines[row // 2], col)
        return fg if row % 2 == 0 else bg

    inside, above = pixel((r0 + r1) // 2, (c0 + c1) // 2), pixel(r0 - 3, (c0 + c1) // 2)
    assert inside != BOX_COLOUR and inside[0] == inside[1] == inside[2]
    assert inside[0] > above[0] + 40
    # Without boxes nothing in the image has the box colour.
    plain = render_half_block(gray, [], 64, 32)
    colours = {c for line in plain.lines for x in range(line.cell_length) for c in cell(line, x)[1:]}
    assert BOX_COLOUR not in colours


def test_a_real_radiograph_loads_as_one_slice_without_windows() -> None:
    series, entry = _sample_series("08_extremity_xr")
    pixels = read_series_pixels(series)
    assert pixels.radiograph and not pixels.hu_windows and pixels.n_slices == 1
    gray = display_slice(pixels, 0, "brain")  # the preset is ignored: the radiograph has its own window
    assert gray.dtype == np.uint8 and gray.shape == pixels.values.shape[1:]
    assert np.array_equal(gray, display_slice(pixels, 0, "bone"))


def test_loading_a_series_without_files_or_images_is_a_pixel_data_error() -> None:
    with pytest.raises(PixelDataError, match="no stored files"):
        read_series_pixels(SeriesImages("1.2.3", "CT", None, None, None, 1, (), ()))
    with pytest.raises(PixelDataError, match=r"\(SR\) is not an image series"):
        read_series_pixels(SeriesImages("1.2.3", "SR", None, None, None, 1, (Path("a"), Path("b")), ("1", "2")))
    with pytest.raises(PixelDataError, match="not a readable DICOM file"):
        read_series_pixels(SeriesImages("1.2.3", "CT", None, None, None, 1, (REPO / "README.md",), ("1",)))


def test_the_graphics_probe_is_not_run_in_tmux_or_when_not_allowed(monkeypatch) -> None:
    assert probe_graphics(allow=False) is None
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    assert probe_graphics() is None  # half blocks: tmux does not pass graphics through by default
