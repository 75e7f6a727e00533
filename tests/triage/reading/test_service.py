"""The worklist service on a real SQLite file: state machine, claims, the AI
refused, immutable signed reports, blinded reads, feedback, ranking, audit.

Studies, series, results and findings are inserted directly (the pipeline's
job); every reading action goes through the service.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tests.support import REPO_ROOT
from tests.triage.rows import T0, add_result, add_study
from triage.config import Settings, WorklistSettings
from triage.reading.identity import AuthMethod
from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential
from triage.reading.states import (
    TRANSITIONS,
    ClaimConflict,
    InvalidInput,
    InvalidTransition,
    NotFound,
    NotPermitted,
    ReadAction,
    WorklistError,
    next_state,
)
from triage.reading.views import HIDDEN_REASON
from triage.store import audit
from triage.store.db import make_engine
from triage.store.models import AuditEvent, Feedback, Impression, Report, Study
from triage.vocabulary import ReadState, ReportStatus, Verdict

A, B = "dr.a", "dr.b"
U, R, S = ReadState.UNREAD, ReadState.READING, ReadState.SIGNED
Act = ReadAction


class Clock:
    """An injectable clock that moves only when told."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def make_service(engine: Engine, clock: Clock, tmp_path: Path) -> Callable[..., WorklistService]:
    def make(blinded: bool = False, claim_minutes: float = 30.0) -> WorklistService:
        settings = Settings(data_dir=tmp_path, worklist=WorklistSettings(blinded=blinded, claim_minutes=claim_minutes))
        return WorklistService(engine, settings, clock=clock)

    return make


@pytest.fixture
def svc(make_service: Callable[..., WorklistService]) -> WorklistService:
    return make_service()


def cred(svc: WorklistService, user: str) -> SigningCredential:
    """A fresh credential for ``user`` at the service's clock (what ``signing.authenticate`` returns)."""
    return SigningCredential(reader=user, method=AuthMethod.PASSWORD, os_account="reader-os", at=svc.clock())


def study_row(engine: Engine, uid: str) -> Study:
    with Session(engine) as s:
        row = s.exec(select(Study).where(Study.study_uid == uid)).scalar_one()
        s.expunge(row)
        return row


def events(engine: Engine) -> list[AuditEvent]:
    with Session(engine) as s:
        rows = list(s.exec(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
        for r in rows:
            s.expunge(r)
        return rows


def reports(engine: Engine, study_pk: int) -> list[Report]:
    with Session(engine) as s:
        query = select(Report).where(Report.study_pk == study_pk).order_by(Report.version)
        rows = list(s.exec(query).scalars())
        for r in rows:
            s.expunge(r)
        return rows


def count(engine: Engine, model: type) -> int:
    with Session(engine) as s:
        return len(s.exec(select(model)).scalars().all())


# --- the state machine --------------------------------------------------------------------------

# Written out independently of triage.reading.states.TRANSITIONS, so that a wrong table fails here.
ALLOWED: dict[tuple[ReadState, ReadAction], ReadState] = {
    (U, Act.CLAIM): R,
    (R, Act.CLAIM): R,
    (S, Act.CLAIM): S,
    (R, Act.RELEASE): U,
    (S, Act.RELEASE): S,
    (U, Act.VIEW): U,
    (R, Act.VIEW): R,
    (S, Act.VIEW): S,
    (R, Act.IMPRESSION): R,
    (R, Act.FEEDBACK): R,
    (R, Act.DRAFT): R,
    (R, Act.SIGN): S,
    (S, Act.AMEND): R,
}


def test_transition_table_is_exactly_the_allowed_set() -> None:
    assert dict(TRANSITIONS) == ALLOWED
    assert len(ALLOWED) == 13  # of 3 states x 8 actions = 24
    with pytest.raises(InvalidTransition, match="cannot sign study 1.2.3 in state unread"):
        next_state("unread", "sign", "1.2.3")


def bring_to(svc: WorklistService, uid: str, state: ReadState, *, draft: bool = False) -> None:
    """Put the study in ``state``, claimed by A unless unread (a claimed study is never unread)."""
    if state is U:
        return
    svc.claim(uid, A)
    if state is S:
        svc.save_draft(uid, A, "No acute intracranial haemorrhage.")
        svc.sign(uid, A, cred(svc, A))
        svc.claim(uid, A)  # for an amendment
    elif draft:
        svc.save_draft(uid, A, "Draft.")


def perform(svc: WorklistService, uid: str, action: ReadAction, finding_id: int, user: str = A) -> Any:
    calls: dict[ReadAction, Callable[[], Any]] = {
        Act.CLAIM: lambda: svc.claim(uid, user),
        Act.RELEASE: lambda: svc.release(uid, user),
        Act.VIEW: lambda: svc.open(uid, user),
        Act.IMPRESSION: lambda: svc.record_impression(uid, user, "Bleed in the left parietal lobe.", ["bleed"]),
        Act.FEEDBACK: lambda: svc.feedback(uid, user, "agree", finding_id=finding_id),
        Act.DRAFT: lambda: svc.save_draft(uid, user, "Report text."),
        Act.SIGN: lambda: svc.sign(uid, user, cred(svc, user)),
        Act.AMEND: lambda: svc.amend(uid, user, "Addendum: also a small nodule.", cred(svc, user)),
    }
    return calls[action]()


@pytest.mark.parametrize(("state", "action"), list(itertools.product(list(ReadState), list(ReadAction))), ids=lambda v: v.value)
def test_every_transition(engine: Engine, svc: WorklistService, state: ReadState, action: ReadAction) -> None:
    added = add_study(engine, "1.2.3")
    bring_to(svc, "1.2.3", state, draft=action is Act.SIGN)
    assert study_row(engine, "1.2.3").read_state == state.value
    before = events(engine)
    expected = ALLOWED.get((state, action))
    if expected is None:
        with pytest.raises(InvalidTransition) as err:
            perform(svc, "1.2.3", action, added.finding_ids[0])
        assert action.value in str(err.value) and state.value in str(err.value)
        assert "\n" not in str(err.value)
        assert study_row(engine, "1.2.3").read_state == state.value
        assert events(engine) == before
        return
    perform(svc, "1.2.3", action, added.finding_ids[0])
    assert study_row(engine, "1.2.3").read_state == expected.value
    new = events(engine)[len(before) :]
    assert [(e.actor, e.action, e.study_uid) for e in new] == [(A, action.value, "1.2.3")]


def test_release_keeps_reading_once_work_is_recorded(engine: Engine, svc: WorklistService) -> None:
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    assert svc.release("1.2.3", A) is U
    svc.claim("1.2.3", A)
    svc.record_impression("1.2.3", A, "Normal.")
    assert svc.release("1.2.3", A) is R
    row = study_row(engine, "1.2.3")
    assert (row.read_state, row.claimed_by, row.claim_expires) == ("reading", None, None)
    # Unclaimed: nothing to release.
    with pytest.raises(InvalidTransition, match="not claimed"):
        svc.release("1.2.3", A)


def test_sign_needs_a_non_empty_draft(engine: Engine, svc: WorklistService) -> None:
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    with pytest.raises(InvalidTransition, match="cannot sign study 1.2.3: no draft report"):
        svc.sign("1.2.3", A, cred(svc, A))
    svc.save_draft("1.2.3", A, "   ")
    with pytest.raises(InvalidTransition, match="empty"):
        svc.sign("1.2.3", A, cred(svc, A))
    assert study_row(engine, "1.2.3").read_state == "reading"


def test_unknown_study(svc: WorklistService) -> None:
    for call in (lambda: svc.claim("9.9", A), lambda: svc.open("9.9", A), lambda: svc.history("9.9")):
        with pytest.raises(NotFound, match="study 9.9 not found"):
            call()


# --- claims -------------------------------------------------------------------------------------


def test_claim_conflict_renewal_and_lapse(engine: Engine, svc: WorklistService, clock: Clock) -> None:
    add_study(engine, "1.2.3")
    assert svc.claim("1.2.3", A) == T0 + timedelta(minutes=30)

    clock.advance(minutes=10)
    with pytest.raises(ClaimConflict, match=r"^study 1\.2\.3 is claimed by dr\.a until 14:30 UTC$"):
        svc.claim("1.2.3", B)
    for call in (lambda: svc.save_draft("1.2.3", B, "x"), lambda: svc.record_impression("1.2.3", B, "x"), lambda: svc.release("1.2.3", B)):
        with pytest.raises(ClaimConflict, match="claimed by dr.a until 14:30 UTC"):
            call()
    svc.open("1.2.3", B)  # looking needs no claim

    # The claimant renews by claiming again.
    clock.advance(minutes=10)
    assert svc.claim("1.2.3", A) == T0 + timedelta(minutes=50)
    clock.advance(minutes=25)  # 14:45: the first claim would have lapsed, the renewed one holds
    with pytest.raises(ClaimConflict, match="until 14:50 UTC"):
        svc.claim("1.2.3", B)

    clock.advance(minutes=6)  # 14:51: lapsed; B takes it over
    assert svc.claim("1.2.3", B) == clock.now + timedelta(minutes=30)
    row = study_row(engine, "1.2.3")
    assert (row.claimed_by, row.read_state) == (B, "reading")
    with pytest.raises(ClaimConflict, match="claimed by dr.b"):
        svc.save_draft("1.2.3", A, "too late")
    claims = [e for e in events(engine) if e.action == "claim"]
    assert [e.actor for e in claims] == [A, A, B]
    assert json.loads(claims[-1].detail)["lapsed_claim_of"] == A
    assert json.loads(claims[1].detail)["renewed"] is True


def test_anyone_may_release_a_lapsed_claim(engine: Engine, svc: WorklistService, clock: Clock) -> None:
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    clock.advance(minutes=31)
    assert svc.release("1.2.3", B) is U
    last = events(engine)[-1]
    assert (last.actor, last.action, json.loads(last.detail)["lapsed_claim_of"]) == (B, "release", A)
    [item] = svc.items()
    assert (item.study.claimed_by, item.study.claim_expires, item.study.read_state) == (None, None, U)


def test_non_claimant_must_claim_first(engine: Engine, svc: WorklistService) -> None:
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    svc.record_impression("1.2.3", A, "Normal.")
    svc.release("1.2.3", A)
    with pytest.raises(NotPermitted, match="dr.b has not claimed it"):
        svc.save_draft("1.2.3", B, "x")


def test_own_lapsed_claim_still_acts_and_actions_renew_it(engine: Engine, svc: WorklistService, clock: Clock) -> None:
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    clock.advance(minutes=40)  # lapsed, but nobody took it over
    assert [i.study.claimed_by for i in svc.items()] == [None]
    svc.save_draft("1.2.3", A, "Draft.")
    [item] = svc.items()
    assert (item.study.claimed_by, item.study.claim_expires) == (A, T0 + timedelta(minutes=70))


def test_claim_lapse_follows_settings(engine: Engine, make_service: Callable[..., WorklistService], clock: Clock) -> None:
    add_study(engine, "1.2.3")
    svc = make_service(claim_minutes=5)
    assert svc.claim("1.2.3", A) == T0 + timedelta(minutes=5)
    clock.advance(minutes=5)  # lapses exactly at claim_expires
    svc.claim("1.2.3", B)


def test_losing_a_race_writes_nothing(engine: Engine, svc: WorklistService) -> None:
    """A claims the study between B's read of it and B's update: B's guarded update loses."""
    add_study(engine, "1.2.3")
    fired: list[str] = []

    def cut_in(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE STUDY") and not fired:
            fired.append(statement)
            svc.claim("1.2.3", A)  # on another connection, committed before B's update runs

    event.listen(engine, "before_cursor_execute", cut_in)
    try:
        with pytest.raises(ClaimConflict, match="changed while you acted"):
            svc.claim("1.2.3", B)
    finally:
        event.remove(engine, "before_cursor_execute", cut_in)
    assert fired
    assert study_row(engine, "1.2.3").claimed_by == A
    assert [(e.actor, e.action) for e in events(engine)] == [(A, "claim")]


# --- only named humans --------------------------------------------------------------------------

CALLS: dict[str, Callable[[WorklistService, str, int], Any]] = {
    "claim": lambda s, u, f: s.claim("1.2.3", u),
    "release": lambda s, u, f: s.release("1.2.3", u),
    "open": lambda s, u, f: s.open("1.2.3", u),
    "record_impression": lambda s, u, f: s.record_impression("1.2.3", u, "x"),
    "feedback": lambda s, u, f: s.feedback("1.2.3", u, "agree", finding_id=f),
    "save_draft": lambda s, u, f: s.save_draft("1.2.3", u, "x"),
    "sign": lambda s, u, f: s.sign("1.2.3", u, cred(s, u)),
    "amend": lambda s, u, f: s.amend("1.2.3", u, "x", cred(s, u)),
    "items": lambda s, u, f: s.items(u),
}


@pytest.mark.parametrize("method", list(CALLS))
@pytest.mark.parametrize("user", [audit.AI_ACTOR, "Triage-AI ", audit.LISTENER_ACTOR, "system", "", "   "])
def test_only_named_humans_act(engine: Engine, svc: WorklistService, method: str, user: str) -> None:
    added = add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    svc.save_draft("1.2.3", A, "Draft.")
    before, state = events(engine), study_row(engine, "1.2.3")
    with pytest.raises(NotPermitted) as err:
        CALLS[method](svc, user, added.finding_ids[0])
    message = str(err.value)
    if user.strip().lower() == audit.AI_ACTOR:
        assert message.startswith(f"the AI ({audit.AI_ACTOR}) cannot ")
    elif user.strip():
        assert "reserved" in message
    else:
        assert "named user is required" in message
    assert events(engine) == before
    after = study_row(engine, "1.2.3")
    assert (after.read_state, after.claimed_by, after.claim_expires) == (state.read_state, A, state.claim_expires)


def test_the_ai_cannot_sign_message(engine: Engine, svc: WorklistService) -> None:
    add_study(engine, "1.2.3")
    with pytest.raises(NotPermitted, match=r"^the AI \(triage-ai\) cannot sign$"):
        svc.sign("1.2.3", "triage-ai", cred(svc, "triage-ai"))
    assert isinstance(NotPermitted("x"), WorklistError)


# --- reports ------------------------------------------------------------------------------------


def test_signed_report_is_immutable_and_amendments_are_new_versions(engine: Engine, svc: WorklistService, clock: Clock) -> None:
    added = add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    assert svc.save_draft("1.2.3", A, "First words.") == 1
    assert svc.save_draft("1.2.3", A, "No acute haemorrhage.") == 1  # same draft, updated
    clock.advance(minutes=3)
    assert svc.sign("1.2.3", A, cred(svc, A)) == 1
    [v1] = reports(engine, added.study_pk)
    assert (v1.status, v1.text, v1.signed_by, v1.signed_at) == ("signed", "No acute haemorrhage.", A, clock.now)
    row = study_row(engine, "1.2.3")
    assert (row.read_state, row.claimed_by, row.claim_expires) == ("signed", None, None)

    # Nothing reaches the signed row: not a draft, not a second sign, not without a claim.
    with pytest.raises(InvalidTransition):
        svc.save_draft("1.2.3", A, "Changed my mind.")
    with pytest.raises(NotPermitted):
        svc.amend("1.2.3", A, "Addendum.", cred(svc, A))  # must claim first
    svc.claim("1.2.3", B)
    with pytest.raises(InvalidTransition):
        svc.sign("1.2.3", B, cred(svc, B))

    clock.advance(minutes=60)
    assert svc.amend("1.2.3", B, "Addendum: 4 mm nodule.", cred(svc, B)) == 2
    assert study_row(engine, "1.2.3").read_state == "reading"
    assert svc.save_draft("1.2.3", B, "Addendum: 4 mm nodule, right upper lobe.") == 2
    assert svc.sign("1.2.3", B, cred(svc, B)) == 2
    svc.claim("1.2.3", A)
    assert svc.amend("1.2.3", A, "Second addendum.", cred(svc, A)) == 3

    v1_after, v2, v3 = reports(engine, added.study_pk)
    assert v1_after.model_dump() == v1.model_dump()  # the signed row, every column, unchanged
    assert (v2.version, v2.status, v2.amends_pk, v2.signed_by, v2.author) == (2, "signed", v1.id, B, B)
    assert v2.text == "Addendum: 4 mm nodule, right upper lobe."
    assert (v3.version, v3.status, v3.amends_pk) == (3, "draft", v2.id)
    view = svc.open("1.2.3", A)
    assert [(r.version, r.status) for r in view.reports] == [(1, ReportStatus.SIGNED), (2, ReportStatus.SIGNED), (3, ReportStatus.DRAFT)]
    assert view.reports[0].text == "No acute haemorrhage."
    sign_event = next(e for e in events(engine) if e.action == "sign")
    assert json.loads(sign_event.detail)["version"] == 1


# --- blinded reads ------------------------------------------------------------------------------


def test_blinded_mode_hides_ai_until_the_impression(engine: Engine, make_service: Callable[..., WorklistService]) -> None:
    added = add_study(engine, "1.2.3", (("bleed", 0.95, 0.5),))
    blind, open_svc = make_service(blinded=True), make_service(blinded=False)

    plain = open_svc.open("1.2.3", A)
    assert [f.kind for f in plain.findings] == ["bleed"] and not plain.ai_hidden
    assert any(r.startswith("bleed 0.95 >= 0.50") for r in plain.urgency.reasons)

    view = blind.open("1.2.3", A)
    assert view.findings == () and view.ai_hidden
    assert HIDDEN_REASON in view.urgency.reasons
    assert not any("bleed" in r for r in view.urgency.reasons)
    assert view.urgency.priority_class == plain.urgency.priority_class  # the AI still ranks it
    [item] = blind.items(A)
    assert (item.findings, item.ai_hidden, HIDDEN_REASON in item.urgency.reasons) == ((), True, True)
    assert blind.items()[0].findings != ()  # no user: the unblinded supervisor view
    assert json.loads(events(engine)[-1].detail) == {"ai_hidden": True, "findings_shown": [], "read_state": "unread"}

    blind.claim("1.2.3", A)
    with pytest.raises(InvalidTransition, match="impression first"):
        blind.feedback("1.2.3", A, "agree", finding_id=added.finding_ids[0])
    blind.record_impression("1.2.3", A, "Left parietal bleed.", ["Bleed"])
    with pytest.raises(InvalidTransition, match="already recorded"):
        blind.record_impression("1.2.3", A, "Again.")

    seen = blind.open("1.2.3", A)
    assert [f.id for f in seen.findings] == added.finding_ids and not seen.ai_hidden
    assert seen.impression is not None and seen.impression.kinds == ("bleed",)
    assert HIDDEN_REASON not in seen.urgency.reasons
    assert blind.items(A)[0].findings[0].kind == "bleed"
    assert blind.open("1.2.3", B).ai_hidden  # B has no impression of their own
    assert blind.items(B)[0].ai_hidden
    blind.feedback("1.2.3", A, "agree", finding_id=added.finding_ids[0])


def test_blinded_mode_hides_that_the_ai_found_nothing(engine: Engine, make_service: Callable[..., WorklistService]) -> None:
    add_study(engine, "1.2.3", ())
    assert "AI found nothing to flag (AI suggestion)" in make_service().open("1.2.3", A).urgency.reasons
    reasons = make_service(blinded=True).open("1.2.3", A).urgency.reasons
    assert HIDDEN_REASON in reasons and not any("nothing to flag" in r for r in reasons)


# --- feedback -----------------------------------------------------------------------------------


def test_feedback_validation(engine: Engine, svc: WorklistService) -> None:
    added = add_study(engine, "1.2.3", (("bleed", 0.9, 0.5), ("fracture", 0.2, 0.6)))
    other = add_study(engine, "4.5.6")
    svc.claim("1.2.3", A)
    before = events(engine)
    bleed, fracture = added.finding_ids
    bad: list[tuple[type[WorklistError], str, dict[str, Any]]] = [
        (InvalidInput, "not one of", {"verdict": "maybe", "finding_id": bleed}),
        (InvalidInput, "needs the finding_id", {"verdict": "agree"}),
        (InvalidInput, "needs its kind", {"verdict": "missed"}),
        (InvalidInput, "has no finding_id", {"verdict": "missed", "kind": "nodule", "finding_id": bleed}),
        (InvalidInput, "not a finding kind", {"verdict": "missed", "kind": "tumour"}),
        (InvalidInput, "is a bleed, not a nodule", {"verdict": "agree", "finding_id": bleed, "kind": "nodule"}),
        (NotFound, "not one of its AI findings", {"verdict": "agree", "finding_id": other.finding_ids[0]}),
        (NotFound, "not one of its AI findings", {"verdict": "disagree", "finding_id": 99_999}),
    ]
    for error, message, kwargs in bad:
        with pytest.raises(error, match=message):
            svc.feedback("1.2.3", A, **kwargs)
    assert count(engine, Feedback) == 0 and events(engine) == before

    first = svc.feedback("1.2.3", A, "agree", finding_id=bleed)
    second = svc.feedback("1.2.3", A, Verdict.DISAGREE, finding_id=bleed, comment="Calcification, not blood.")
    missed = svc.feedback("1.2.3", A, "MISSED", kind="nodule", comment="8 mm, right upper lobe")
    unsure = svc.feedback("1.2.3", A, "unsure", finding_id=fracture, kind="fracture")
    assert len({first, second, missed, unsure}) == 4
    view = svc.open("1.2.3", A)
    assert [(f.verdict, f.finding_id, f.kind) for f in view.feedback] == [
        (Verdict.AGREE, bleed, "bleed"),
        (Verdict.DISAGREE, bleed, "bleed"),  # the newest on this finding counts
        (Verdict.MISSED, None, "nodule"),
        (Verdict.UNSURE, fracture, "fracture"),
    ]
    assert [e.action for e in events(engine)[len(before) :]] == ["feedback"] * 4 + ["view"]
    assert svc.open("1.2.3", B).feedback == ()  # each reader sees their own


def test_impression_validation(engine: Engine, svc: WorklistService) -> None:
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", A)
    with pytest.raises(InvalidInput, match="empty"):
        svc.record_impression("1.2.3", A, "  ")
    with pytest.raises(InvalidInput, match='"tumour" is not a finding kind'):
        svc.record_impression("1.2.3", A, "Mass.", ["tumour"])
    assert count(engine, Impression) == 0
    svc.record_impression("1.2.3", A, "  Bleed and a nodule. ", "nodule, Bleed,nodule")
    with Session(engine) as s:
        [imp] = s.exec(select(Impression)).scalars().all()
        assert (imp.user, imp.text, imp.kinds) == (A, "Bleed and a nodule.", "nodule,bleed")
    assert svc.open("1.2.3", A).impression.kinds == ("nodule", "bleed")


# --- the worklist -------------------------------------------------------------------------------


def test_items_follow_the_policy_and_include_signed(engine: Engine, svc: WorklistService, clock: Clock) -> None:
    add_study(engine, "1.1", (("bleed", 0.1, 0.5),), received=T0 - timedelta(minutes=60))  # older, negative
    add_study(engine, "2.2", (("bleed", 0.97, 0.5),), received=T0 - timedelta(minutes=2))  # newer, bleed-positive
    add_study(engine, "3.3", (("fracture", 0.8, 0.5),), received=T0 - timedelta(minutes=30), order_priority="HIGH")
    add_study(engine, "4.4", (("bleed", 0.99, 0.5),), received=T0 - timedelta(minutes=90))
    svc.claim("4.4", A)
    svc.save_draft("4.4", A, "Large subdural haematoma.")
    svc.sign("4.4", A, cred(svc, A))
    svc.claim("3.3", B)

    items = svc.items()
    assert [i.study.study_uid for i in items] == ["2.2", "3.3", "1.1", "4.4"]  # signed last, never dropped
    assert [i.rank for i in items] == [1, 2, 3, 4]
    assert items[0].urgency.score > items[1].urgency.score > items[2].urgency.score
    assert items[0].urgency.priority_class.value == "critical"
    top = items[0]
    facts = top.study
    assert (facts.modality, facts.description, facts.read_state, facts.ai_status) == ("CT", "CT HEAD", U, "scored")
    stored = study_row(engine, "2.2")
    assert (facts.patient_id, facts.patient_name, facts.accession_number) == (
        stored.patient_id,
        stored.patient_name,
        stored.accession_number,
    )
    assert facts.patient_name.startswith("Doe^Pat") and facts.receive_status == "complete"
    [finding] = top.findings
    assert (finding.kind, finding.probability, finding.urgent) == ("bleed", 0.97, True)
    assert (finding.model_name, finding.model_version, finding.weights_sha256, finding.series_uid) == (
        "bleed-ct",
        "1.0",
        "ab" * 32,
        "2.2.1",
    )
    assert finding.regions == ({"instance": "1.2.9.0", "box": [1, 2, 30, 40]},)
    assert (items[1].study.claimed_by, items[1].study.claim_expires) == (B, T0 + timedelta(minutes=30))
    assert items[3].study.read_state is S

    assert [i.study.study_uid for i in svc.items(include_signed=False)] == ["2.2", "3.3", "1.1"]
    clock.advance(hours=6)  # ranked at the current clock
    assert svc.items(include_signed=False)[0].urgency.waiting_min == pytest.approx(362.0)


def test_items_show_only_the_newest_result_of_each_series(engine: Engine, svc: WorklistService) -> None:
    added = add_study(engine, "1.2.3", (("bleed", 0.9, 0.5),))
    with Session(engine) as s:
        [newer] = add_result(s, added.study_pk, added.series_pk, 1, (("bleed", 0.2, 0.5),))
        s.commit()
    [item] = svc.items()
    assert [(f.id, f.probability) for f in item.findings] == [(newer, 0.2)]
    assert [f.id for f in svc.open("1.2.3", A).findings] == [newer]


def test_items_query_count_does_not_grow_with_studies(engine: Engine, make_service: Callable[..., WorklistService]) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    for i in range(3):
        add_study(engine, f"1.{i}")
    event.listen(engine, "before_cursor_execute", record)
    try:
        svc, blind = make_service(), make_service(blinded=True)
        svc.items()
        few = len(statements)
        for i in range(3, 9):
            add_study(engine, f"1.{i}")
        statements.clear()
        assert len(svc.items()) == 9
        assert len(statements) == few == 2  # one for studies, one for the newest results' findings
        statements.clear()
        blind.items(A)
        assert len(statements) == 3  # plus the reader's impressions
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- audit --------------------------------------------------------------------------------------


def test_history_lists_each_action_once_with_the_user(engine: Engine, svc: WorklistService) -> None:
    added = add_study(engine, "1.2.3", audited=True)  # with their inference events: verify checks the findings too
    add_study(engine, "4.5.6", audited=True)
    svc.open("1.2.3", A)
    svc.claim("1.2.3", A)
    svc.record_impression("1.2.3", A, "Bleed.", ["bleed"])
    svc.feedback("1.2.3", A, "agree", finding_id=added.finding_ids[0])
    svc.save_draft("1.2.3", A, "Acute bleed.")
    svc.sign("1.2.3", A, cred(svc, A))
    svc.claim("1.2.3", B)
    svc.release("1.2.3", B)
    svc.claim("4.5.6", B)
    history = svc.history("1.2.3")
    assert [(e["actor"], e["action"]) for e in history] == [
        (A, "view"),
        (A, "claim"),
        (A, "impression"),
        (A, "feedback"),
        (A, "draft"),
        (A, "sign"),
        (B, "claim"),
        (B, "release"),
    ]
    assert {e["study_uid"] for e in history} == {"1.2.3"}
    assert history[0]["at"].startswith("2024-05-01T14:00:00")  # the injected clock
    assert audit.verify(engine).ok


def test_failed_actions_write_no_event(engine: Engine, svc: WorklistService) -> None:
    add_study(engine, "1.2.3")
    for call in (lambda: svc.sign("1.2.3", A, cred(svc, A)), lambda: svc.release("1.2.3", A), lambda: svc.claim("9.9", A)):
        with pytest.raises(WorklistError):
            call()
    assert events(engine) == []


def test_worklist_imports_no_torch_textual_or_pynetdicom() -> None:
    code = (
        "import sys, triage.reading.service, triage.reading.states, triage.reading.views; "
        "bad = sorted(m for m in ('torch', 'textual', 'pynetdicom') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == ""


# -- for live views ---------------------------------------------------------------------------


def test_a_live_view_sees_exactly_the_studies_that_changed(engine: Engine, svc: WorklistService) -> None:
    first = add_study(engine, "1.9.1")
    second = add_study(engine, "1.9.2", (("bleed", 0.1, 0.5),))
    token = svc.change_token()
    assert svc.changes_since(token) == (token, set())
    svc.claim(second.uid, A)
    new_token, changed = svc.changes_since(token)
    assert new_token == svc.change_token() > token and changed == {second.uid}

    (item,) = svc.items_for([second.uid, "9.9.9"])  # unknown UIDs are skipped
    assert item.rank == 0 and item.study.claimed_by == A and item.findings[0].probability == 0.1
    from triage.reading.views import arrival_order_key, worklist_order_key

    items = svc.items()
    assert sorted(items, key=worklist_order_key) == items  # the service's own order
    assert [i.study.study_uid for i in sorted(items, key=arrival_order_key)] == [first.uid, second.uid]


def test_series_images_lists_the_stored_files(engine: Engine, svc: WorklistService) -> None:
    from triage.store.models import Instance

    added = add_study(engine, "1.9.3")
    with Session(engine) as s:
        for n in (2, 1):
            s.add(
                Instance(
                    sop_instance_uid=f"1.9.3.1.{n}",
                    series_pk=added.series_pk,
                    sop_class_uid="1.2",
                    instance_number=n,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=f"studies/1.9.3/1.9.3.1/{n}.dcm",
                    size_bytes=1,
                    sha256="0" * 64,
                )
            )
        s.commit()
    (series,) = svc.series_images(added.uid)
    assert series.series_uid == "1.9.3.1" and series.modality == "CT"
    assert series.sop_instance_uids == ("1.9.3.1.1", "1.9.3.1.2")
    assert series.files[0] == svc.settings.data_dir / "studies/1.9.3/1.9.3.1/1.dcm"
    with pytest.raises(NotFound):
        svc.series_images("4.4.4")
