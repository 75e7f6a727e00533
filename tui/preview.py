"""The image preview widget: one slice of a series, windowed, with the AI's regions as boxes.

What is drawn (windowing, boxes, fitting to terminal cells, half-block
lines, the regions of a slice) and loading a series' pixels live in
:mod:`tui.imaging`; this module holds the terminal graphics probe and the
textual widgets that show the result and react to keys.

Two renderers: real pixels through textual-image (Kitty graphics protocol or
Sixel) where the terminal answered the graphics probe before the app started
(:func:`probe_graphics`), and otherwise our own Unicode half-block renderer
("▀", foreground = top pixel, background = bottom pixel), which works in any
true-colour terminal and in tmux and is the one used under ``run_test``. The
boxes are drawn after the image is scaled to the cells, so a 1-pixel outline
survives the downscale.

What the preview may show is decided by its caller: in blinded mode, before
the reader's impression, it is given no findings at all; with display
``flag_only`` it never draws marks, whatever it is given.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from triage.errors import USER_ERRORS
from triage.flow.cases import FindingRow
from triage.reading.pixels import SeriesPixels, read_series_pixels
from triage.reading.views import SeriesImages
from tui.imaging import (
    WINDOW_NAMES,
    WINDOWS,
    Box,
    HalfBlockRender,
    default_window,
    display_slice,
    draw_boxes,
    flagged_slices,
    next_flagged,
    regions_for_slice,
    render_half_block,
    strongest_slice,
)

log = logging.getLogger(__name__)


# --- graphics protocols ---------------------------------------------------------------------------

_graphics: str | None = None  # "sixel" | "tgp" once probed and supported


def probe_graphics(allow: bool = True) -> str | None:
    """Ask the terminal whether it shows real pixels (Sixel or the Kitty graphics protocol).

    Call it once *before* the app starts: textual-image asks the terminal
    with escape sequences and reads the answer from stdin, which it cannot
    do once textual reads stdin. Without this call the preview uses the
    half-block renderer. Inside tmux (``$TMUX``) or when ``allow`` is False it
    does not ask: half blocks work everywhere.

    Returns
    -------
    str or None
        ``"sixel"``, ``"tgp"``, or None for half blocks.
    """
    global _graphics
    _graphics = None
    if not allow or os.environ.get("TMUX") or not (sys.__stdout__ and sys.__stdout__.isatty()):
        return None
    try:
        # Importing these asks the terminal (graphics support, cell size in pixels) and caches the answers.
        import textual_image.widget  # noqa: F401  imported for its terminal probe
        from textual_image.renderable import Image as best
        from textual_image.renderable.sixel import Image as SixelRenderable
        from textual_image.renderable.tgp import Image as TGPRenderable
    except Exception:  # a terminal that answers nonsense must not stop the worklist
        log.warning("terminal graphics probe failed; using half blocks", exc_info=True)
        return None
    _graphics = "sixel" if best is SixelRenderable else "tgp" if best is TGPRenderable else None
    return _graphics


def graphics_protocol() -> str | None:
    """What :func:`probe_graphics` found (None: half blocks)."""
    return _graphics


# --- the widgets ----------------------------------------------------------------------------------


class HalfBlockImage(Widget):
    """A grey slice with boxes as half-block cells, scaled to the widget's size."""

    DEFAULT_CSS = "HalfBlockImage { width: 1fr; height: 1fr; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._gray: np.ndarray | None = None
        self._boxes: tuple[Box, ...] = ()
        self._aspect = 1.0
        self._cache: tuple[tuple[int, int], HalfBlockRender] | None = None

    def set_image(self, gray_u8: np.ndarray | None, boxes: Sequence[Box] = (), pixel_aspect: float = 1.0) -> None:
        self._gray, self._boxes, self._aspect = gray_u8, tuple(boxes), pixel_aspect
        self._cache = None
        self.refresh()

    def rendered(self, cells_w: int | None = None, cells_h: int | None = None) -> HalfBlockRender:
        """The current slice as rendered at ``cells_w`` x ``cells_h`` (default: the widget's size)."""
        width = cells_w if cells_w is not None else self.size.width
        height = cells_h if cells_h is not None else self.size.height
        size = (width, height)
        if self._gray is None:
            return HalfBlockRender([], (0, 0), ())
        if self._cache is None or self._cache[0] != size:
            self._cache = (size, render_half_block(self._gray, self._boxes, *size, pixel_aspect=self._aspect))
        return self._cache[1]

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        lines = self.rendered().lines
        if y < len(lines):
            return lines[y].extend_cell_length(width, self.rich_style)
        return Strip.blank(width, self.rich_style)


class ImagePreview(Vertical, can_focus=True):
    """A series, one slice at a time, with a window preset and (display "regions") the AI's boxes.

    Parameters
    ----------
    display
        ``"regions"`` draws the AI's regions (detection aid, ``b`` toggles);
        ``"flag_only"`` never draws marks (passive triage).
    """

    DEFAULT_CSS = """
    ImagePreview { height: 1fr; width: 1fr; }
    ImagePreview > #preview-info { height: auto; color: $text-muted; }
    ImagePreview > #preview-message { height: auto; padding: 1 0; }
    ImagePreview > .preview-halfblock { height: 1fr; width: 1fr; }
    ImagePreview > .preview-graphics { height: auto; width: auto; }
    """
    BINDINGS = [
        Binding("down,j", "slice(1)", "Next slice", key_display="↓/j"),
        Binding("up,k", "slice(-1)", "Prev slice", key_display="↑/k", show=False),
        Binding("pagedown", "slice(10)", "+10 slices", show=False),
        Binding("pageup", "slice(-10)", "-10 slices", show=False),
        Binding("n", "next_flagged", "Next flagged slice"),
        Binding("w", "cycle_window", "Window"),
        Binding("b", "toggle_regions", "Regions on/off"),
    ]

    @dataclass
    class Loaded(Message):
        """Posted from the loading thread: the pixels, or why there are none."""

        token: int
        pixels: SeriesPixels | None
        error: str | None

    def __init__(self, *, display: str = "regions", id: str | None = None) -> None:
        super().__init__(id=id)
        self.display_mode = display
        self.series: SeriesImages | None = None
        self.findings: tuple[FindingRow, ...] = ()
        self.pixels: SeriesPixels | None = None
        self.error: str | None = None
        self.is_loading = False
        self.slice_index = 0
        self.window = "soft tissue"
        self.regions_on = True
        self._token = 0
        self._use_graphics = False

    # -- composition ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # Under run_test (headless) and whenever the probe found nothing: half blocks, deterministic.
        self._use_graphics = graphics_protocol() is not None and not self.app.is_headless
        yield Static("", id="preview-info")
        yield Static("no series selected", id="preview-message")
        if self._use_graphics:
            from textual_image.widget import Image as GraphicsImage

            image: Widget = GraphicsImage(classes="preview-image preview-graphics")  # auto x auto keeps the aspect
        else:
            image = HalfBlockImage(id="preview-halfblock")
            image.add_class("preview-image", "preview-halfblock")
        yield image

    # -- what to show -----------------------------------------------------------------------------

    def show(self, series: SeriesImages | None, findings: Sequence[FindingRow] = ()) -> None:
        """Show ``series`` (loading its pixels in a thread if it changed) with ``findings``' regions.

        Give no findings when the AI output must stay hidden (blinded reads).
        """
        self.findings = tuple(findings)
        changed = series is None or self.series is None or (series.series_uid, series.files) != (self.series.series_uid, self.series.files)
        if not changed:
            self._redraw()
            return
        self.series = series
        self.pixels, self.error = None, None
        self._token += 1
        if series is None:
            self.is_loading = False
            self._redraw()
            return
        self.is_loading = True
        self.window = default_window(series)
        self._redraw()
        self._load(series, self._token)

    @work(thread=True, exclusive=True, group="preview-load")
    def _load(self, series: SeriesImages, token: int) -> None:
        try:
            pixels = read_series_pixels(series)
        except USER_ERRORS as exc:
            self.post_message(self.Loaded(token, None, str(exc)))
        except Exception as exc:  # a bad file must show as a message, not take the screen down
            log.exception("preview of series %s failed", series.series_uid)
            self.post_message(self.Loaded(token, None, f"cannot show series {series.series_uid}: {exc}"))
        else:
            self.post_message(self.Loaded(token, pixels, None))

    def on_image_preview_loaded(self, message: Loaded) -> None:
        message.stop()
        if message.token != self._token:  # a series chosen since; its own load will arrive
            return
        self.is_loading = False
        self.pixels, self.error = message.pixels, message.error
        if self.pixels is not None:
            start = strongest_slice(self.findings, self.pixels.series_uid) if self.marks_allowed else None
            if start is not None and 0 <= start < self.pixels.n_slices:
                self.slice_index = start
            else:
                self.slice_index = self.pixels.n_slices // 2
        self._redraw()

    @property
    def marks_allowed(self) -> bool:
        """Whether regions may be drawn at all (display "regions"; "flag_only" never)."""
        return self.display_mode == "regions"

    def visible_boxes(self) -> list[Box]:
        """The boxes drawn on the current slice."""
        if not (self.marks_allowed and self.regions_on) or self.pixels is None:
            return []
        return regions_for_slice(self.findings, self.pixels.series_uid, self.slice_index)

    def half_block(self) -> HalfBlockImage | None:
        """The half-block image widget (None when real pixels are shown through textual-image)."""
        found = self.query(HalfBlockImage)
        return found.first() if found else None

    # -- drawing ----------------------------------------------------------------------------------

    def _info(self) -> Text:
        text = Text()
        series = self.series
        if series is not None:
            number = f"#{series.series_number} " if series.series_number is not None else ""
            text.append(f"{number}{series.modality or '?'} {series.description or ''}".strip(), style="bold")
        pixels = self.pixels
        if pixels is None:
            return text
        text.append(f"  slice {self.slice_index + 1}/{pixels.n_slices}")
        if pixels.hu_windows:
            center, width = WINDOWS[self.window]
            text.append(f"  window {self.window} ({center:g}/{width:g})")
        elif pixels.radiograph:
            text.append("  radiograph: shown with its own window (presets are for CT)")
        else:
            text.append(f"  auto window ({pixels.modality}: presets are for CT HU)")
        if not self.marks_allowed:
            text.append("  flag only: no marks")
        elif not self.regions_on:
            text.append("  AI regions off (b)")
        else:
            flagged = flagged_slices(self.findings, pixels.series_uid)
            boxes = self.visible_boxes()
            if flagged:
                text.append(f"  AI regions: {len(boxes)} on this slice", style="yellow" if boxes else "")
                text.append(f", flagged slices {_ranges(flagged)} (n)")
        return text

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        message = self.query_one("#preview-message", Static)
        image = self.query_one(".preview-image", Widget)
        self.query_one("#preview-info", Static).update(self._info())
        if self.pixels is None:
            if self.series is None:
                note = "no image series to show"
            elif self.is_loading:
                note = "loading..."
            else:
                note = f"cannot show this series: {self.error}"
            message.update(note)
            message.display = True
            image.display = False
            self._set_image(image, None, [])
            return
        message.display = False
        image.display = True
        gray = display_slice(self.pixels, self.slice_index, self.window)
        self._set_image(image, gray, self.visible_boxes())

    def _set_image(self, image: Widget, gray: np.ndarray | None, boxes: list[Box]) -> None:
        aspect = self.pixels.pixel_aspect if self.pixels is not None else 1.0
        if isinstance(image, HalfBlockImage):
            image.set_image(gray, boxes, aspect)
            return
        from PIL import Image as PILImage

        graphics: Any = image  # textual-image's Image widget, which ships no types: ``image`` is what it shows
        if gray is None:
            graphics.image = None
            return
        # Real pixels: boxes at source resolution, thick enough to survive the terminal's scaling.
        thickness = max(1, round(max(gray.shape) / 256))
        picture = PILImage.fromarray(draw_boxes(gray, boxes, thickness=thickness))
        if abs(aspect - 1.0) > 0.01:  # non-square pixels: the terminal shows square ones
            picture = picture.resize((picture.width, max(1, round(picture.height * aspect))), PILImage.Resampling.BOX)
        graphics.image = picture

    # -- actions ----------------------------------------------------------------------------------

    def go_to(self, index: int) -> None:
        """Show slice ``index`` (clamped to the series)."""
        if self.pixels is None:
            return
        index = min(max(index, 0), self.pixels.n_slices - 1)
        if index != self.slice_index:
            self.slice_index = index
            self._redraw()

    def action_slice(self, delta: int) -> None:
        self.go_to(self.slice_index + delta)

    def action_next_flagged(self) -> None:
        if self.pixels is None:
            return
        if not self.marks_allowed:
            self.notify("Flag-only display: the AI's regions are not shown", severity="warning")
            return
        target = next_flagged(flagged_slices(self.findings, self.pixels.series_uid), self.slice_index)
        if target is None:
            self.notify("No AI regions on this series")
            return
        self.regions_on = True
        self.slice_index = min(max(target, 0), self.pixels.n_slices - 1)
        self._redraw()

    def action_cycle_window(self) -> None:
        if self.pixels is not None and not self.pixels.hu_windows:
            what = "a radiograph is shown with its own window" if self.pixels.radiograph else "no HU on this series"
            self.notify(f"Window presets are for CT: {what}")
            return
        self.window = WINDOW_NAMES[(WINDOW_NAMES.index(self.window) + 1) % len(WINDOW_NAMES)]
        self._redraw()

    def action_toggle_regions(self) -> None:
        if not self.marks_allowed:
            self.notify("Flag-only display: the AI's regions are not shown", severity="warning")
            return
        self.regions_on = not self.regions_on
        self._redraw()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.action_slice(1)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.action_slice(-1)


def _ranges(values: Sequence[int]) -> str:
    """``[13, 14, 15, 20]`` -> ``"14-16, 21"`` (1-based, as slices are shown)."""
    parts: list[str] = []
    start: int | None = None
    prev = 0  # read only once start is set, and set with it
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start + 1}" if start == prev else f"{start + 1}-{prev + 1}")
            start = prev = v
    if start is not None:
        parts.append(f"{start + 1}" if start == prev else f"{start + 1}-{prev + 1}")
    return ", ".join(parts)
