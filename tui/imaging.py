"""The preview's images: windowing, boxes, fitting to terminal cells, half blocks, the AI's regions, pixels.

Everything here takes values and returns values (arrays, boxes, slice
numbers, lines of cells); the pixels come from :mod:`triage.reading.pixels`;
none of it is a widget. It is kept apart from
:mod:`tui.preview` (the textual widgets and the terminal graphics probe) so
that what the reader is shown (which window, which boxes on which slice, how
a slice is scaled to the cells) can be read and tested without an app, and
so that the widget module holds only what reacts to keys and the terminal.

The half-block lines are :class:`textual.strip.Strip` of :class:`rich.segment.Segment`:
a data type the widget draws, not a widget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from triage.flow.cases import FindingRow
from triage.reading.pixels import SeriesPixels
from triage.reading.views import SeriesImages

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), half-open, in source pixels
RGB = tuple[int, int, int]

# (center, width) in HU, the usual CT display windows.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
    "lung": (-600.0, 1500.0),
    "soft tissue": (40.0, 400.0),
}
WINDOW_NAMES: tuple[str, ...] = tuple(WINDOWS)

BOX_COLOUR: RGB = (255, 200, 0)  # amber: visible on every grey level and not a grey itself
HALF_BLOCK = "▀"


# --- pure: windowing, boxes, fitting, half blocks -----------------------------------------------


def apply_window(hu_slice: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map values through a linear display window to 8-bit grey.

    ``center - width / 2`` and below is black, ``center + width / 2`` and
    above is white, linear in between.

    Parameters
    ----------
    hu_slice
        ``(rows, cols)`` values, HU for CT.
    center, width
        The window, in the same unit; ``width`` must be positive.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` uint8.
    """
    if not width > 0:
        raise ValueError(f'Argument "width" must be a positive window width, got {width}')
    lo = center - width / 2.0
    unit = np.clip((np.asarray(hu_slice, dtype=np.float64) - lo) / width, 0.0, 1.0)
    return np.rint(unit * 255.0).astype(np.uint8)


def unit_to_u8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] display image (a radiograph, already through its VOI LUT) as 8-bit grey."""
    return np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.astype(np.uint8, copy=True)
    raise ValueError(f'Argument "image" must be (rows, cols) grey or (rows, cols, 3) RGB, got shape {image.shape}')


def draw_boxes(gray_u8: np.ndarray, boxes: Iterable[Box], colour: RGB = BOX_COLOUR, thickness: int = 1) -> np.ndarray:
    """The image as RGB with each box's outline drawn in ``colour``.

    Parameters
    ----------
    gray_u8
        ``(rows, cols)`` uint8 grey (or ``(rows, cols, 3)`` RGB).
    boxes
        ``(row0, col0, row1, col1)``, half-open, in this image's pixels: the
        outline is rows ``row0`` and ``row1 - 1`` and columns ``col0`` and
        ``col1 - 1``, ``thickness`` pixels inwards. Parts outside the image are
        clipped; an empty box draws nothing.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` uint8, a new array.
    """
    rgb = _as_rgb(gray_u8)
    rows, cols = rgb.shape[:2]
    t = max(1, int(thickness))
    for box in boxes:
        r0, c0, r1, c1 = (int(v) for v in box)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, rows), min(c1, cols)
        if r1 <= r0 or c1 <= c0:
            continue
        rgb[r0 : min(r0 + t, r1), c0:c1] = colour
        rgb[max(r1 - t, r0) : r1, c0:c1] = colour
        rgb[r0:r1, c0 : min(c0 + t, c1)] = colour
        rgb[r0:r1, max(c1 - t, c0) : c1] = colour
    return rgb


def fit_shape(rows: int, cols: int, cells_w: int, cells_h: int, pixel_aspect: float = 1.0) -> tuple[int, int]:
    """The ``(rows, cols)`` an image is scaled to for ``cells_w`` x ``cells_h`` half-block cells.

    Each cell shows 1 column x 2 rows of pixels, and a terminal cell is about
    twice as tall as wide, so a half-block pixel is about square: the image
    keeps its shape, scaled by one factor, never enlarged. ``pixel_aspect`` is
    row spacing / column spacing (1 for square pixels).
    """
    if rows <= 0 or cols <= 0 or cells_w <= 0 or cells_h <= 0:
        return (0, 0)
    tall = rows * pixel_aspect  # the image's height in column-pixel units
    scale = min(cells_w / cols, 2 * cells_h / tall, 1.0)
    out_rows = min(2 * cells_h, max(1, round(tall * scale)))
    out_cols = min(cells_w, max(1, round(cols * scale)))
    return (out_rows, out_cols)


def fit(image: np.ndarray, cells_w: int, cells_h: int, pixel_aspect: float = 1.0) -> np.ndarray:
    """Scale ``image`` (grey or RGB, uint8) to fit ``cells_w`` x ``cells_h`` half-block cells.

    See :func:`fit_shape` for the size. Area averaging (PIL's box filter):
    deterministic, and a small bright spot stays visible as a lighter pixel.
    An image that already fits is returned unchanged (a copy).
    """
    from PIL import Image as PILImage

    image = np.asarray(image, dtype=np.uint8)
    rows, cols = image.shape[:2]
    out_rows, out_cols = fit_shape(rows, cols, cells_w, cells_h, pixel_aspect)
    if (out_rows, out_cols) == (rows, cols):
        return image.copy()
    if out_rows == 0:
        return np.zeros((0, 0, *image.shape[2:]), dtype=np.uint8)
    resized = PILImage.fromarray(image).resize((out_cols, out_rows), PILImage.Resampling.BOX)
    return np.asarray(resized, dtype=np.uint8)


def scale_box(box: Box, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> Box:
    """A source-pixel box in the pixels of the image scaled from ``src_shape`` to ``dst_shape``.

    The scaled box covers every destination pixel the source box touches, and
    at least one, so that a small region never vanishes.
    """
    fr, fc = dst_shape[0] / src_shape[0], dst_shape[1] / src_shape[1]
    r0, c0, r1, c1 = box
    sr0, sc0 = math.floor(r0 * fr), math.floor(c0 * fc)
    sr1, sc1 = max(sr0 + 1, math.ceil(r1 * fr)), max(sc0 + 1, math.ceil(c1 * fc))
    return (sr0, sc0, min(sr1, dst_shape[0]), min(sc1, dst_shape[1]))


_STYLES: dict[tuple[RGB, RGB], Style] = {}


def _style(top: RGB, bottom: RGB) -> Style:
    key = (top, bottom)
    style = _STYLES.get(key)
    if style is None:
        if len(_STYLES) > 65536:  # grey x grey plus box colours stays far below; bound it anyway
            _STYLES.clear()
        style = _STYLES[key] = Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))
    return style


def half_block_lines(rgb: np.ndarray) -> list[Strip]:
    """One :class:`textual.strip.Strip` per two pixel rows: "▀" with fg = top pixel, bg = bottom pixel.

    An odd last row gets a black bottom half. Neighbouring cells of the same
    colours share one segment.
    """
    rgb = _as_rgb(rgb)
    rows, cols = rgb.shape[:2]
    if rows % 2:
        rgb = np.concatenate([rgb, np.zeros((1, cols, 3), dtype=np.uint8)], axis=0)
    lines: list[Strip] = []
    for y in range(0, rgb.shape[0], 2):
        tops, bottoms = rgb[y].tolist(), rgb[y + 1].tolist()
        segments: list[Segment] = []
        run_key: tuple[Any, Any] | None = None
        run = 0
        for top, bottom in zip(tops, bottoms, strict=True):
            key = (tuple(top), tuple(bottom))
            if key == run_key:
                run += 1
                continue
            if run_key is not None:
                segments.append(Segment(HALF_BLOCK * run, _style(*run_key)))
            run_key, run = key, 1
        if run_key is not None:
            segments.append(Segment(HALF_BLOCK * run, _style(*run_key)))
        lines.append(Strip(segments, cols))
    return lines


@dataclass(frozen=True)
class HalfBlockRender:
    """A slice rendered for the terminal: the lines and the scaled image they show."""

    lines: list[Strip]
    shape: tuple[int, int]  # (rows, cols) of the scaled image, in pixels (2 rows per line)
    boxes: tuple[Box, ...]  # the boxes as drawn, in scaled pixels


def render_half_block(
    gray_u8: np.ndarray, boxes: Sequence[Box], cells_w: int, cells_h: int, *, pixel_aspect: float = 1.0, colour: RGB = BOX_COLOUR
) -> HalfBlockRender:
    """Scale a grey slice to the cells, draw the boxes at the scaled size, and make the lines."""
    small = fit(gray_u8, cells_w, cells_h, pixel_aspect)
    if small.size == 0:
        return HalfBlockRender([], (0, 0), ())
    scaled = tuple(scale_box(b, gray_u8.shape, small.shape) for b in boxes)
    return HalfBlockRender(half_block_lines(draw_boxes(small, scaled, colour)), small.shape[:2], scaled)


# --- pure: the AI's regions -----------------------------------------------------------------------


def _region_slices(region: dict[str, Any]) -> tuple[int, int] | None:
    slices = region.get("slices")
    if slices is not None and len(slices) == 2:
        return int(slices[0]), int(slices[1])
    if region.get("slice_index") is not None:
        return int(region["slice_index"]), int(region["slice_index"])
    return None


def _regions_of(findings: Iterable[FindingRow], series_uid: str) -> Iterable[tuple[FindingRow, dict[str, Any]]]:
    for finding in findings:
        for region in finding.regions:
            if region.get("series_uid", finding.series_uid) == series_uid and region.get("box") is not None:
                yield finding, region


def regions_for_slice(findings: Iterable[FindingRow], series_uid: str, slice_index: int) -> list[Box]:
    """The boxes of the regions of ``series_uid`` that cover ``slice_index``.

    A region covers slices ``slices[0]`` to ``slices[1]``, inclusive, in
    volume order (the order :func:`dicom_io.pixels.load_volume` gives, which
    is the one the detectors index); its ``box`` is in source pixels.
    """
    out: list[Box] = []
    for _, region in _regions_of(findings, series_uid):
        span = _region_slices(region)
        if span is not None and span[0] <= slice_index <= span[1]:
            box = tuple(int(v) for v in region["box"])
            if len(box) == 4 and box not in out:
                out.append(box)
    return out


def flagged_slices(findings: Iterable[FindingRow], series_uid: str) -> list[int]:
    """Every slice of ``series_uid`` that some region covers, ascending."""
    covered: set[int] = set()
    for _, region in _regions_of(findings, series_uid):
        span = _region_slices(region)
        if span is not None:
            covered.update(range(span[0], span[1] + 1))
    return sorted(covered)


def next_flagged(flagged: Sequence[int], current: int) -> int | None:
    """The first flagged slice after ``current``, wrapping round; None if none is flagged."""
    if not flagged:
        return None
    later = [s for s in flagged if s > current]
    return later[0] if later else flagged[0]


def strongest_slice(findings: Iterable[FindingRow], series_uid: str) -> int | None:
    """The strongest slice of the most probable region of ``series_uid``, or None."""
    best: tuple[float, int] | None = None
    for finding, region in _regions_of(findings, series_uid):
        index = region.get("slice_index")
        if index is None:
            span = _region_slices(region)
            index = span[0] if span else None
        if index is None:
            continue
        p = float(region.get("probability", finding.probability))
        if best is None or p > best[0]:
            best = (p, int(index))
    return None if best is None else best[1]


def default_window(series: SeriesImages) -> str:
    """A first window preset from what the series shows: brain for heads, lung for chests, else soft tissue."""
    words = " ".join(x or "" for x in (series.body_part, series.description)).upper()
    if any(w in words for w in ("HEAD", "BRAIN", "SKULL")):
        return "brain"
    if any(w in words for w in ("CHEST", "LUNG", "THORAX")):
        return "lung"
    return "soft tissue"


# --- loading pixels (I/O) -----------------------------------------------------------------------


def display_slice(pixels: SeriesPixels, index: int, window: str) -> np.ndarray:
    """Slice ``index`` as 8-bit grey: through the HU preset ``window`` for CT, as stored otherwise."""
    values = pixels.values[index]
    if pixels.radiograph:
        return unit_to_u8(values)
    if pixels.hu_windows:
        return apply_window(values, *WINDOWS[window])
    lo, hi = pixels.display_range
    return apply_window(values, (lo + hi) / 2.0, max(hi - lo, 1e-6))


__all__ = [
    "BOX_COLOUR",
    "HALF_BLOCK",
    "WINDOWS",
    "WINDOW_NAMES",
    "Box",
    "HalfBlockRender",
    "RGB",
    "apply_window",
    "default_window",
    "display_slice",
    "draw_boxes",
    "fit",
    "fit_shape",
    "flagged_slices",
    "half_block_lines",
    "next_flagged",
    "regions_for_slice",
    "render_half_block",
    "scale_box",
    "strongest_slice",
    "unit_to_u8",
]
