"""The study screen driven through the real app on a real SQLite index: claim,
feedback, report, sign (and its refusals), amend, blinded reads, the display
modes, and the preview of a real sample series with its region box."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from textual import events
from textual.widgets import Input, Static, TextArea

from dicom_io.store import InstanceStore
from tests.tui.support import PASSWORD, SIZE, RecordingApp, add_study, sign_directly
from triage.config import Settings
from triage.reading.identity import os_account
from triage.reading.service import WorklistService
from triage.reading.views import HIDDEN_REASON
from triage.store.index import SqlIndex
from triage.store.models import AIFinding, SeriesResult
from triage.store.recovery import recover
from triage.store.tables import SERIES, STUDY
from triage.vocabulary import ReadState, ReportStatus, Verdict
from tui.app import WorklistApp
from tui.dialogs import CommentDialog, ConfirmSign, HistoryScreen, ImpressionDialog, MissedFindingDialog, PasswordPrompt, ReportEditor
from tui.imaging import BOX_COLOUR
from tui.preview import HalfBlockImage, ImagePreview
from tui.screens.study import StudyScreen

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_studies"


# --- helpers --------------------------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def screen_text(app: WorklistApp) -> str:
    """Everything the study screen shows in words (its panels and the preview's caption)."""
    parts = []
    for widget in app.screen.query(Static):
        content = widget.content
        parts.append(content.plain if hasattr(content, "plain") else str(content))
    return "\n".join(parts)


def errors(app: RecordingApp) -> list[str]:
    return [message for severity, message in app.notices if severity == "error"]


def strip_colours(preview: ImagePreview) -> set[tuple[int, int, int]]:
    """Every foreground and background colour of the preview's half-block lines."""
    image = preview.query_one(HalfBlockImage)
    colours: set[tuple[int, int, int]] = set()
    for line in image.rendered().lines:
        for segment in line:
            if segment.style is not None:
                for c in (segment.style.color, segment.style.bgcolor):
                    if c is not None:
                        colours.add(tuple(c.get_truecolor()))
    return colours


async def type_text(pilot: Any, text: str) -> None:
    await pilot.press(*["space" if ch == " " else ch for ch in text])


async def open_study(app: WorklistApp, pilot: Any, uid: str) -> StudyScreen:
    app.open_study(uid)
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
    assert isinstance(app.screen, StudyScreen)
    return app.screen


def service_of(app: WorklistApp) -> WorklistService:
    return app.service


def place_head_ct(settings: Settings, engine: Engine, *, probability: float = 0.9) -> tuple[str, dict[str, Any]]:
    """The sample head CT with a bleed, indexed as received, with an AI finding at its ground-truth box."""
    manifest = json.loads((SAMPLES / "manifest.json").read_text())
    entry = next(s for s in manifest["studies"] if s["folder"] == "05_head_ct")
    store = InstanceStore(settings.data_dir)
    for path in sorted((SAMPLES / "05_head_ct").glob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        target = settings.data_dir / store.relpath_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    recover(store, SqlIndex(engine, data_dir=settings.data_dir), engine)
    truth = entry["findings"][0]
    first, last = truth["slices"]
    region = {
        "series_uid": entry["series_uid"],
        "sop_instance_uid": truth["sop_instance_uids"][1],
        "slice_index": first + 1,
        "slices": [first, last],
        "box": truth["box"],
        "probability": probability,
    }
    with engine.connect() as conn:
        study_pk = conn.execute(select(STUDY.c.id).where(STUDY.c.study_uid == entry["study_uid"])).scalar_one()
        series_pk = conn.execute(select(SERIES.c.id).where(SERIES.c.series_uid == entry["series_uid"])).scalar_one()
    with Session(engine) as s:
        result = SeriesResult(series_pk=series_pk, study_pk=study_pk, generation=0, analysed=True)
        s.add(result)
        s.flush()
        s.add(
            AIFinding(
                result_pk=result.id,
                study_pk=study_pk,
                series_pk=series_pk,
                kind="bleed",
                probability=probability,
                operating_point=0.5,
                urgent=True,
                model_name="bleed-ct",
                model_version="1.0.0",
                weights_sha256="cd" * 32,
                regions=json.dumps([region]),
            )
        )
        s.commit()
    with engine.begin() as conn:  # scored, as the pipeline leaves it
        conn.execute(update(STUDY).where(STUDY.c.id == study_pk).values(ai_status="scored"))
    return entry["study_uid"], truth


# --- claim, feedback ------------------------------------------------------------------------------


def test_claim_and_release_through_the_screen(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_study(app, pilot, added.uid)
            assert "not claimed" in screen_text(app)
            await pilot.press("c")
            await pilot.pause()
            view = service_of(app).open(added.uid, "dr.ada")
            assert view.study.claimed_by == "dr.ada" and view.study.read_state is ReadState.READING
            assert "claimed by you" in screen_text(app)
            await pilot.press("r")
            await pilot.pause()
            view = service_of(app).open(added.uid, "dr.ada")
            assert view.study.claimed_by is None and view.study.read_state is ReadState.UNREAD
            assert screen.view is not None and screen.view.study.claimed_by is None
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, StudyScreen)

    run(scenario)


def test_the_screen_shows_facts_and_each_finding_as_a_labelled_suggestion(make_app, engine: Engine) -> None:
    added = add_study(engine, findings=(("bleed", 0.93, 0.5), ("fracture", 0.31, 0.4)), order_priority="STAT")
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            text = screen_text(app)
            n = added.uid.rsplit(".", 1)[-1]
            assert f"DOE, PAT{n}" in text and "064Y" in text and "Sex F" in text
            assert f"ACC{int(n):05d}" in text and "CT HEAD WO CONTRAST" in text and "Order priority STAT" in text
            assert "AI suggestion: bleed  URGENT" in text and "AI suggestion: fracture  not urgent" in text
            assert "probability 0.93, operating point 0.50" in text
            assert "model bleed-ct 1.0.0 sha256 abababababab" in text
            assert "1 region" in text
            assert "CRITICAL" in text or "URGENT" in text
            # No stored files for this study: the preview says so instead of raising.
            preview = app.screen.query_one(ImagePreview)
            assert preview.pixels is None and preview.error and "no stored files" in preview.error

    run(scenario)


def test_agree_and_disagree_are_recorded_per_selected_finding(make_app, engine: Engine) -> None:
    added = add_study(engine, findings=(("bleed", 0.9, 0.5), ("fracture", 0.7, 0.4)))
    bleed_id, fracture_id = added.finding_ids
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_study(app, pilot, added.uid)
            await pilot.press("a")  # not claimed: refused, shown as a notification
            await pilot.pause()
            assert isinstance(app.screen, CommentDialog)
            await pilot.press("enter")
            await pilot.pause()
            assert any("cannot give feedback" in e for e in errors(app))
            assert service_of(app).open(added.uid, "dr.ada").feedback == ()

            await pilot.press("c")
            assert screen.selected_finding_id == bleed_id  # the strongest first
            await pilot.press("a")
            await pilot.pause()
            await type_text(pilot, "clear bleed")
            await pilot.press("enter")
            await pilot.pause()
            await pilot.press("tab")
            assert screen.selected_finding_id == fracture_id
            await pilot.press("d", "enter")
            await pilot.pause()
            view = service_of(app).open(added.uid, "dr.ada")
            got = [(f.finding_id, f.verdict, f.comment) for f in view.feedback]
            assert got == [(bleed_id, Verdict.AGREE, "clear bleed"), (fracture_id, Verdict.DISAGREE, None)]
            text = screen_text(app)
            assert "your feedback: agree (clear bleed)" in text and "your feedback: disagree" in text
            await pilot.press("[", "u", "escape")  # cancelled: nothing recorded
            await pilot.pause()
            assert len(service_of(app).open(added.uid, "dr.ada").feedback) == 2

    run(scenario)


def test_ai_missed_a_finding(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press("c", "m")
            await pilot.pause()
            assert isinstance(app.screen, MissedFindingDialog)
            await pilot.click("#kind-fracture")
            app.screen.query_one("#comment", Input).value = "left radius"
            await pilot.click("#save")
            await pilot.pause()
            (fb,) = service_of(app).open(added.uid, "dr.ada").feedback
            assert (fb.verdict, fb.kind, fb.finding_id, fb.comment) == (Verdict.MISSED, "fracture", None, "left radius")
            assert "You noted the AI missed: fracture (left radius)" in screen_text(app)

    run(scenario)


# --- report, sign, amend --------------------------------------------------------------------------


def test_draft_and_sign_through_the_dialogs(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press("c", "e")
            await pilot.pause()
            assert isinstance(app.screen, ReportEditor)
            await type_text(pilot, "Acute bleed.")
            await pilot.press("ctrl+s")
            await pilot.pause()
            (draft,) = service_of(app).open(added.uid, "dr.ada").reports
            assert (draft.status, draft.text, draft.author) == (ReportStatus.DRAFT, "Acute bleed.", "dr.ada")

            await pilot.press("s")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, ConfirmSign)
            assert dialog.user == "dr.ada" and dialog.study.study_uid == added.uid
            shown = screen_text(app)
            assert "dr.ada" in shown and added.uid in shown and "Acute bleed." in shown
            await pilot.press("enter")  # Cancel has the focus: a stray enter does not sign
            await pilot.pause()
            assert service_of(app).open(added.uid, "dr.ada").reports[-1].status is ReportStatus.DRAFT

            # Confirmed, then the password again; a wrong one is a notification and signs nothing.
            await pilot.press("s")
            await pilot.pause()
            await pilot.click("#sign")
            await pilot.pause()
            prompt = app.screen
            assert isinstance(prompt, PasswordPrompt) and prompt.query_one("#password", Input).password
            assert "Signing password for dr.ada" in prompt.prompt
            await type_text(pilot, "not-the-password")
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)
            assert any("wrong signing password for dr.ada" in e for e in errors(app))
            assert service_of(app).open(added.uid, "dr.ada").reports[-1].status is ReportStatus.DRAFT

            await pilot.press("s")
            await pilot.pause()
            await pilot.click("#sign")
            await pilot.pause()
            await type_text(pilot, PASSWORD)
            await pilot.press("enter")
            await pilot.pause()
            view = service_of(app).open(added.uid, "dr.ada")
            (signed,) = view.reports
            assert (signed.status, signed.signed_by) == (ReportStatus.SIGNED, "dr.ada")
            assert view.study.read_state is ReadState.SIGNED and view.study.claimed_by is None
            assert "v1 signed by dr.ada" in screen_text(app)
            sign_event = [e for e in service_of(app).history(added.uid) if e["action"] == "sign"][-1]
            assert sign_event["detail"]["auth"] == "password" and sign_event["detail"]["os_account"] == os_account()

    run(scenario)


def test_signing_is_refused_on_a_study_claimed_by_someone_else(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()
    service = app.service
    service.claim(added.uid, "dr.bob")
    service.save_draft(added.uid, "dr.bob", "Bob's report")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            assert "claimed by dr.bob" in screen_text(app)
            await pilot.press("s")
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)  # no confirmation offered
            assert any("claimed by dr.bob" in e for e in errors(app))
            await pilot.press("c", "e")  # neither claim nor draft is possible
            await pilot.pause()
            assert any("is claimed by dr.bob" in e for e in errors(app))
            if isinstance(app.screen, ReportEditor):
                await type_text(pilot, "Ada")
                await pilot.press("ctrl+s")
                await pilot.pause()
        (report,) = service.open(added.uid, "dr.bob").reports
        assert (report.status, report.text, report.signed_by) == (ReportStatus.DRAFT, "Bob's report", None)

    run(scenario)


def test_signing_is_refused_without_a_user(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press("c", "e")
            await pilot.pause()
            await type_text(pilot, "Report")
            await pilot.press("ctrl+s")
            await pilot.pause()
            app.user = "  "  # whoever is at the terminal is no longer named
            await pilot.press("s")
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)
            assert any("a named user is required" in e for e in errors(app))
        (report,) = app.service.open(added.uid, "dr.ada").reports
        assert report.status is ReportStatus.DRAFT and report.signed_by is None

    run(scenario)


def test_amend_a_signed_report(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()
    service = app.service
    service.claim(added.uid, "dr.ada")
    service.save_draft(added.uid, "dr.ada", "No bleed.")
    sign_directly(service, added.uid, "dr.ada")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press("A")  # not claimed: refused before the editor opens
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)
            assert any("has not claimed it" in e for e in errors(app))
            await pilot.press("c", "A")
            await pilot.pause()
            editor = app.screen
            assert isinstance(editor, ReportEditor)
            area = editor.query_one(TextArea)
            assert area.text == "No bleed."  # starts from the signed text
            area.text = "Small bleed, left."
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert isinstance(app.screen, PasswordPrompt)  # amending asks for the password too
            await type_text(pilot, PASSWORD)
            await pilot.press("enter")
            await pilot.pause()
            view = service.open(added.uid, "dr.ada")
            first, second = view.reports
            assert first.status is ReportStatus.SIGNED and first.text == "No bleed."  # untouched
            assert (second.version, second.status, second.amends_id) == (2, ReportStatus.DRAFT, first.id)
            assert view.study.read_state is ReadState.READING
            await pilot.press("s")
            await pilot.pause()
            await pilot.click("#sign")
            await pilot.pause()
            await type_text(pilot, PASSWORD)
            await pilot.press("enter")
            await pilot.pause()
            assert [r.status for r in service.open(added.uid, "dr.ada").reports] == [ReportStatus.SIGNED] * 2
            assert "v2 signed by dr.ada" in screen_text(app) and "amends v1" in screen_text(app)

    run(scenario)


def test_history_shows_the_study_audit_trail(make_app, engine: Engine) -> None:
    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press("c", "h")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, HistoryScreen) and dialog.study_uid == added.uid
            actions = [e["action"] for e in dialog.audit_events]
            assert actions[-3:] == ["view", "claim", "view"]  # opened, claimed, opened again
            assert all(e["study_uid"] == added.uid for e in dialog.audit_events)
            assert dialog.audit_events[-2]["actor"] == "dr.ada"
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)

    run(scenario)


# --- what the reader sees of the AI: blinded, flag only, regions ---------------------------------


def test_blinded_read_hides_the_ai_until_the_impression_is_recorded(make_app, engine, settings) -> None:
    uid, truth = place_head_ct(settings, engine)
    app = make_app(blinded=True)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_study(app, pilot, uid)
            preview = screen.query_one(ImagePreview)
            assert preview.pixels is not None and preview.pixels.n_slices == 24
            text = screen_text(app)
            assert HIDDEN_REASON in text
            assert "probability" not in text and "0.90" not in text and "AI suggestion:" not in text
            assert "flagged" not in text  # not even where the regions are
            assert preview.findings == ()
            for index in range(preview.pixels.n_slices):
                preview.go_to(index)
                assert preview.visible_boxes() == []
            preview.go_to(truth["slices"][0] + 1)
            await pilot.pause()
            assert BOX_COLOUR not in strip_colours(preview)
            await pilot.press("a")  # no feedback before the impression
            await pilot.pause()
            assert any(HIDDEN_REASON in e for e in errors(app))

            await pilot.press("c", "i")
            await pilot.pause()
            assert isinstance(app.screen, ImpressionDialog)
            await type_text(pilot, "hyperdense focus")
            await pilot.click("#kind-bleed")
            await pilot.press("ctrl+s")
            await pilot.pause()
            view = app.service.open(uid, "dr.ada")
            assert view.impression is not None and view.impression.kinds == ("bleed",) and not view.ai_hidden
            text = screen_text(app)
            assert HIDDEN_REASON not in text and "probability 0.90" in text
            assert preview.visible_boxes() == [tuple(truth["box"])]
            await pilot.pause()
            assert BOX_COLOUR in strip_colours(preview)

    run(scenario)


def test_regions_mode_draws_the_box_on_flagged_slices_only(make_app, engine, settings, monkeypatch) -> None:
    import tui.preview

    monkeypatch.setattr(tui.preview, "_graphics", "tgp")  # even where the terminal has graphics:
    # under run_test (headless) the deterministic half-block renderer is used.
    uid, truth = place_head_ct(settings, engine)
    app = make_app()
    first, last = truth["slices"]

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_study(app, pilot, uid)
            preview = screen.query_one(ImagePreview)
            assert preview.slice_index == first + 1  # opens on the region's strongest slice
            assert preview.window == "brain"  # a head CT
            assert preview.visible_boxes() == [tuple(truth["box"])]
            await pilot.pause()
            image = preview.query_one(HalfBlockImage)
            rendered = image.rendered()
            r0, c0, r1, c1 = rendered.boxes[0]
            line = rendered.lines[r0 // 2]
            (segment,) = list(line.crop(c0 + 1, c0 + 2))
            colour = segment.style.color if r0 % 2 == 0 else segment.style.bgcolor
            assert tuple(colour.get_truecolor()) == BOX_COLOUR
            assert f"flagged slices {first + 1}-{last + 1}" in screen_text(app)

            await pilot.press("b")  # regions off
            await pilot.pause()
            assert preview.visible_boxes() == [] and BOX_COLOUR not in strip_colours(preview)
            await pilot.press("b")
            await pilot.press("k", "k", "k")
            assert preview.slice_index == first - 2 and preview.visible_boxes() == []
            await pilot.press("n")
            assert preview.slice_index == first and preview.visible_boxes() == [tuple(truth["box"])]
            await pilot.press("pagedown")
            assert preview.slice_index == min(first + 10, 23)
            await pilot.press("pageup", "pageup", "pageup")
            assert preview.slice_index == 0
            preview.post_message(events.MouseScrollDown(preview, 1, 1, 0, 1, 0, False, False, False))
            await pilot.pause()
            assert preview.slice_index == 1
            preview.post_message(events.MouseScrollUp(preview, 1, 1, 0, -1, 0, False, False, False))
            await pilot.pause()
            assert preview.slice_index == 0
            await pilot.press("w")
            assert preview.window == "subdural"

    run(scenario)


def test_flag_only_shows_the_flag_but_never_marks_the_image(make_app, engine, settings) -> None:
    uid, truth = place_head_ct(settings, engine)
    app = make_app(display="flag_only")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_study(app, pilot, uid)
            preview = screen.query_one(ImagePreview)
            assert preview.slice_index == 12  # the middle: the start slice must not point at the region
            assert "probability 0.90" in screen_text(app) and "URGENT" in screen_text(app)
            await pilot.press("b", "n")  # cannot be switched on, no jumping to the region
            await pilot.pause()
            assert preview.slice_index == 12
            for index in range(truth["slices"][0], truth["slices"][1] + 1):
                preview.go_to(index)
                await pilot.pause()
                assert preview.visible_boxes() == []
                assert BOX_COLOUR not in strip_colours(preview)

    run(scenario)


def test_an_unknown_study_is_a_notification_not_a_traceback(make_app) -> None:
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            app.open_study("1.2.3.4.404")
            await pilot.pause()
            await pilot.pause()
            assert not isinstance(app.screen, StudyScreen)
            assert any("not found" in e for e in errors(app))

    run(scenario)


@pytest.mark.parametrize("key", ["s", "A", "a", "m", "r"])
def test_refusals_before_claiming_never_raise(make_app, engine: Engine, key: str) -> None:
    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press(key)
            await pilot.pause()
            if not isinstance(app.screen, StudyScreen):  # a dialog: submit it as it is
                await pilot.press("enter" if isinstance(app.screen, CommentDialog) else "ctrl+s")
                await pilot.pause()
                if not isinstance(app.screen, StudyScreen):
                    await pilot.press("escape")
                    await pilot.pause()
            assert isinstance(app.screen, StudyScreen)
            if key != "m":  # the missed-finding dialog refuses an empty kind in place
                assert errors(app)

    run(scenario)


def test_help_lists_the_study_keys_with_their_descriptions(make_app, engine: Engine) -> None:
    from tui.dialogs import HelpScreen

    added = add_study(engine)
    app = make_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await open_study(app, pilot, added.uid)
            await pilot.press("question_mark")
            await pilot.pause()
            dialog = app.screen
            assert isinstance(dialog, HelpScreen)
            described = {description for _, _, description in dialog.key_bindings}
            for expected in (
                "Back",
                "Claim",
                "Release",
                "Agree",
                "Disagree",
                "Unsure",
                "AI missed",
                "Impression",
                "Report",
                "Sign",
                "Amend",
                "History",
                "Next slice",
                "Next flagged slice",
                "Window preset",
                "Regions on/off",
            ):
                assert expected in described

    run(scenario)
