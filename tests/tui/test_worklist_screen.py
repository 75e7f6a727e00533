"""The worklist screen, driven as a reader would: the real app on a real SQLite index."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from textual.pilot import Pilot
from textual.screen import Screen

from tests.tui.support import SIZE, RecordingApp, add_study
from triage.clock import utcnow
from triage.config import Settings
from triage.reading.service import WorklistService
from triage.store import audit
from triage.store.models import AIFinding, Series, SeriesResult, Study
from tui.app import WorklistApp
from tui.host import BANNER
from tui.screens.worklist import WorklistScreen
from tui.table import WorklistTable

NOW = utcnow()


def run(app: WorklistApp, scenario: Callable[[Pilot], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await scenario(pilot)

    asyncio.run(main())


def screen_of(app: WorklistApp) -> WorklistScreen:
    screen = app.screen
    assert isinstance(screen, WorklistScreen)
    return screen


def table_of(app: WorklistApp) -> WorklistTable:
    return screen_of(app).query_one(WorklistTable)


def shown(app: WorklistApp) -> list[str]:
    return list(screen_of(app).model.visible)


def line(app: WorklistApp, uid: str) -> str:
    """The rendered text of a study's row (it must be on screen)."""
    table = table_of(app)
    index = screen_of(app).model.index_of(uid)
    assert index is not None, f"{uid} is not shown"
    y = index + 1 - int(table.scroll_y)
    assert 1 <= y < table.size.height, f"{uid} is not on screen"
    return table.render_line(y).text


def announce(engine: Engine, uid: str) -> None:
    """What the pipeline does after a new AI result: an audit event, which live views poll for."""
    with engine.begin() as conn:
        audit.append(
            conn, actor=audit.AI_ACTOR, action=audit.Action.INFERENCE, study_uid=uid, detail={"series_uid": f"{uid}.1", "generation": 1}
        )


def notifications(app: RecordingApp) -> list[tuple[str, str]]:
    return list(app.notices)


def ranked(engine: Engine) -> dict[str, str]:
    """Three studies of known urgency, received in the opposite order: name -> uid."""
    return {
        "low": add_study(engine, findings=(("bleed", 0.1, 0.5),), received=NOW - timedelta(minutes=30)).uid,
        "fracture": add_study(
            engine, findings=(("fracture", 0.8, 0.5),), modality="DX", description="XR WRIST", received=NOW - timedelta(minutes=20)
        ).uid,
        "bleed": add_study(engine, findings=(("bleed", 0.95, 0.5),), order_priority="STAT", received=NOW - timedelta(minutes=10)).uid,
    }


def test_opens_in_urgency_order_with_badges_banner_and_user(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    s = ranked(engine)
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        assert shown(app) == [s["bleed"], s["fracture"], s["low"]]
        table = table_of(app)
        header = table.render_line(0).text
        assert "AI findings (suggestion)" in header and "Status" in header and "Patient" in header
        top = line(app, s["bleed"])
        assert top.lstrip().startswith("▲ CRIT")
        assert "bleed 0.95" in top and "STAT" in top and "new" in top and " 1 " in top
        assert line(app, s["fracture"]).lstrip().startswith("◆ URG") and "CR/DX" in line(app, s["fracture"])
        assert line(app, s["low"]).lstrip().startswith("● ROUT")
        # The badge is coloured and worded: its segment has a background and the class in text.
        badge = next(seg for seg in table.render_line(1) if "CRIT" in seg.text)
        assert badge.style is not None and badge.style.bgcolor is not None
        screen = screen_of(app)
        assert BANNER in str(screen.query_one("#banner").render())
        assert "dr.ada" in (screen.sub_title or "")
        assert table.has_focus and table.cursor_uid == s["bleed"]

    run(app, scenario)


def test_o_toggles_arrival_order_and_back(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    s = ranked(engine)
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        await pilot.press("o")
        assert shown(app) == [s["low"], s["fracture"], s["bleed"]]
        assert "arrival" in str(screen_of(app).query_one("#filters").render())
        assert table_of(app).cursor_uid == s["bleed"]  # the cursor followed its study
        # Ranks stay the urgency ranks in arrival order.
        assert " 3 " in line(app, s["low"]) and " 1 " in line(app, s["bleed"])
        await pilot.press("o")
        assert shown(app) == [s["bleed"], s["fracture"], s["low"]]

    run(app, scenario)


def test_modality_status_and_finding_filters_cycle(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    s = ranked(engine)
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        await pilot.press("m")  # CR/DX
        assert shown(app) == [s["fracture"]]
        await pilot.press("m")  # CT
        assert shown(app) == [s["bleed"], s["low"]]
        await pilot.press("m")  # all
        assert len(shown(app)) == 3
        await pilot.press("f")  # any flagged finding
        assert shown(app) == [s["bleed"], s["fracture"]]
        await pilot.press("f")  # bleed
        assert shown(app) == [s["bleed"]]
        assert "bleed" in str(screen_of(app).query_one("#filters").render())
        await pilot.press("f", "f", "f")  # fracture, nodule, all
        assert len(shown(app)) == 3
        table_of(app).select_uid(s["low"])
        await pilot.press("c")
        await pilot.press("s", "s", "s")  # unsigned, new, in review
        assert screen_of(app).model.status == "in review"
        assert shown(app) == [s["low"]]
        await pilot.press("s")  # signed
        assert shown(app) == []
        assert table_of(app).cursor_uid is None

    run(app, scenario)


def test_search_by_id_name_and_accession_then_escape_clears(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    s = ranked(engine)
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        model = screen_of(app).model
        fracture = model.get(s["fracture"])
        assert fracture is not None
        for text in (fracture.study.patient_id, fracture.study.patient_name, fracture.study.accession_number):
            assert text
            await pilot.press("slash")
            box = screen_of(app).query_one("#search")
            assert box.has_focus
            await pilot.press(*text.lower())  # any case
            assert shown(app) == [s["fracture"]], text
            await pilot.press("escape")
            assert len(shown(app)) == 3 and model.search == ""
            assert table_of(app).has_focus
        await pilot.press("slash", "n", "o", "b", "o", "d", "y", "enter")
        assert shown(app) == [] and table_of(app).has_focus  # enter keeps the search
        await pilot.press("escape")
        assert len(shown(app)) == 3

    run(app, scenario)


def test_keys_move_the_cursor_and_scroll(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    for n in range(60):
        add_study(engine, findings=(("bleed", n / 100, 0.5),), received=NOW - timedelta(minutes=n))
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        table, uids = table_of(app), shown(app)
        page = table.page_rows
        assert 10 < page < 60
        await pilot.press("j", "j", "down")
        assert (table.cursor_index, table.cursor_uid) == (3, uids[3])
        await pilot.press("k", "up")
        assert table.cursor_index == 1
        await pilot.press("pagedown")
        assert table.cursor_index == 1 + page
        await pilot.press("end")
        assert (table.cursor_index, table.cursor_uid) == (59, uids[59])
        assert table.scroll_y > 0 and line(app, uids[59])  # scrolled so that the last row is on screen
        await pilot.press("pageup")
        assert table.cursor_index == 59 - page
        await pilot.press("home")
        assert (table.cursor_index, table.scroll_y) == (0, 0)

    run(app, scenario)


def test_enter_click_and_double_click_open(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    s = ranked(engine)
    app = make_app()
    opened: list[str] = []
    app.open_study = opened.append  # the study screen is another module's

    async def scenario(pilot: Pilot) -> None:
        table = table_of(app)
        await pilot.press("enter")
        assert opened == [s["bleed"]]
        await pilot.click(WorklistTable, offset=(20, 3))  # header line 0, so line 3 is the third row
        assert table.cursor_uid == s["low"] and opened == [s["bleed"]]
        await pilot.double_click(WorklistTable, offset=(20, 2))
        assert table.cursor_uid == s["fracture"] and opened == [s["bleed"], s["fracture"]]
        await pilot.click(WorklistTable, offset=(20, 0))  # the header does nothing
        assert table.cursor_uid == s["fracture"]
        # The filter bar's values are clickable: the sort mode toggles, the filter cycles.
        bar = screen_of(app).query_one("#filters")
        await pilot.click("#filters", offset=(str(bar.render()).index("urgency") + 2, 0))  # +1 padding
        assert screen_of(app).model.sort == "arrival"
        await pilot.click("#filters", offset=(str(bar.render()).index("Modality all") + 10, 0))
        assert screen_of(app).model.modality == "CR/DX"
        assert shown(app) == [s["fracture"]] and table.cursor_uid == s["fracture"]

    run(app, scenario)


def test_live_insert_and_rescore_keep_the_cursor_on_its_study(
    engine: Engine, make_app: Callable[..., WorklistApp], settings: Settings
) -> None:
    s = ranked(engine)
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        table = table_of(app)
        await pilot.press("j")
        assert table.cursor_uid == s["fracture"]
        # Another process receives a critical study and a routine one while the app runs.
        hot = add_study(engine, findings=(("bleed", 0.99, 0.5),), order_priority="STAT", received=NOW - timedelta(minutes=60)).uid
        cold = add_study(engine, findings=(("nodule", 0.05, 0.5),), received=NOW - timedelta(minutes=1)).uid
        await pilot.pause(0.5)
        assert shown(app) == [hot, s["bleed"], s["fracture"], s["low"], cold]
        assert (table.cursor_uid, table.cursor_index) == (s["fracture"], 2)
        assert line(app, hot).lstrip().startswith("▲ CRIT") and "bleed 0.99" in line(app, hot)
        # Re-scored: the low study's AI result now flags a bleed; it moves up, the cursor stays.
        with Session(engine) as session:
            low = session.exec(select(Study).where(Study.study_uid == s["low"])).one()
            series = session.exec(select(Series).where(Series.study_pk == low.id)).one()
            result = SeriesResult(series_pk=series.id, study_pk=low.id, generation=1, analysed=True)
            session.add(result)
            session.flush()
            series_pk = result.series_pk
            session.add(
                AIFinding(
                    result_pk=result.id,
                    study_pk=low.id,
                    series_pk=series_pk,
                    kind="bleed",
                    probability=0.97,
                    operating_point=0.5,
                    urgent=True,
                    model_name="bleed-ct",
                    model_version="1.0.0",
                    weights_sha256="ab" * 32,
                    regions="[]",
                )
            )
            session.commit()
        announce(engine, s["low"])
        await pilot.pause(0.5)
        assert shown(app).index(s["low"]) < shown(app).index(s["fracture"])
        assert "bleed 0.97" in line(app, s["low"])
        assert table.cursor_uid == s["fracture"]

    run(app, scenario)


def test_live_insert_at_the_top_shows_and_scrolled_view_holds_still(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    for n in range(60):
        add_study(engine, findings=(("bleed", n / 100, 0.5),), received=NOW - timedelta(minutes=n))
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        table = table_of(app)
        await pilot.press("j", "j")
        was = table.cursor_uid
        hot = add_study(engine, findings=(("bleed", 0.99, 0.5),), order_priority="STAT", received=NOW - timedelta(minutes=120)).uid
        await pilot.pause(0.5)
        # At the top of the list a new critical study is in view, and the cursor kept its study.
        assert shown(app)[0] == hot and table.scroll_y == 0 and "bleed 0.99" in line(app, hot)
        assert (table.cursor_uid, table.cursor_index) == (was, 3)
        # Scrolled down, the cursor's line stays put on screen while rows arrive above it.
        await pilot.press("pagedown", "pagedown")
        assert table.scroll_y > 0
        was, screen_row = table.cursor_uid, table.cursor_index - table.scroll_y
        add_study(engine, findings=(("bleed", 0.98, 0.5),), order_priority="STAT", received=NOW - timedelta(minutes=119))
        await pilot.pause(0.5)
        assert table.cursor_uid == was and table.cursor_index - table.scroll_y == screen_row

    run(app, scenario)


def test_claim_and_release_from_the_list(engine: Engine, make_app: Callable[..., WorklistApp], settings: Settings) -> None:
    s = ranked(engine)
    app = make_app()
    service = WorklistService(engine, settings)

    async def scenario(pilot: Pilot) -> None:
        await pilot.press("j", "c")
        assert "in review by dr.ada" in line(app, s["fracture"])
        assert service.items_for([s["fracture"]])[0].study.claimed_by == "dr.ada"
        await pilot.press("r")
        assert "new" in line(app, s["fracture"]) and "in review" not in line(app, s["fracture"])
        assert service.items_for([s["fracture"]])[0].study.claimed_by is None

    run(app, scenario)


def test_claim_conflict_is_a_notification_not_a_crash(engine: Engine, make_app: Callable[..., WorklistApp], settings: Settings) -> None:
    s = ranked(engine)
    app = make_app()
    other = WorklistService(engine, settings)

    async def scenario(pilot: Pilot) -> None:
        other.claim(s["bleed"], "dr.bob")  # another reader, another process, before our poll saw it
        await pilot.press("c")
        errors = [msg for sev, msg in notifications(app) if sev == "error"]
        assert any("claimed by dr.bob" in m for m in errors), notifications(app)
        assert "in review by dr.bob" in line(app, s["bleed"])
        await pilot.press("r")  # not ours to release: refused, still running
        assert other.items_for([s["bleed"]])[0].study.claimed_by == "dr.bob"
        assert app.is_running and isinstance(app.screen, WorklistScreen)

    run(app, scenario)


def test_blinded_reader_sees_no_findings_but_the_class(engine: Engine, make_app: Callable[..., WorklistApp]) -> None:
    s = ranked(engine)
    app = make_app(blinded=True)

    async def scenario(pilot: Pilot) -> None:
        top = line(app, s["bleed"])
        assert "hidden until impression" in top and "0.95" not in top
        assert top.lstrip().startswith("▲ CRIT")
        assert "blinded" in (screen_of(app).sub_title or "")

    run(app, scenario)


def test_back_from_another_screen_shows_what_changed_meanwhile(
    engine: Engine, make_app: Callable[..., WorklistApp], settings: Settings
) -> None:
    s = ranked(engine)
    app = make_app()

    async def scenario(pilot: Pilot) -> None:
        await app.push_screen(Screen())
        WorklistService(engine, settings).claim(s["low"], "dr.bob")
        app.pop_screen()
        await pilot.pause()
        assert "in review by dr.bob" in line(app, s["low"])
        # A study written without an audit event is not seen by the poll; R reloads everything.
        bulk_add(engine, 1)
        quiet = "9.9.0"
        await pilot.pause(0.3)
        assert quiet not in shown(app)
        await pilot.press("R")
        assert quiet in shown(app)
        # The timed full reload runs in a worker thread and lands as a message.
        bulk_add(engine, 1, prefix="9.8")
        assert "9.8.0" not in shown(app)
        screen_of(app).reload_in_background()
        await screen_of(app).workers.wait_for_complete()
        await pilot.pause()
        assert "9.8.0" in shown(app) and quiet in shown(app)

    run(app, scenario)


def bulk_add(engine: Engine, n: int, prefix: str = "9.9") -> None:
    """``n`` scored CT/DX studies in one transaction (add_study's one commit each is too slow here)."""
    with Session(engine) as s:
        studies = [
            Study(
                study_uid=f"{prefix}.{i}",
                patient_id=f"B{i:06d}",
                patient_name=f"BULK^PAT{i}",
                patient_sex="M",
                patient_age="050Y",
                accession_number=f"BACC{i:06d}",
                modalities="CT" if i % 3 else "DX",
                study_description="BULK",
                order_priority="ROUTINE",
                num_series=1,
                num_instances=1,
                first_received=NOW - timedelta(minutes=i % 600, seconds=i),
                last_received=NOW,
                status="complete",
                ai_status="scored",
            )
            for i in range(n)
        ]
        s.add_all(studies)
        s.flush()
        series = [
            Series(
                series_uid=f"{st.study_uid}.1",
                study_pk=st.id,
                modality=st.modalities,
                num_instances=1,
                first_received=NOW,
                last_received=NOW,
                status="complete",
            )
            for st in studies
        ]
        s.add_all(series)
        s.flush()
        results = [SeriesResult(series_pk=se.id, study_pk=se.study_pk, analysed=True) for se in series]
        s.add_all(results)
        s.flush()
        s.add_all(
            [
                AIFinding(
                    result_pk=r.id,
                    study_pk=r.study_pk,
                    series_pk=r.series_pk,
                    kind="bleed",
                    probability=(i * 37 % 100) / 100,
                    operating_point=0.5,
                    urgent=(i * 37 % 100) >= 50,
                    model_name="bleed-ct",
                    model_version="1",
                    weights_sha256="ab" * 32,
                    regions="[]",
                )
                for i, r in enumerate(results)
            ]
        )
        s.commit()


def test_two_thousand_studies_load_and_update_live(engine: Engine, settings: Settings) -> None:
    bulk_add(engine, 2000)
    # A fixed clock: ageing would otherwise reorder ties between this listing and the app's.
    service = WorklistService(engine, settings, clock=lambda: NOW)
    app = WorklistApp(service, "dr.ada", poll_interval=0.1)
    expected = [i.study.study_uid for i in service.items(user="dr.ada")]

    async def scenario(pilot: Pilot) -> None:
        screen, table = screen_of(app), table_of(app)
        assert screen.model.total == 2000 and shown(app) == expected
        await pilot.press("end")
        assert table.cursor_uid == expected[-1]
        uid = add_study(engine, findings=(("bleed", 0.99, 0.5),), order_priority="STAT", received=NOW - timedelta(minutes=600)).uid
        screen.poll()  # what the timer does: one small read, one incremental apply (`triage bench tui` times it)
        assert shown(app)[0] == uid and table.cursor_uid == expected[-1]

    run(app, scenario)
