"""The worklist's dialogs: they collect the reader's input and return it, nothing else.

Each dialog is a :class:`textual.screen.ModalScreen` dismissed with its result
(``push_screen(dialog, callback)`` or ``await push_screen_wait(dialog)``);
the screen that pushed it calls the worklist service with that result. No
dialog touches the service or the database, so what is recorded, and under
which name, is decided in one place (the screens) and every dialog can be
tested on its own.

Every dialog works with the mouse (its buttons) and the keyboard; escape
always cancels (``None``, or ``False`` for :class:`ConfirmSign`).

The text helpers they use (names, times, keys, one-line event summaries)
are pure and live in :mod:`tui.formatting`.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from typing import Any, ClassVar, TypeVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, DataTable, Input, Label, RadioButton, RadioSet, Static, TextArea

from triage.reading.views import StudyFacts
from triage.vocabulary import FINDING_KINDS
from tui.formatting import format_key, format_person_name, format_time, group_bindings, plural, summarize_event

ResultT = TypeVar("ResultT")

REPORT_PREVIEW_LINES = 8  # report lines shown in the sign confirmation


# --- the dialogs --------------------------------------------------------------------------------


class DialogBase(ModalScreen[ResultT]):
    """A centred box with a title, a body and a row of buttons; escape cancels.

    Subclasses set :attr:`CANCEL_RESULT` (what escape and Cancel return) and
    compose inside :meth:`dialog_box`.
    """

    DEFAULT_CSS = """
    DialogBase {
        align: center middle;
    }
    DialogBase > .dialog {
        width: 80;
        max-width: 95%;
        height: auto;
        max-height: 90%;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    DialogBase .dialog-title {
        text-style: bold;
        width: 100%;
        margin-bottom: 1;
    }
    DialogBase .dialog-note {
        color: $text-muted;
    }
    DialogBase .dialog-error {
        color: $error;
        text-style: bold;
        height: auto;
    }
    DialogBase .dialog-error.-empty {
        display: none;
    }
    DialogBase .dialog-buttons {
        height: auto;
        width: 100%;
        align-horizontal: right;
        margin-top: 1;
    }
    DialogBase .dialog-buttons Button {
        margin-left: 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    CANCEL_RESULT: Any = None

    def dialog_box(self, title: str) -> Vertical:
        """The dialog's container, with ``title`` on its border."""
        box = Vertical(classes="dialog")
        box.border_title = title
        return box

    def error_label(self) -> Label:
        """An inline message line, hidden until :meth:`show_error` fills it."""
        return Label("", id="error", classes="dialog-error -empty", markup=False)

    def show_error(self, message: str) -> None:
        """Show ``message`` in the dialog (refusals are explained in place, not as a notification)."""
        label = self.query_one("#error", Label)
        label.update(message)
        label.set_class(not message, "-empty")

    def action_cancel(self) -> None:
        self.dismiss(self.CANCEL_RESULT)

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_cancel()


class ConfirmSign(DialogBase[bool]):
    """Ask the reader to confirm signing: who signs, which study, which text.

    Confirming is deliberate: the Sign button or ctrl+s. Cancel is focused
    first, so a stray enter does not sign; escape or ``n`` cancels.
    Dismisses with True to sign, False otherwise.

    Parameters
    ----------
    user
        The reader who will sign (the report is signed under this name).
    study
        The study whose report is signed.
    report_text
        The draft text that becomes the signed version; its first lines are shown.
    """

    DEFAULT_CSS = """
    ConfirmSign #sign-as {
        text-style: bold;
        color: $warning;
        margin-bottom: 1;
    }
    ConfirmSign #facts {
        height: auto;
        margin-bottom: 1;
    }
    ConfirmSign #report-preview {
        border: round $panel-lighten-2;
        padding: 0 1;
        height: auto;
        max-height: 12;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "confirm", "Sign"),
        Binding("escape", "cancel", "Cancel"),
        Binding("n", "cancel", "Cancel", show=False),
    ]

    CANCEL_RESULT = False

    def __init__(self, user: str, study: StudyFacts, report_text: str) -> None:
        super().__init__()
        self.user = user
        self.study = study
        self.report_text = report_text

    def study_lines(self) -> list[tuple[str, str]]:
        """(label, value) pairs that identify the study being signed."""
        s = self.study
        patient = format_person_name(s.patient_name)
        if s.patient_id:
            patient += f"  (ID {s.patient_id})"
        extra = " ".join(x for x in (s.patient_sex, s.patient_age) if x)
        if extra:
            patient += f"  {extra}"
        return [
            ("Patient", patient),
            ("Accession", s.accession_number or "(none)"),
            ("Study", s.description or "(no description)"),
            ("Modality", s.modality.replace("\\", "/")),
            ("Study date", s.study_date or "(unknown)"),
            ("Study UID", s.study_uid),
        ]

    def preview_text(self) -> str:
        """The report's first :data:`REPORT_PREVIEW_LINES` lines, with a note of how many follow."""
        lines = self.report_text.strip().splitlines()
        if not lines:
            return "(empty report)"
        shown = lines[:REPORT_PREVIEW_LINES]
        rest = len(lines) - len(shown)
        if rest > 0:
            shown.append(f"… ({plural(rest, 'more line')})")
        return "\n".join(shown)

    def compose(self) -> ComposeResult:
        with self.dialog_box("Sign report"):
            yield Static(Content.from_markup("Sign as [b]$user[/b]", user=self.user), id="sign-as")
            width = max(len(label) for label, _ in self.study_lines())
            facts = "\n".join(f"{label:<{width}}  {value}" for label, value in self.study_lines())
            yield Static(facts, id="facts", markup=False)
            yield Label("Report text:", classes="dialog-note")
            with VerticalScroll(id="report-preview"):
                yield Static(self.preview_text(), id="report-text", markup=False)
            yield Static(
                "Signing makes this report final under your name; later changes are amendments.", classes="dialog-note", markup=False
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Sign", id="sign", variant="warning")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#sign")
    def _sign_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_confirm()


class ReportEditor(DialogBase["str | None"]):
    """Edit a report's text; ctrl+s (or Save) returns it, escape (or Cancel) returns None.

    An empty (or blank) text is refused with a message in the dialog.

    Parameters
    ----------
    title
        What is being edited, e.g. "Draft report for ACC00001".
    text
        The text to start from (the current draft, or the signed text to amend).
    """

    DEFAULT_CSS = """
    ReportEditor > .dialog {
        width: 100;
        height: 90%;
    }
    ReportEditor #editor {
        height: 1fr;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "save", "Save", priority=True), Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, text: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.initial_text = text

    def compose(self) -> ComposeResult:
        with self.dialog_box("Report"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            # tab_behavior "focus": with "indent" the TextArea would swallow escape.
            yield TextArea(self.initial_text, id="editor", soft_wrap=True)
            yield self.error_label()
            yield Label("ctrl+s save · esc cancel", classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        editor = self.query_one("#editor", TextArea)
        editor.focus()
        editor.move_cursor(editor.document.end)

    def action_save(self) -> None:
        text = self.query_one("#editor", TextArea).text
        if not text.strip():
            self.show_error("The report is empty: write the report, or press escape to cancel.")
            return
        self.dismiss(text)

    @on(Button.Pressed, "#save")
    def _save_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save()

    @on(TextArea.Changed, "#editor")
    def _clear_error(self) -> None:
        self.show_error("")


class ImpressionDialog(DialogBase["tuple[str, tuple[str, ...]] | None"]):
    """The reader's own impression: a text and the finding kinds they call present.

    Dismisses with ``(text, kinds)``, the text stripped and the kinds in
    ``FINDING_KINDS`` order (empty when the reader calls none present), or None.
    Save (or ctrl+s) needs a non-empty text.
    """

    DEFAULT_CSS = """
    ImpressionDialog #impression {
        height: 8;
    }
    ImpressionDialog #kinds {
        height: auto;
        margin-top: 1;
    }
    ImpressionDialog #kinds Checkbox {
        margin-right: 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "save", "Save", priority=True), Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with self.dialog_box("Impression"):
            yield Label("Your impression", classes="dialog-title")
            yield TextArea("", id="impression", soft_wrap=True, placeholder="What do you see?")
            yield Label("Present (tick what you call present):", classes="dialog-note")
            with Horizontal(id="kinds"):
                for kind in FINDING_KINDS:
                    yield Checkbox(kind.capitalize(), id=f"kind-{kind}")
            yield self.error_label()
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#impression", TextArea).focus()

    def checked_kinds(self) -> tuple[str, ...]:
        """The kinds ticked, in ``FINDING_KINDS`` order."""
        return tuple(k for k in FINDING_KINDS if self.query_one(f"#kind-{k}", Checkbox).value)

    def action_save(self) -> None:
        text = self.query_one("#impression", TextArea).text.strip()
        if not text:
            self.show_error("Write your impression first (it may say that you see nothing).")
            return
        self.dismiss((text, self.checked_kinds()))

    @on(Button.Pressed, "#save")
    def _save_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save()

    @on(TextArea.Changed, "#impression")
    def _clear_error(self) -> None:
        self.show_error("")


class MissedFindingDialog(DialogBase["tuple[str, str | None] | None"]):
    """Record a finding the AI missed: its kind and an optional comment.

    Dismisses with ``(kind, comment)`` (comment None when left empty) or None.
    Save, ctrl+s or enter in the comment records it; a kind must be chosen.
    """

    DEFAULT_CSS = """
    MissedFindingDialog #kind {
        width: 100%;
        margin-bottom: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "save", "Save", priority=True), Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with self.dialog_box("Missed finding"):
            yield Label("What did the AI miss?", classes="dialog-title")
            with RadioSet(id="kind"):
                for kind in FINDING_KINDS:
                    yield RadioButton(kind.capitalize(), id=f"kind-{kind}")
            yield Input(placeholder="Comment (optional): where, how large", id="comment")
            yield self.error_label()
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#kind", RadioSet).focus()

    def chosen_kind(self) -> str | None:
        """The kind selected, or None."""
        pressed = self.query_one("#kind", RadioSet).pressed_button
        if pressed is None or not pressed.id:
            return None
        return pressed.id.removeprefix("kind-")

    def action_save(self) -> None:
        kind = self.chosen_kind()
        if kind is None:
            self.show_error(f"Choose the kind of finding that was missed ({', '.join(FINDING_KINDS)}).")
            return
        comment = self.query_one("#comment", Input).value.strip()
        self.dismiss((kind, comment or None))

    @on(Button.Pressed, "#save")
    def _save_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_save()

    @on(Input.Submitted, "#comment")
    def _comment_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    @on(RadioSet.Changed, "#kind")
    def _clear_error(self) -> None:
        self.show_error("")


class CommentDialog(DialogBase["str | None"]):
    """An optional comment (for a verdict on a finding).

    Enter (or OK) submits the comment stripped, possibly ``""``; escape (or Cancel) returns None.

    Parameters
    ----------
    title
        What the comment is for, e.g. "Confirm bleed 0.93".
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title

    def compose(self) -> ComposeResult:
        with self.dialog_box("Comment"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Input(placeholder="Comment (optional); enter to submit", id="comment")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#comment", Input).focus()

    def action_submit(self) -> None:
        self.dismiss(self.query_one("#comment", Input).value.strip())

    @on(Input.Submitted, "#comment")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    @on(Button.Pressed, "#ok")
    def _ok_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_submit()


class PasswordPrompt(DialogBase["str | None"]):
    """Ask the reader's password again before a signature or an amendment.

    The typed text is never shown (``Input(password=True)``); enter (or OK)
    returns it, unstripped (spaces may be part of a password); escape (or
    Cancel) returns None. The dialog does not check it: the screen passes it
    to the app's ``authenticate`` (``triage.reading.signing``).

    Parameters
    ----------
    title
        What the password is for, e.g. "Sign as dr.ada".
    prompt
        Whose password: "Signing password for dr.ada", or the OS account's for PAM.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, prompt: str) -> None:
        super().__init__()
        self.title_text = title
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with self.dialog_box("Password"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Label(self.prompt, classes="dialog-note", markup=False)
            yield Input(password=True, placeholder="password; enter to continue", id="password")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", id="ok", variant="warning")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#password", Input).focus()

    def action_submit(self) -> None:
        self.dismiss(self.query_one("#password", Input).value)

    @on(Input.Submitted, "#password")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    @on(Button.Pressed, "#ok")
    def _ok_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_submit()


class TableDialog(DialogBase[None]):
    """A read-only table in a large box; escape, q or Close closes it."""

    DEFAULT_CSS = """
    TableDialog > .dialog {
        width: 95%;
        height: 90%;
    }
    TableDialog DataTable {
        height: 1fr;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Close"), Binding("q", "cancel", "Close", show=False)]

    def close_buttons(self) -> Horizontal:
        return Horizontal(Button("Close", id="cancel"), classes="dialog-buttons")

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()


class HistoryScreen(TableDialog):
    """A study's audit events, oldest first: seq, time (the site's clock), actor, action and a one-line summary.

    Parameters
    ----------
    study_uid
        The study the events belong to.
    events
        As ``WorklistService.history`` returns them: dicts with ``seq``, ``at``,
        ``actor``, ``action``, ``detail``.
    zone
        The site's zone (``settings.site.zone``): times are shown on its clock.
    """

    COLUMNS = ("Seq", "Time", "Actor", "Action", "Detail")

    def __init__(self, study_uid: str, events: list[dict[str, Any]], zone: tzinfo = UTC) -> None:
        super().__init__()
        self.study_uid = study_uid
        self.audit_events = events
        self.zone = zone

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """The table's rows, one per event."""
        return [
            (
                str(e.get("seq", "")),
                format_time(e.get("at"), self.zone),
                str(e.get("actor", "")),
                str(e.get("action", "")),
                summarize_event(str(e.get("action", "")), e.get("detail"), zone=self.zone),
            )
            for e in self.audit_events
        ]

    def compose(self) -> ComposeResult:
        with self.dialog_box("History"):
            yield Label(
                f"History of study {self.study_uid}: {plural(len(self.audit_events), 'event')}", classes="dialog-title", markup=False
            )
            yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
            yield self.close_buttons()

    def on_mount(self) -> None:
        table = self.query_one("#history", DataTable)
        table.add_columns(*self.COLUMNS)
        for row in self.rows():
            table.add_row(*(Text(cell) for cell in row))  # Text: no markup in data
        super().on_mount()


class HelpScreen(TableDialog):
    """Every key binding passed in, grouped by where it applies ("app" or a screen's name).

    Parameters
    ----------
    bindings
        ``(where, key, description)`` triples; keys may be textual key names
        (``question_mark``) or their display form (``?``).
    """

    COLUMNS = ("Where", "Key", "Does")

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Close"),
        Binding("q", "cancel", "Close", show=False),
        Binding("question_mark", "cancel", "Close", show=False),
    ]

    def __init__(self, bindings: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.key_bindings = bindings

    def rows(self) -> list[tuple[str, str, str]]:
        """The table's rows: grouped, keys in display form, ``where`` only on a group's first row."""
        out: list[tuple[str, str, str]] = []
        previous: str | None = None
        for where, key, description in group_bindings(self.key_bindings):
            out.append((where if where != previous else "", format_key(key), description))
            previous = where
        return out

    def compose(self) -> ComposeResult:
        with self.dialog_box("Keys"):
            yield Label("Keys of this screen and of the app", classes="dialog-title")
            yield DataTable(id="keys", cursor_type="row")
            yield self.close_buttons()

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        table.add_columns(*self.COLUMNS)
        for row in self.rows():
            table.add_row(*(Text(cell) for cell in row))  # Text: no markup in data
        super().on_mount()


__all__ = [
    "CommentDialog",
    "ConfirmSign",
    "DialogBase",
    "HelpScreen",
    "HistoryScreen",
    "ImpressionDialog",
    "MissedFindingDialog",
    "ReportEditor",
]
