"""The worklist table: a Line API widget that renders only the rows on screen.

A :class:`textual.widgets.DataTable` holds a widget-side copy of every cell;
with 10,000 studies that copy, and its rebuild on every live update, is the
cost. :class:`WorklistTable` instead reads rows straight from a
:class:`tui.model.WorklistModel` in :meth:`WorklistTable.render_line`, so a
paint costs the visible lines and a live update costs a repaint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from triage.reading.views import WorklistItem
from tui.model import (
    WorklistModel,
    badge_text,
    conflict_mark,
    findings_summary,
    modality_labels,
    patient_text,
    status_kind,
    status_text,
    wait_text,
)


@dataclass(frozen=True)
class Column:
    """One column: header, natural and smallest width (cells), share of spare width, and when it gives way.

    On a narrow terminal columns shrink in ``shrink`` order (lowest first),
    each down to ``min_width``.
    """

    key: str
    header: str
    width: int
    min_width: int
    flex: int = 0
    shrink: int = 9
    right: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("class", "Class", 8, 8),
    Column("rank", "#", 5, 4, right=True),
    Column("wait", "Wait", 6, 5, right=True),
    Column("patient", "Patient", 28, 16, flex=2, shrink=3),
    Column("modality", "Mod", 6, 5),
    Column("description", "Description", 20, 10, flex=2, shrink=1),
    Column("findings", "AI findings (suggestion)", 24, 14, flex=2, shrink=4),
    Column("status", "Status", 24, 12, shrink=2),
    Column("order", "Order", 7, 6, shrink=5),
)
GAP = 1  # cells between columns


def layout(width: int, columns: tuple[Column, ...] = COLUMNS) -> list[int]:
    """Column widths for ``width`` cells: natural widths, spare cells to flex columns, shrunk to fit.

    A terminal too narrow even for the smallest widths crops the rightmost columns.
    """
    widths = [c.width for c in columns]
    spare = width - (sum(widths) + GAP * (len(columns) - 1))
    flex_total = sum(c.flex for c in columns)
    if spare > 0 and flex_total:
        flexed = [i for i, c in enumerate(columns) if c.flex]
        for n, i in enumerate(flexed):
            share = spare * columns[i].flex // flex_total
            widths[i] += share if n < len(flexed) - 1 else spare - sum(spare * columns[j].flex // flex_total for j in flexed[:-1])
    elif spare < 0:
        for i in sorted(range(len(columns)), key=lambda i: columns[i].shrink):
            if spare >= 0:
                break
            give = min(widths[i] - columns[i].min_width, -spare)
            widths[i] -= give
            spare += give
    return widths


def _fit(text: str, width: int, right: bool = False) -> str:
    """``text`` in exactly ``width`` cells: padded, or cut with an ellipsis."""
    if width <= 0:
        return ""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    return text.rjust(width - cell_len(text) + len(text)) if right else set_cell_size(text, width)


class WorklistTable(ScrollView, can_focus=True):
    """The ranked studies, one line each, under a fixed header line.

    Parameters
    ----------
    model
        The rows; the table never copies them. After changing the model call
        :meth:`rows_changed`, which keeps the cursor on the same study.

    Keys: up/k, down/j, pageup, pagedown, home, end move the cursor; enter
    chooses. Mouse: click selects a row, double-click chooses it, the wheel
    scrolls.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "cursor_home", "First", show=False),
        Binding("end", "cursor_end", "Last", show=False),
        Binding("enter", "choose", "Open"),
    ]

    COMPONENT_CLASSES = {
        "worklist--header",
        "worklist--cursor",
        "worklist--critical",
        "worklist--urgent",
        "worklist--routine",
        "worklist--flag",
        "worklist--dim",
        "worklist--overdue",
        "worklist--review",
        "worklist--failed",
    }

    DEFAULT_CSS = """
    WorklistTable {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        background: $surface;
        & > .worklist--header { background: $panel; color: $text; text-style: bold; }
        & > .worklist--cursor { background: $block-cursor-blurred-background; }
        &:focus > .worklist--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
        & > .worklist--critical { background: $error; color: white; text-style: bold; }
        & > .worklist--urgent { background: $warning; color: black; text-style: bold; }
        & > .worklist--routine { color: $text-success; }
        & > .worklist--flag { color: $text-error; text-style: bold; }
        & > .worklist--dim { color: $text-muted; }
        & > .worklist--overdue { color: $text-error; text-style: bold; }
        & > .worklist--review { color: $text-accent; }
        & > .worklist--failed { color: $text-warning; text-style: bold; }
    }
    """

    class RowHighlighted(Message):
        """The cursor is on another study (``uid`` None: no rows)."""

        def __init__(self, table: WorklistTable, uid: str | None) -> None:
            super().__init__()
            self.table = table
            self.uid = uid

        @property
        def control(self) -> WorklistTable:
            return self.table

    class RowChosen(Message):
        """The reader chose a study to open (enter or double-click)."""

        def __init__(self, table: WorklistTable, uid: str) -> None:
            super().__init__()
            self.table = table
            self.uid = uid

        @property
        def control(self) -> WorklistTable:
            return self.table

    def __init__(self, model: WorklistModel, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.model = model
        self._cursor = 0
        self._cursor_uid: str | None = None
        self._widths: tuple[int, list[int]] = (-1, [])

    # -- cursor ---------------------------------------------------------------------------------

    @property
    def cursor_index(self) -> int | None:
        """The cursor's visible row (0-based), None when there are no rows."""
        return self._cursor if len(self.model) else None

    @property
    def cursor_uid(self) -> str | None:
        """The study under the cursor."""
        return self._cursor_uid

    @property
    def page_rows(self) -> int:
        """Rows that fit under the header."""
        return max(1, self.scrollable_content_region.height - 1)

    def move_cursor(self, index: int, *, scroll: bool = True) -> None:
        """Put the cursor on visible row ``index`` (clamped) and bring it into view."""
        count = len(self.model)
        old = self._cursor
        self._cursor = max(0, min(index, count - 1)) if count else 0
        if scroll:
            self._scroll_to_cursor()
        self._refresh_row(old)
        self._refresh_row(self._cursor)
        self._set_uid(self.model.visible[self._cursor] if count else None)

    def select_uid(self, uid: str) -> bool:
        """Put the cursor on a study; False when it is not shown."""
        index = self.model.index_of(uid)
        if index is None:
            return False
        self.move_cursor(index)
        return True

    def rows_changed(self) -> None:
        """Show the model's current rows, keeping the cursor on its study and that study on screen.

        When the study under the cursor left the view (a filter), the cursor
        stays at the same position, on whatever study is there now.
        """
        old_index = self._cursor
        top = int(self.scroll_y)
        index = self.model.index_of(self._cursor_uid)
        count = len(self.model)
        if index is None:
            index = max(0, min(old_index, count - 1))
        self._cursor = index if count else 0
        self.virtual_size = Size(self.size.width, count + 1)
        # A list scrolled to its top stays there, so that a new urgent study shows up
        # at once; scrolled further down, the cursor's line stays where the eye left
        # it, scrolling by what moved above it.
        if top > 0:
            self.scroll_to(y=max(0, top + (index - old_index)), animate=False, force=True)
        self._scroll_to_cursor()
        self.refresh()
        self._set_uid(self.model.visible[self._cursor] if count else None)

    def _set_uid(self, uid: str | None) -> None:
        if uid != self._cursor_uid:
            self._cursor_uid = uid
            self.post_message(self.RowHighlighted(self, uid))

    def _scroll_to_cursor(self) -> None:
        top, rows = int(self.scroll_y), self.page_rows
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, force=True)
        elif self._cursor >= top + rows:
            self.scroll_to(y=self._cursor - rows + 1, animate=False, force=True)

    def _refresh_row(self, index: int) -> None:
        self.refresh_line(index + 1)  # line 0 of the virtual area is the header

    # -- actions --------------------------------------------------------------------------------

    def action_cursor_up(self) -> None:
        self.move_cursor(self._cursor - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(self._cursor + 1)

    def action_page_up(self) -> None:
        self.move_cursor(self._cursor - self.page_rows)

    def action_page_down(self) -> None:
        self.move_cursor(self._cursor + self.page_rows)

    def action_cursor_home(self) -> None:
        self.move_cursor(0)

    def action_cursor_end(self) -> None:
        self.move_cursor(len(self.model) - 1)

    def action_choose(self) -> None:
        if self._cursor_uid is not None:
            self.post_message(self.RowChosen(self, self._cursor_uid))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:  # the header line
            return
        index = offset.y - 1 + int(self.scroll_y)
        if index >= len(self.model):
            return
        event.stop()
        self.move_cursor(index)
        if event.chain >= 2:
            self.action_choose()

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, len(self.model) + 1)
        self._scroll_to_cursor()

    def on_mount(self) -> None:  # textual also runs ScrollView.on_mount (handlers dispatch along the MRO)
        self.virtual_size = Size(self.size.width, len(self.model) + 1)

    # -- rendering ------------------------------------------------------------------------------

    def _column_widths(self, width: int) -> list[int]:
        if self._widths[0] != width:
            self._widths = (width, layout(width))
        return self._widths[1]

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        widths = self._column_widths(width)
        if y == 0:
            return self._header_strip(widths, width, base)
        index = y - 1 + int(self.scroll_y)
        if index >= len(self.model):
            return Strip.blank(width, base)
        return self._row_strip(index, widths, width, base)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(name, partial=True)

    def _header_strip(self, widths: list[int], width: int, base: Style) -> Strip:
        style = base + self._style("worklist--header")
        sorted_by = "#" if self.model.sort == "urgency" else "Wait"
        cells = []
        for column, w in zip(COLUMNS, widths, strict=True):
            title = column.header + ("▼" if column.header == sorted_by else "")
            cells.append((_fit(title, w, column.right), None))
        return self._strip(cells, widths, width, style)

    def _row_strip(self, index: int, widths: list[int], width: int, base: Style) -> Strip:
        item = self.model.row(index)
        row_style = base + self._style("worklist--cursor") if index == self._cursor else base
        s = item.study
        urgency = item.urgency
        cls = urgency.priority_class.value
        rank = self.model.rank_of(s.study_uid)
        kind = status_kind(item)
        status_style = {
            "in review": "worklist--review",
            "signed": "worklist--dim",
            "AI failed": "worklist--failed",
            "not analysed": "worklist--dim",
            "AI pending": "worklist--dim",
            "AI partial": "worklist--failed",
        }.get(kind)
        w = dict(zip((c.key for c in COLUMNS), widths, strict=True))
        cells: list[tuple[str, Style | None] | list[tuple[str, Style | None]]] = [
            (_fit(f" {badge_text(cls)}", w["class"]), self._style(f"worklist--{cls}")),
            (_fit(str(rank) if rank is not None else "—", w["rank"], right=True), None),
            (
                _fit(("!" if urgency.overdue else "") + wait_text(urgency.waiting_min), w["wait"], right=True),
                self._style("worklist--overdue") if urgency.overdue else None,
            ),
            # A conflicting re-send puts the identity in doubt: marked, and in the flag colour.
            (_fit(conflict_mark(item) + patient_text(item), w["patient"]), self._style("worklist--flag") if s.conflicts else None),
            (_fit("/".join(modality_labels(s.modality)) or s.modality, w["modality"]), None),
            (_fit(s.description or "", w["description"]), None),
            self._findings_cells(item, w["findings"]),
            (_fit(status_text(item), w["status"]), self._style(status_style) if status_style else None),
            (_fit((s.order_priority or "—").upper(), w["order"]), None),
        ]
        return self._strip(cells, widths, width, row_style)

    def _findings_cells(self, item: WorklistItem, width: int) -> list[tuple[str, Style | None]]:
        parts = findings_summary(item)
        flag, dim = self._style("worklist--flag"), self._style("worklist--dim")
        out: list[tuple[str, Style | None]] = []
        used = 0
        for n, (text, flagged) in enumerate(parts):
            piece = (", " if n else "") + text
            if used + cell_len(piece) > width:
                out.append((_fit(piece, width - used), flag if flagged else dim))
                used = width
                break
            out.append((piece, flag if flagged else dim))
            used += cell_len(piece)
        if used < width:
            out.append((" " * (width - used), None))
        return out

    def _strip(
        self, cells: Iterable[tuple[str, Style | None] | list[tuple[str, Style | None]]], widths: list[int], width: int, row_style: Style
    ) -> Strip:
        segments: list[Segment] = []
        gap = Segment(" " * GAP, row_style)
        for n, cell in enumerate(cells):
            if n:
                segments.append(gap)
            for text, style in cell if isinstance(cell, list) else [cell]:
                segments.append(Segment(text, row_style + style if style is not None else row_style))
        total = sum(widths) + GAP * (len(widths) - 1)
        strip = Strip(segments, total)
        return strip.crop_extend(0, width, row_style)
