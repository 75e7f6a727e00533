"""A study re-sent with another patient ID over a real association is marked on the
worklist row and in the case detail, and its audit event reads as a conflict."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydicom import dcmread
from textual.widgets import Static

from dicom_io.writer import StudyMeta
from tests.scu import store
from tests.tui.support import SIZE, RecordingApp
from triage.reading.service import WorklistService
from triage.store import audit
from tui.formatting import summarize_event
from tui.model import CONFLICT_MARK
from tui.screens.study import StudyScreen
from tui.screens.worklist import WorklistScreen
from tui.table import WorklistTable


def _row_text(app: RecordingApp, uid: str) -> str:
    screen = app.screen
    assert isinstance(screen, WorklistScreen)
    table = screen.query_one(WorklistTable)
    index = screen.model.index_of(uid)
    assert index is not None, f"{uid} is not shown"
    return table.render_line(index + 1 - int(table.scroll_y)).text


def test_a_conflicting_resend_is_marked_on_the_row_and_in_the_detail(make_server, make_ct_series, tmp_path: Path) -> None:
    server = make_server()
    clean, doubtful = StudyMeta(patient_id="P1"), StudyMeta(patient_id="P5", patient_name="DOE^JANE")
    [ok] = make_ct_series(slices=1, size=16, meta=clean)
    [first] = make_ct_series(slices=1, size=16, meta=doubtful)
    ds = dcmread(first)
    ds.PatientID = "P6"
    other = tmp_path / "corrected.dcm"
    ds.save_as(other)
    assert store(server.port, [ok, first, other]) == [0, 0, 0]

    [event] = [e for e in audit.export(server.engine) if e["action"] == audit.Action.INSTANCE_CONFLICT.value]
    summary = summarize_event(event["action"], event["detail"], max_chars=200)
    assert "re-sent by TESTSCU with other content" in summary and "patient ID P5 -> P6" in summary

    app = RecordingApp(WorklistService(server.engine, server.settings), "dr.ada", poll_interval=0.1)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert CONFLICT_MARK + "DOE, JANE" in _row_text(app, doubtful.study_uid)
            assert CONFLICT_MARK not in _row_text(app, clean.study_uid)
            app.open_study(doubtful.study_uid)
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert isinstance(app.screen, StudyScreen)
            facts = app.screen.query_one("#facts", Static).content
            text = facts.plain if hasattr(facts, "plain") else str(facts)
            assert "Conflict: 1 version re-sent with other content" in text

    asyncio.run(scenario())
