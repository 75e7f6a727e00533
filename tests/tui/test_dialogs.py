"""The dialogs, each hosted alone in a minimal app and driven with keys and clicks.

Studies and audit events come from a real SQLite index through the worklist
service (and ``triage.store.audit.append`` for the pipeline's and listener's events),
so the history summaries are checked against the detail shapes really stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from rich.text import Text
from sqlalchemy.engine import Engine
from textual.app import App
from textual.pilot import Pilot
from textual.screen import ModalScreen
from textual.widgets import Checkbox, DataTable, Input, Label, RadioButton, Static, TextArea

from tests.tui.support import SIZE, add_study, sign_directly
from triage.config import Settings
from triage.reading.service import WorklistService
from triage.reading.views import StudyFacts
from triage.store import audit
from tui.dialogs import CommentDialog, ConfirmSign, HelpScreen, HistoryScreen, ImpressionDialog, MissedFindingDialog, ReportEditor
from tui.formatting import format_key, format_person_name, format_time, summarize_event

_NO_RESULT = object()


class Host(App[None]):
    """Pushes one dialog on mount and keeps what it was dismissed with."""

    def __init__(self, dialog: ModalScreen[Any]) -> None:
        super().__init__()
        self.dialog = dialog
        self.results: list[Any] = []

    def on_mount(self) -> None:
        self.push_screen(self.dialog, self.results.append)


def drive(dialog: ModalScreen[Any], steps: Callable[[Pilot[None], Host], Awaitable[None]]) -> Any:
    """Run ``steps`` against ``dialog`` in a real app; return the dialog's result (or _NO_RESULT)."""

    async def scenario() -> Any:
        app = Host(dialog)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.screen is dialog
            await steps(pilot, app)
            await pilot.pause()
            return app.results[-1] if app.results else _NO_RESULT

    return asyncio.run(scenario())


async def type_text(pilot: Pilot[None], text: str) -> None:
    await pilot.press(*("space" if ch == " " else ch for ch in text))


def static_text(widget: Static) -> str:
    return str(widget.render())


def error_text(screen: ModalScreen[Any]) -> str:
    label = screen.query_one("#error", Label)
    return str(label.render()) if label.display and not label.has_class("-empty") else ""


def study_facts(engine: Engine, settings: Settings) -> StudyFacts:
    added = add_study(engine, uid="1.2.826.0.1.777", description="CT HEAD WO CONTRAST")
    service = WorklistService(engine, settings)
    (item,) = [i for i in service.items() if i.study.study_uid == added.uid]
    return item.study


# --- ConfirmSign -------------------------------------------------------------------------------


def test_confirm_sign_shows_who_signs_what_and_signs_on_the_button(engine: Engine, settings: Settings) -> None:
    facts = study_facts(engine, settings)
    report = "FINDINGS: Acute subdural haematoma.\n" + "\n".join(f"line {i}" for i in range(2, 13))
    dialog = ConfirmSign("dr.ada", facts, report)
    shown: dict[str, str] = {}

    async def steps(pilot: Pilot[None], app: Host) -> None:
        shown["sign_as"] = static_text(dialog.query_one("#sign-as", Static))
        shown["facts"] = static_text(dialog.query_one("#facts", Static))
        shown["report"] = static_text(dialog.query_one("#report-text", Static))
        # Enter on the initially focused button must not sign: Cancel has the focus.
        assert app.focused is not None and app.focused.id == "cancel"
        await pilot.click("#sign")

    assert drive(dialog, steps) is True
    assert shown["sign_as"] == "Sign as dr.ada"
    assert facts.accession_number and facts.accession_number in shown["facts"]
    assert "1.2.826.0.1.777" in shown["facts"]
    assert "CT HEAD WO CONTRAST" in shown["facts"]
    assert format_person_name(facts.patient_name) in shown["facts"]
    assert f"ID {facts.patient_id}" in shown["facts"]
    assert shown["report"].splitlines()[0] == "FINDINGS: Acute subdural haematoma."
    assert "line 8" in shown["report"] and "line 9" not in shown["report"]
    assert shown["report"].splitlines()[-1] == "… (4 more lines)"


def test_confirm_sign_cancels_on_escape_n_and_the_cancel_button(engine: Engine, settings: Settings) -> None:
    facts = study_facts(engine, settings)

    async def escape(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("escape")

    async def no(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("n")

    async def enter_on_focus(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("enter")

    async def cancel_button(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#cancel")

    async def ctrl_s(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("ctrl+s")

    for steps in (escape, no, enter_on_focus, cancel_button):
        assert drive(ConfirmSign("dr.ada", facts, "text"), steps) is False, steps.__name__
    assert drive(ConfirmSign("dr.ada", facts, "text"), ctrl_s) is True


def test_confirm_sign_shows_brackets_in_data_literally(engine: Engine, settings: Settings) -> None:
    facts = study_facts(engine, settings)
    dialog = ConfirmSign("dr.[b]ada", facts, "[red]not markup[/red]")
    shown: dict[str, str] = {}

    async def steps(pilot: Pilot[None], app: Host) -> None:
        shown["sign_as"] = static_text(dialog.query_one("#sign-as", Static))
        shown["report"] = static_text(dialog.query_one("#report-text", Static))
        await pilot.press("escape")

    assert drive(dialog, steps) is False
    assert shown == {"sign_as": "Sign as dr.[b]ada", "report": "[red]not markup[/red]"}


# --- ReportEditor ------------------------------------------------------------------------------


def test_report_editor_returns_typed_text_on_ctrl_s() -> None:
    async def steps(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, " no bleed")
        await pilot.press("enter")
        await type_text(pilot, "IMPRESSION: normal")
        await pilot.press("ctrl+s")

    result = drive(ReportEditor("Draft report for ACC1", "FINDINGS:"), steps)
    assert result == "FINDINGS: no bleed\nIMPRESSION: normal"


def test_report_editor_save_button_and_escape() -> None:
    async def save(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#save")

    async def escape(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, "typed")
        await pilot.press("escape")

    assert drive(ReportEditor("Amend", "signed text"), save) == "signed text"
    assert drive(ReportEditor("Draft"), escape) is None


def test_report_editor_refuses_an_empty_report_in_place() -> None:
    dialog = ReportEditor("Draft", "   \n ")
    seen: dict[str, Any] = {}

    async def steps(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("ctrl+s")
        await pilot.pause()
        seen["still_open"] = app.screen is dialog
        seen["error"] = error_text(dialog)
        seen["results"] = list(app.results)
        await type_text(pilot, "x")  # typing clears the message
        seen["error_after_typing"] = error_text(dialog)
        await pilot.press("ctrl+s")

    assert drive(dialog, steps) == "   \n x"
    assert seen["still_open"] is True and seen["results"] == []
    assert "empty" in seen["error"]
    assert seen["error_after_typing"] == ""


def test_report_editor_soft_wraps() -> None:
    dialog = ReportEditor("Draft")

    async def steps(pilot: Pilot[None], app: Host) -> None:
        assert dialog.query_one(TextArea).soft_wrap is True
        await pilot.press("escape")

    assert drive(dialog, steps) is None


# --- ImpressionDialog --------------------------------------------------------------------------


def test_impression_dialog_returns_text_and_checked_kinds() -> None:
    dialog = ImpressionDialog()

    async def steps(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, "  left SDH, rib fine ")
        await pilot.click("#kind-nodule")
        await pilot.click("#kind-bleed")
        await pilot.pause()
        assert dialog.query_one("#kind-bleed", Checkbox).value is True
        await pilot.click("#save")

    # In FINDING_KINDS order, whatever order they were ticked in; text stripped.
    assert drive(dialog, steps) == ("left SDH, rib fine", ("bleed", "nodule"))


def test_impression_dialog_no_kinds_and_keyboard_only() -> None:
    async def steps(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, "normal")
        await pilot.press("ctrl+s")

    assert drive(ImpressionDialog(), steps) == ("normal", ())


def test_impression_dialog_requires_text_and_cancels() -> None:
    dialog = ImpressionDialog()
    seen: dict[str, Any] = {}

    async def steps(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#kind-fracture")
        await pilot.click("#save")
        await pilot.pause()
        seen["open"] = app.screen is dialog
        seen["error"] = error_text(dialog)
        await pilot.press("escape")

    assert drive(dialog, steps) is None
    assert seen["open"] is True
    assert "impression" in seen["error"].lower()


# --- MissedFindingDialog -----------------------------------------------------------------------


def test_missed_finding_returns_kind_and_comment() -> None:
    async def steps(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#kind-fracture")
        await pilot.click("#comment")
        await type_text(pilot, " left 7th rib ")
        await pilot.press("enter")

    assert drive(MissedFindingDialog(), steps) == ("fracture", "left 7th rib")


def test_missed_finding_without_comment_is_none_and_needs_a_kind() -> None:
    dialog = MissedFindingDialog()
    seen: dict[str, Any] = {}

    async def steps(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#save")
        await pilot.pause()
        seen["open"] = app.screen is dialog
        seen["error"] = error_text(dialog)
        await pilot.click("#kind-nodule")
        await pilot.pause()
        seen["pressed"] = dialog.query_one("#kind-nodule", RadioButton).value
        await pilot.press("ctrl+s")

    assert drive(dialog, steps) == ("nodule", None)
    assert seen["open"] is True and "Choose" in seen["error"]
    assert seen["pressed"] is True


def test_missed_finding_escape_cancels() -> None:
    async def steps(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#kind-bleed")
        await pilot.press("escape")

    assert drive(MissedFindingDialog(), steps) is None


# --- CommentDialog -----------------------------------------------------------------------------


def test_comment_dialog_enter_submits_text_or_empty_and_escape_cancels() -> None:
    async def typed(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, "small bleed, agree")
        await pilot.press("enter")

    async def empty(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("enter")

    async def ok_button(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, "ok")
        await pilot.click("#ok")

    async def escape(pilot: Pilot[None], app: Host) -> None:
        await type_text(pilot, "never mind")
        await pilot.press("escape")

    assert drive(CommentDialog("Confirm bleed"), typed) == "small bleed, agree"
    assert drive(CommentDialog("Confirm bleed"), empty) == ""
    assert drive(CommentDialog("Reject bleed"), ok_button) == "ok"
    assert drive(CommentDialog("Reject bleed"), escape) is None


def test_comment_dialog_focuses_its_input() -> None:
    dialog = CommentDialog("Confirm")

    async def steps(pilot: Pilot[None], app: Host) -> None:
        assert isinstance(app.focused, Input)
        await pilot.press("escape")

    assert drive(dialog, steps) is None


# --- HistoryScreen -----------------------------------------------------------------------------


def _real_history(engine: Engine, settings: Settings) -> tuple[str, list[dict[str, Any]]]:
    """A study's trail as the system writes it: receive, inference, then a reader's work."""
    added = add_study(engine, findings=(("bleed", 0.93, 0.5),))
    with engine.begin() as conn:
        audit.append(
            conn,
            actor=audit.LISTENER_ACTOR,
            action=audit.Action.INSTANCES_RECEIVED,
            study_uid=added.uid,
            detail={
                "series_uid": f"{added.uid}.1",
                "calling_ae": "PACS1",
                "peer": "10.0.0.5",
                "found_by_recovery": False,
                "instances": [{"sop_instance_uid": f"{added.uid}.1.{i}", "sha256": "0" * 64} for i in range(24)],
            },
        )
        audit.append(
            conn,
            actor=audit.AI_ACTOR,
            action=audit.Action.INFERENCE,
            study_uid=added.uid,
            detail={
                "series_uid": f"{added.uid}.1",
                "generation": 0,
                "job": 1,
                "route": "bleed-ct",
                "analysed": True,
                "device": "cpu",
                "duration_s": 1.234,
                "inputs": [],
                "models": ['{"name": "bleed-ct", "sha256": "abab", "version": "1.0.0"}'],
                "outputs": [{"kind": "bleed", "probability": 0.9312, "operating_point": 0.5, "urgent": True, "regions": []}],
                "failures": [],
            },
        )
    service = WorklistService(engine, settings)
    service.claim(added.uid, "dr.ada")
    service.record_impression(added.uid, "dr.ada", "left SDH", ["bleed"])
    service.save_draft(added.uid, "dr.ada", "FINDINGS: left subdural haematoma.")
    sign_directly(service, added.uid, "dr.ada")
    return added.uid, service.history(added.uid)


def test_history_screen_lists_every_event_with_a_summary(engine: Engine, settings: Settings) -> None:
    uid, events = _real_history(engine, settings)
    # add_study's own arrival event first, then the ones written here.
    assert [e["action"] for e in events] == [
        "instances_received",
        "instances_received",
        "inference",
        "claim",
        "impression",
        "draft",
        "sign",
    ]
    dialog = HistoryScreen(uid, events)
    rows: list[list[str]] = []

    async def steps(pilot: Pilot[None], app: Host) -> None:
        table = dialog.query_one(DataTable)
        assert table.row_count == len(events)
        for i in range(table.row_count):
            rows.append([c.plain if isinstance(c, Text) else str(c) for c in table.get_row_at(i)])
        await pilot.press("q")

    assert drive(dialog, steps) is None
    assert [r[0] for r in rows] == [str(e["seq"]) for e in events]
    assert [r[2] for r in rows] == ["listener", "listener", "triage-ai", "dr.ada", "dr.ada", "dr.ada", "dr.ada"]
    assert [r[3] for r in rows] == [e["action"] for e in events]
    summaries = [r[4] for r in rows[1:]]
    assert summaries[0] == "24 instances from PACS1 (10.0.0.5)"
    assert summaries[1] == "bleed 0.93 urgent by bleed-ct 1.0.0 on cpu"
    assert summaries[2].startswith("unread -> reading, until ") and summaries[2].endswith(" UTC")
    assert summaries[3:] == ["present: bleed", "version 1, 34 chars", "version 1"]
    # Time to the second, on the site's clock (UTC in these tests) with its abbreviation.
    assert rows[-1][1] == format_time(events[-1]["at"])
    assert len(rows[-1][1]) == len("2024-01-01 12:00:00 UTC") and rows[-1][1].endswith(" UTC")


def test_history_screen_escape_and_close_button() -> None:
    events = [
        {
            "seq": 1,
            "at": "2024-03-01T10:20:30.123456+00:00",
            "actor": "system",
            "action": "weird",
            "detail": {"a": 1, "b": [1, 2], "c": {"x": 1}, "d": 0.123456, "e": "more"},
        }
    ]

    async def escape(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("escape")

    async def close(pilot: Pilot[None], app: Host) -> None:
        await pilot.click("#cancel")

    assert drive(HistoryScreen("1.2.3", events), escape) is None
    assert drive(HistoryScreen("1.2.3", []), close) is None
    assert HistoryScreen("1.2.3", events).rows() == [
        ("1", "2024-03-01 10:20:30 UTC", "system", "weird", "a=1 b=[2] c={…} d=0.123 (+1 more)")
    ]


def test_summaries_of_other_actions_and_odd_details() -> None:
    assert summarize_event("sign", {"version": 2, "report_id": 5}) == "version 2"
    assert summarize_event("amend", {"version": 2, "amends_version": 1}) == "version 2 amends version 1"
    assert summarize_event("feedback", {"verdict": "confirm", "kind": "bleed", "finding_id": 4}) == ("confirm bleed (finding 4)")
    assert summarize_event("view", {"ai_hidden": True, "findings_shown": []}) == "opened, AI output hidden"
    recovered = {"instances": [{}], "calling_ae": None, "peer": None, "found_by_recovery": True}
    assert summarize_event("instances_received", recovered) == "1 instance found in storage (recovery)"
    assert summarize_event("instances_received", {"instances": 3, "series_uid": "1.2"}) == "3 instances"
    assert summarize_event("inference_failed", {"failures": ["CUDA out of memory"], "attempts": 3}) == (
        "failed: CUDA out of memory (after 3 attempts)"
    )
    skipped = {"analysed": False, "route": "no detector for MR", "outputs": [], "models": [], "device": "cpu"}
    assert summarize_event("inference", skipped) == "not analysed: no detector for MR on cpu"
    # A detail of an unexpected shape is shown generically, never an error.
    assert summarize_event("sign", {"version": None}) == "version None"
    assert summarize_event("inference", {"outputs": "garbage"}) == "outputs=garbage"
    assert summarize_event("rank_changed", {}) == ""
    long = summarize_event("other", {"text": "x" * 500})
    assert len(long) == 90 and long.endswith("…")


def test_format_helpers() -> None:
    assert format_time("2024-03-01T12:00:00+02:00") == "2024-03-01 10:00:00 UTC"
    assert format_time("2024-03-01T12:00:00") == "2024-03-01 12:00:00 UTC"  # naive is UTC
    # On the site's clock: Tokyo is UTC+9 all year; Berlin is CET in winter and CEST in summer.
    assert format_time("2024-03-01T12:00:00+00:00", ZoneInfo("Asia/Tokyo")) == "2024-03-01 21:00:00 JST"
    assert format_time("2024-07-01T12:00:00+00:00", ZoneInfo("Europe/Berlin")) == "2024-07-01 14:00:00 CEST"
    claim = {"from": "unread", "to": "reading", "expires": "2024-03-01T23:30:00+00:00"}
    assert summarize_event("claim", claim, zone=ZoneInfo("Asia/Tokyo")) == "unread -> reading, until 08:30 JST"
    assert HistoryScreen("1.2.3", [{"seq": 1, "at": "2024-03-01T23:30:00+00:00"}], ZoneInfo("Asia/Tokyo")).rows()[0][1] == (
        "2024-03-02 08:30:00 JST"
    )
    assert format_time("not a time") == "not a time"
    assert format_person_name("DOE^JANE^Q") == "DOE, JANE Q"
    assert format_person_name(None) == "(no name)"
    assert format_key("question_mark") == "?"
    assert format_key("j,down") == "j / down"
    assert format_key("ctrl+s") == "ctrl+s"


# --- HelpScreen --------------------------------------------------------------------------------


def test_help_screen_lists_the_bindings_given_grouped() -> None:
    bindings = [
        ("StudyScreen", "c", "Claim"),
        ("app", "question_mark", "Keys"),
        ("StudyScreen", "escape", "Back"),
        ("app", "ctrl+q", "Quit"),
        ("StudyScreen", "c", "Claim"),  # repeated: listed once
    ]
    dialog = HelpScreen(bindings)
    rows: list[list[str]] = []

    async def steps(pilot: Pilot[None], app: Host) -> None:
        table = dialog.query_one(DataTable)
        for i in range(table.row_count):
            rows.append([c.plain if isinstance(c, Text) else str(c) for c in table.get_row_at(i)])
        await pilot.press("question_mark")  # ? closes it again

    assert drive(dialog, steps) is None
    assert rows == [["StudyScreen", "c", "Claim"], ["", "esc", "Back"], ["app", "?", "Keys"], ["", "ctrl+q", "Quit"]]


def test_help_screen_closes_on_escape_and_q() -> None:
    async def escape(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("escape")

    async def q(pilot: Pilot[None], app: Host) -> None:
        await pilot.press("q")

    for steps in (escape, q):
        assert drive(HelpScreen([("app", "q", "Quit")]), steps) is None, steps.__name__
