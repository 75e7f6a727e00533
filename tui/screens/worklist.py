"""The main screen: the ranked worklist, live.

Every ``app.poll_interval`` seconds the screen asks the service which studies
changed since its last look (one tiny read of the audit trail) and fetches
only those rows, which the model moves into place; every
:data:`FULL_RELOAD_S` seconds it reloads everything in a worker thread (with
10,000 studies that takes most of a second), since waiting time ages every
score. Claims and releases go through the service under the app's user.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import ClassVar, cast

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, Input, Static

from triage.clock import shown
from triage.reading.views import WorklistItem
from tui.host import BANNER, WorklistHost
from tui.model import FINDING_CHOICES, STATUS_CHOICES, WorklistModel
from tui.table import WorklistTable

FULL_RELOAD_S = 30.0  # ageing moves every score; a full reload is one items() call


def next_choice(current: str | None, choices: Sequence[str]) -> str | None:
    """The filter value after ``current`` in the cycle None (all) -> choices... -> None."""
    cycle: list[str | None] = [None, *choices]
    try:
        at = cycle.index(current)
    except ValueError:
        return None  # the value left the data: back to all
    return cycle[(at + 1) % len(cycle)]


class WorklistScreen(Screen[None]):
    """The ranked worklist: who to read next, why, and who is reading what.

    Keys: enter opens, o toggles urgency/arrival order, / searches (escape
    clears), m / s / f cycle the modality, status and finding filters, c claims
    and r releases the highlighted study, R reloads. The mouse works too:
    click a row, double-click to open, click the filter bar or the footer keys.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open"),
        Binding("o", "toggle_order", "Urgency/arrival"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("m", "cycle_modality", "Modality"),
        Binding("s", "cycle_status", "Status"),
        Binding("f", "cycle_finding", "Finding"),
        Binding("c", "claim", "Claim"),
        Binding("r", "release", "Release"),
        Binding("R", "reload", "Reload", key_display="R"),
        Binding("escape", "clear_search", "Clear search", show=False),
    ]

    DEFAULT_CSS = """
    WorklistScreen {
        #filters { height: 1; padding: 0 1; background: $boost; }
        #search { display: none; height: 3; }
        #search.-shown { display: block; }
    }
    """

    def __init__(self) -> None:
        super().__init__()
        self.model = WorklistModel()
        self._token = 0
        self._poll_timer: Timer | None = None
        self._reload_timer: Timer | None = None
        self._suspended_at: float | None = None  # monotonic time the screen was covered
        self._last_error: str | None = None

    # -- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"⚠ {BANNER}", classes="banner", id="banner")
        yield Static(id="filters")
        yield Input(placeholder="search patient ID, name or accession (enter: keep, escape: clear)", id="search")
        yield WorklistTable(self.model, id="worklist")
        yield Footer()

    @property
    def wl(self) -> WorklistHost:
        """The app, with its service and user."""
        return cast(WorklistHost, self.app)

    @property
    def table(self) -> WorklistTable:
        return self.query_one(WorklistTable)

    def on_mount(self) -> None:
        app = self.wl
        self.sub_title = f"reader: {app.user}" + ("  (blinded first read)" if app.blinded else "")
        self.reload()
        self.table.focus()
        self._poll_timer = self.set_interval(app.poll_interval, self.poll)
        self._reload_timer = self.set_interval(FULL_RELOAD_S, self.reload_in_background)

    def on_screen_suspend(self) -> None:
        # Covered by a study: no point redrawing a list nobody sees.
        self._suspended_at = time.monotonic()
        for timer in (self._poll_timer, self._reload_timer):
            if timer is not None:
                timer.pause()

    def on_screen_resume(self) -> None:
        if self._suspended_at is None:  # the first show: on_mount loaded
            return
        away = time.monotonic() - self._suspended_at
        self._suspended_at = None
        # Back from a study: what changed meanwhile (this reader's claim, report,
        # new studies) is in the audit trail; after long enough, ageing too.
        if away >= FULL_RELOAD_S:
            self.reload_in_background()
        else:
            self.poll()
        for timer in (self._poll_timer, self._reload_timer):
            if timer is not None:
                timer.resume()

    # -- loading --------------------------------------------------------------------------------

    def reload(self) -> None:
        """Load every study again (ages every score); the cursor stays on its study."""
        service = self.wl.service
        try:
            token = service.change_token()  # first: a change made during items() is seen again
            items = service.items(user=self.wl.user)
        except Exception as exc:  # a DB hiccup must not take the worklist down
            self._report_once(exc)
            return
        self._last_error = None
        self._token = token
        self.model.load(items)
        self._rows_changed()

    class Loaded(Message):
        """A background full reload's result (posted from the worker thread)."""

        def __init__(self, token: int, items: list[WorklistItem] | None, error: Exception | None = None) -> None:
            super().__init__()
            self.token = token
            self.items = items
            self.error = error

    def reload_in_background(self) -> None:
        """The timed full reload, in a thread: with 10,000 studies it takes most of a second."""
        self.run_worker(self._fetch_all, thread=True, exclusive=True, group="reload", exit_on_error=False)

    def _fetch_all(self) -> None:  # worker thread: talks to the UI only by message
        service, user = self.wl.service, self.wl.user
        try:
            token = service.change_token()
            items = service.items(user=user)
        except Exception as exc:
            self.post_message(self.Loaded(0, None, exc))
            return
        self.post_message(self.Loaded(token, items))

    def on_worklist_screen_loaded(self, message: Loaded) -> None:
        if message.items is None:
            self._report_once(message.error or RuntimeError("reload failed"))
            return
        self._last_error = None
        # The snapshot's token, even if a poll got further meanwhile: the next
        # poll then fetches again whatever changed after the snapshot began.
        self._token = message.token
        self.model.load(message.items)
        self._rows_changed()

    def poll(self) -> None:
        """Apply the studies changed since the last look (a tiny read when nothing changed)."""
        service = self.wl.service
        try:
            token, changed = service.changes_since(self._token)
            items = service.items_for(changed, user=self.wl.user) if changed else []
        except Exception as exc:
            self._report_once(exc)
            return
        self._last_error = None
        self._token = token
        if items and self.model.apply(items):
            self._rows_changed()

    def refresh_studies(self, uids: Iterable[str]) -> None:
        """Fetch some studies' rows now (after this reader's own action), without waiting for the poll."""
        try:
            items = self.wl.service.items_for(list(uids), user=self.wl.user)
        except Exception as exc:
            self.wl.report_error(exc)
            return
        if self.model.apply(items):
            self._rows_changed()

    def _report_once(self, exc: Exception) -> None:
        # Polls repeat every fraction of a second: say each distinct problem once.
        if str(exc) != self._last_error:
            self._last_error = str(exc)
            self.wl.report_error(exc)

    def _rows_changed(self) -> None:
        self.table.rows_changed()
        self._update_filters()

    def _update_filters(self) -> None:
        m = self.model
        search = m.search.strip()
        content = Content.from_markup(
            "[b]$shown[/b] of $total shown, $unsigned to read  │  "
            "[b]Order[/b] [@click=screen.toggle_order]$order[/] (o)  "
            "[b]Modality[/b] [@click=screen.cycle_modality]$modality[/] (m)  "
            "[b]Status[/b] [@click=screen.cycle_status]$status[/] (s)  "
            "[b]Finding[/b] [@click=screen.cycle_finding]$finding[/] (f)  "
            "[b]Search[/b] [@click=screen.search]$search[/] (/)",
            order=m.sort,
            modality=m.modality or "all",
            status=m.status or "all",
            finding=m.finding or "all",
            search=f'"{search}"' if search else "none",
            shown=f"{len(m):,}",
            total=f"{m.total:,}",
            unsigned=f"{m.unsigned:,}",
        )
        self.query_one("#filters", Static).update(content)

    # -- messages from the table and the search box ---------------------------------------------

    def on_worklist_table_row_chosen(self, message: WorklistTable.RowChosen) -> None:
        message.stop()
        self.wl.open_study(message.uid)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "search":
            self.model.set_search(event.value)
            self._rows_changed()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            event.input.set_class(bool(event.value.strip()), "-shown")
            self.table.focus()

    # -- actions --------------------------------------------------------------------------------

    def action_open(self) -> None:
        """Open the highlighted study."""
        uid = self.table.cursor_uid
        if uid is not None:
            self.wl.open_study(uid)

    def action_toggle_order(self) -> None:
        """Urgency order <-> arrival order (the standard worklist)."""
        mode = self.model.toggle_sort()
        self._rows_changed()
        self.notify(f"Sorted by {'urgency' if mode == 'urgency' else 'arrival (first received first)'}", timeout=2)

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.add_class("-shown")
        box.focus()

    def action_clear_search(self) -> None:
        box = self.query_one("#search", Input)
        if not box.has_class("-shown") and not self.model.search:
            return
        box.value = ""
        box.remove_class("-shown")
        self.model.set_search("")
        self._rows_changed()
        self.table.focus()

    def action_cycle_modality(self) -> None:
        self.model.set_filters(modality=next_choice(self.model.modality, self.model.modality_choices()))
        self._rows_changed()

    def action_cycle_status(self) -> None:
        self.model.set_filters(status=next_choice(self.model.status, STATUS_CHOICES))
        self._rows_changed()

    def action_cycle_finding(self) -> None:
        self.model.set_filters(finding=next_choice(self.model.finding, FINDING_CHOICES))
        self._rows_changed()

    def action_claim(self) -> None:
        """Claim the highlighted study for reading under the app's user."""
        self._act("claim")

    def action_release(self) -> None:
        """Release this user's claim on the highlighted study."""
        self._act("release")

    def action_reload(self) -> None:
        self.reload()
        self.notify("Worklist reloaded", timeout=2)

    def _act(self, verb: str) -> None:
        uid = self.table.cursor_uid
        if uid is None:
            self.notify(f"No study to {verb}", severity="warning", timeout=3)
            return
        app = self.wl
        item = self.model.get(uid)
        what = (item.study.accession_number or item.study.patient_id or uid) if item else uid
        try:
            if verb == "claim":
                expires = app.service.claim(uid, app.user)
                self.notify(f"Claimed {what} until {shown(expires, app.service.settings.site.zone)}", timeout=3)
            else:
                state = app.service.release(uid, app.user)
                self.notify(f"Released {what} ({state.value})", timeout=3)
        except Exception as exc:  # the service says why (claimed by someone else, not claimed...)
            app.report_error(exc)
        # Either way show the study as it is now (a conflict shows who holds it).
        self.refresh_studies([uid])
