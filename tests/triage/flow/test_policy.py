"""The urgency policy: properties over generated cases (hypothesis) and the
concrete numbers and reason texts of the default settings."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triage.config import PolicySettings
from triage.flow.policy import CaseInput, FindingInput, PolicyError, Urgency, assess, class_of, rank, target_minutes
from triage.vocabulary import AIStatus, PriorityClass

REPO_ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DEFAULT = PolicySettings()
FAST = settings(max_examples=200, deadline=None)

# --- strategies -------------------------------------------------------------

probabilities = st.floats(0.0, 1.0, allow_nan=False)
findings = st.builds(
    FindingInput, kind=st.sampled_from(["bleed", "fracture", "nodule", "lesion"]), probability=probabilities, operating_point=probabilities
)
waits = st.floats(-30.0, 5000.0, allow_nan=False)  # negative: clock skew, received "in the future"
texts = st.sampled_from([None, "", "ED Bay 3", "EMERGENCY", "Ward 5", "MEDICAL", "A&E majors", "trauma/ortho", "ICU"])


@st.composite
def cases(draw: st.DrawFn, uid: st.SearchStrategy[str] | None = None) -> CaseInput:
    return CaseInput(
        study_uid=draw(uid if uid is not None else st.from_regex(r"1\.2\.[0-9]{1,3}", fullmatch=True)),
        received_at=NOW - timedelta(minutes=draw(waits)),
        order_priority=draw(st.sampled_from([None, "STAT", "HIGH", "MEDIUM", "ROUTINE", "LOW", "stat", "ASAP"])),
        patient_location=draw(texts),
        requesting_service=draw(texts),
        ai_status=draw(st.sampled_from([s.value for s in AIStatus])),
        ai_reason=draw(st.sampled_from([None, "no pixel data"])),
        findings=tuple(draw(st.lists(findings, max_size=4))),
    )


scored_cases = cases().map(lambda c: replace(c, ai_status="scored"))
case_lists = st.lists(cases(), max_size=8, unique_by=lambda c: c.study_uid)


@st.composite
def policy_settings(draw: st.DrawFn) -> PolicySettings:
    """Random but valid settings, targets deliberately in any order."""
    points = st.floats(0.0, 500.0, allow_nan=False)
    urgent_at = draw(st.floats(1.0, 200.0))
    return PolicySettings(
        finding_points={k: draw(points) for k in ("bleed", "fracture", "nodule")},
        order_points={"STAT": draw(points), "HIGH": draw(points), "ROUTINE": 0.0, "LOW": -draw(points)},
        emergency_points=draw(points),
        urgent_at=urgent_at,
        critical_at=urgent_at + draw(st.floats(1.0, 200.0)),
        targets_min={c: draw(st.floats(1.0, 1000.0)) for c in ("critical", "urgent", "routine")},
        ageing_points=draw(st.floats(0.0, 100.0)),
    )


any_settings = st.one_of(st.just(DEFAULT), policy_settings())


def position(ranked: list[tuple[CaseInput, Urgency]], uid: str) -> int:
    return [c.study_uid for c, _ in ranked].index(uid)


def case(**kw: object) -> CaseInput:
    base: dict[str, object] = {"study_uid": "1.2.3", "received_at": NOW, "ai_status": "scored"}
    base.update(kw)
    return CaseInput(**base)


# --- properties -------------------------------------------------------------


@FAST
@given(c=scored_cases, i=st.integers(0, 3), p=probabilities, others=case_lists, cfg=any_settings)
def test_higher_probability_never_lowers_score_or_rank(
    c: CaseInput, i: int, p: float, others: list[CaseInput], cfg: PolicySettings
) -> None:
    if not c.findings:
        c = replace(c, findings=(FindingInput("bleed", p / 2, 0.5),))
    i %= len(c.findings)
    f = c.findings[i]
    lo, hi = sorted([f.probability, p])
    low = replace(c, study_uid="9.9", findings=c.findings[:i] + (replace(f, probability=lo),) + c.findings[i + 1 :])
    high = replace(low, findings=c.findings[:i] + (replace(f, probability=hi),) + c.findings[i + 1 :])
    u_low, u_high = assess(low, NOW, cfg), assess(high, NOW, cfg)
    assert u_high.score >= u_low.score
    assert u_high.base_score >= u_low.base_score
    assert position(rank([*others, high], NOW, cfg), "9.9") <= position(rank([*others, low], NOW, cfg), "9.9")


@FAST
@given(c=cases(), extra=st.floats(0.0, 5000.0), others=case_lists, cfg=any_settings)
def test_more_waiting_never_lowers_score_or_rank(c: CaseInput, extra: float, others: list[CaseInput], cfg: PolicySettings) -> None:
    c = replace(c, study_uid="9.9")
    older = replace(c, received_at=c.received_at - timedelta(minutes=extra))
    assert assess(older, NOW, cfg).score >= assess(c, NOW, cfg).score
    assert position(rank([*others, older], NOW, cfg), "9.9") <= position(rank([*others, c], NOW, cfg), "9.9")


@FAST
@given(c=cases(), others=case_lists)
def test_stat_never_below_routine_nor_high_below_routine(c: CaseInput, others: list[CaseInput]) -> None:
    c = replace(c, study_uid="9.9")
    routine, high, stat = (replace(c, order_priority=p) for p in ("ROUTINE", "HIGH", "STAT"))
    scores = [assess(x, NOW, DEFAULT).score for x in (routine, high, stat)]
    assert scores == sorted(scores)
    places = [position(rank([*others, x], NOW, DEFAULT), "9.9") for x in (routine, high, stat)]
    assert places == sorted(places, reverse=True)


@FAST
@given(cs=case_lists, perm=st.randoms(use_true_random=False))
def test_rank_is_total_and_independent_of_input_order(cs: list[CaseInput], perm: object) -> None:
    ranked = rank(cs, NOW, DEFAULT)
    shuffled = list(cs)
    perm.shuffle(shuffled)
    assert [c.study_uid for c, _ in rank(shuffled, NOW, DEFAULT)] == [c.study_uid for c, _ in ranked]
    keys = [(-u.score, c.received_at, c.study_uid) for c, u in ranked]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


@FAST
@given(c=cases(), cfg=any_settings)
def test_class_is_the_total_score_against_thresholds(c: CaseInput, cfg: PolicySettings) -> None:
    u = assess(c, NOW, cfg)
    assert u.priority_class is class_of(u.score, cfg)
    assert u.score >= u.base_score
    assert u.overdue == (u.waiting_min > u.target_min)
    assert u.target_min == target_minutes(class_of(u.base_score, cfg), cfg)
    assert math.isfinite(u.score) and u.reasons


@FAST
@given(p=probabilities, q=probabilities, op=probabilities, kind=st.sampled_from(["bleed", "fracture", "nodule"]))
def test_finding_points_monotone_across_operating_point(p: float, q: float, op: float, kind: str) -> None:
    lo, hi = sorted([p, q])
    points = DEFAULT.finding_points[kind]
    s_lo, s_hi = (assess(case(findings=(FindingInput(kind, x, op),)), NOW, DEFAULT).base_score for x in (lo, hi))
    assert s_lo <= s_hi
    for x, s in ((lo, s_lo), (hi, s_hi)):
        if x >= op:
            assert points <= s <= 1.25 * points
        else:
            assert 0.0 <= s <= 0.5 * points


# --- concrete numbers with the default settings -----------------------------


def test_default_numbers() -> None:
    bleed = assess(case(findings=(FindingInput("bleed", 0.8, 0.8),)), NOW, DEFAULT)
    assert (bleed.priority_class, bleed.base_score, bleed.target_min) == (PriorityClass.CRITICAL, 100.0, 15.0)
    certain = assess(case(findings=(FindingInput("bleed", 1.0, 0.8),)), NOW, DEFAULT)
    assert certain.base_score == pytest.approx(125.0)
    half = assess(case(findings=(FindingInput("fracture", 0.2, 0.4),)), NOW, DEFAULT)
    assert half.base_score == pytest.approx(12.5)  # 50 * 0.5 * 0.2/0.4
    two = assess(case(findings=(FindingInput("fracture", 0.9, 0.9), FindingInput("nodule", 0.5, 0.5))), NOW, DEFAULT)
    assert two.base_score == pytest.approx(53.0)  # 50 + 0.1 * 30
    assert two.priority_class is PriorityClass.URGENT and two.target_min == 60.0
    stat_ed = assess(case(order_priority="stat", patient_location="ED Bay 3"), NOW, DEFAULT)
    assert (stat_ed.base_score, stat_ed.priority_class) == (80.0, PriorityClass.URGENT)
    low = assess(case(order_priority="LOW"), NOW, DEFAULT)
    assert (low.base_score, low.priority_class, low.target_min) == (-5.0, PriorityClass.ROUTINE, 240.0)


def test_thresholds_are_inclusive() -> None:
    cfg = PolicySettings(order_points={"A": 39.5, "B": 40.0, "C": 99.5, "D": 100.0}, ageing_points=0.0)
    got = {p: assess(case(order_priority=p), NOW, cfg).priority_class for p in "ABCD"}
    assert got == {"A": PriorityClass.ROUTINE, "B": PriorityClass.URGENT, "C": PriorityClass.URGENT, "D": PriorityClass.CRITICAL}


def test_ageing_escalates_a_routine_case_and_says_so() -> None:
    fresh = assess(case(received_at=NOW - timedelta(minutes=12)), NOW, DEFAULT)
    assert fresh.priority_class is PriorityClass.ROUTINE and not fresh.overdue
    assert fresh.score == pytest.approx(1.0)  # 20 points * 12 / 240
    assert fresh.reasons[-1] == "waiting 12 min of 240 min routine target"
    # 480 min = two routine targets = 40 points: urgent.
    old = assess(case(received_at=NOW - timedelta(minutes=480)), NOW, DEFAULT)
    assert old.overdue and old.score == pytest.approx(40.0) and old.base_score == 0.0
    assert old.priority_class is PriorityClass.URGENT
    assert old.reasons[-2:] == ("waiting 480 min, routine target 240 min", "escalated from routine to urgent by waiting time")
    ancient = assess(case(received_at=NOW - timedelta(minutes=1200)), NOW, DEFAULT)
    assert ancient.priority_class is PriorityClass.CRITICAL  # 5 targets = 100 points: nothing starves


def test_received_in_the_future_waits_zero_and_naive_is_utc() -> None:
    ahead = assess(case(received_at=NOW + timedelta(minutes=5)), NOW, DEFAULT)
    assert ahead.waiting_min == 0.0 and ahead.score == 0.0
    naive = assess(case(received_at=datetime(2024, 5, 1, 11, 0)), NOW, DEFAULT)
    assert naive.waiting_min == pytest.approx(60.0)


def test_ties_broken_by_received_at_then_uid() -> None:
    cfg = PolicySettings(ageing_points=0.0)
    a = case(study_uid="1.2.9", received_at=NOW - timedelta(minutes=5))
    b = case(study_uid="1.2.2", received_at=NOW - timedelta(minutes=1))
    c = case(study_uid="1.2.1", received_at=NOW - timedelta(minutes=1))
    stat = case(study_uid="1.2.5", received_at=NOW, order_priority="STAT")
    assert [x.study_uid for x, _ in rank([b, stat, c, a], NOW, cfg)] == ["1.2.5", "1.2.9", "1.2.1", "1.2.2"]


def test_duplicate_uid_is_refused() -> None:
    with pytest.raises(PolicyError, match="1.2.3"):
        rank([case(), case(order_priority="STAT")], NOW, DEFAULT)


# --- reasons ----------------------------------------------------------------


def test_reasons_of_a_scored_case() -> None:
    u = assess(
        case(
            findings=(FindingInput("nodule", 0.12, 0.4), FindingInput("bleed", 0.97, 0.8), FindingInput("lesion", 0.9, 0.5)),
            order_priority="STAT",
            patient_location="EMERGENCY",
            received_at=NOW - timedelta(minutes=47),
        ),
        NOW,
        DEFAULT,
    )
    assert u.reasons == (
        "bleed 0.97 >= 0.80 operating point (AI suggestion)",
        "lesion 0.90 >= 0.50 operating point (AI suggestion; no points for kind 'lesion')",
        "STAT order",
        "emergency context (patient location: EMERGENCY)",
        "nodule 0.12 below 0.40 operating point (AI suggestion)",
        "waiting 47 min, critical target 15 min",
    )


def test_reason_shows_enough_digits_to_tell_the_side() -> None:
    u = assess(case(findings=(FindingInput("bleed", 0.799, 0.8),)), NOW, DEFAULT)
    assert u.reasons[0] == "bleed 0.799 below 0.800 operating point (AI suggestion)"


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        ("pending", None, "AI result pending"),
        ("failed", "model crashed", "AI failed: model crashed"),
        ("failed", None, "AI failed"),
        ("not_analysed", "no detector for MR", "not analysed by AI: no detector for MR"),
        ("partial", "series 2 unreadable", "AI partially failed: series 2 unreadable"),
        (AIStatus.SCORED, None, "AI found nothing to flag (AI suggestion)"),
    ],
)
def test_status_reason(status: str, reason: str | None, expected: str) -> None:
    u = assess(case(ai_status=status, ai_reason=reason, order_priority="HIGH"), NOW, DEFAULT)
    assert u.reasons[0] == expected
    assert u.reasons[1] == "HIGH order"
    assert u.base_score == 25.0


@pytest.mark.parametrize("status", ["pending", "failed", "not_analysed"])
def test_unanalysed_case_ranks_on_order_context_and_waiting_alone(status: str) -> None:
    bleed = (FindingInput("bleed", 0.99, 0.5),)
    u = assess(case(ai_status=status, findings=bleed, order_priority="STAT", patient_location="ED"), NOW, DEFAULT)
    assert u.base_score == 80.0
    assert not any("bleed" in r for r in u.reasons)


def test_partial_case_counts_its_findings() -> None:
    u = assess(case(ai_status="partial", ai_reason="x", findings=(FindingInput("bleed", 0.8, 0.8),)), NOW, DEFAULT)
    assert u.base_score == 100.0 and u.priority_class is PriorityClass.CRITICAL
    assert u.reasons[:2] == ("AI partially failed: x", "bleed 0.80 >= 0.80 operating point (AI suggestion)")


def test_unrecognised_order_priority() -> None:
    u = assess(case(order_priority="asap"), NOW, DEFAULT)
    assert u.base_score == 0.0
    assert "order priority 'asap' not recognised" in u.reasons


@pytest.mark.parametrize(
    ("location", "service", "matched"),
    [
        ("ED Bay 3", None, True),
        ("MEDICAL", None, False),
        ("Emergency Dept", None, True),
        ("a&e majors", None, True),
        ("Ward 5", "Trauma/Ortho", True),
        ("Bedroom", "REDUCED", False),
        ("ER-2", None, True),
        (None, None, False),
    ],
)
def test_emergency_words_are_whole_words(location: str | None, service: str | None, matched: bool) -> None:
    u = assess(case(patient_location=location, requesting_service=service), NOW, DEFAULT)
    assert u.base_score == (20.0 if matched else 0.0)
    assert any(r.startswith("emergency context") for r in u.reasons) == matched


def test_emergency_reason_names_both_fields() -> None:
    u = assess(case(patient_location="ED Bay 3", requesting_service="Trauma"), NOW, DEFAULT)
    assert "emergency context (patient location: ED Bay 3; requesting service: Trauma)" in u.reasons
    assert u.base_score == 20.0  # once, not per field


# --- custom settings --------------------------------------------------------


def test_custom_settings_change_outcomes() -> None:
    nodule = case(findings=(FindingInput("nodule", 0.6, 0.5),))
    assert assess(nodule, NOW, DEFAULT).priority_class is PriorityClass.ROUTINE
    loud = PolicySettings(finding_points={"bleed": 100.0, "fracture": 50.0, "nodule": 150.0})
    assert assess(nodule, NOW, loud).priority_class is PriorityClass.CRITICAL
    icu = case(patient_location="ICU 4")
    assert assess(icu, NOW, DEFAULT).base_score == 0.0
    assert assess(icu, NOW, PolicySettings(emergency_words=["icu"], emergency_points=45.0)).base_score == 45.0
    old = case(received_at=NOW - timedelta(minutes=60))
    assert assess(old, NOW, PolicySettings(targets_min={"critical": 5, "urgent": 10, "routine": 30})).overdue
    assert not assess(old, NOW, DEFAULT).overdue
    lower = PolicySettings(urgent_at=10.0, critical_at=20.0)
    assert assess(case(order_priority="HIGH"), NOW, lower).priority_class is PriorityClass.CRITICAL


def test_targets_out_of_order_never_let_a_higher_class_age_slower() -> None:
    odd = PolicySettings(targets_min={"critical": 500.0, "urgent": 100.0, "routine": 10.0})
    assert [target_minutes(c, odd) for c in ("routine", "urgent", "critical")] == [10.0, 10.0, 10.0]
    waited = NOW - timedelta(minutes=100)
    weak = assess(case(received_at=waited, findings=(FindingInput("bleed", 0.79, 0.8),)), NOW, odd)
    strong = assess(case(received_at=waited, findings=(FindingInput("bleed", 0.8, 0.8),)), NOW, odd)
    assert strong.score > weak.score


# --- validation and layering ------------------------------------------------


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf, "0.5", None])
@pytest.mark.parametrize("field", ["probability", "operating_point"])
def test_invalid_probability_is_refused(field: str, bad: object) -> None:
    args = {"kind": "bleed", "probability": 0.5, "operating_point": 0.5, field: bad}
    with pytest.raises(PolicyError, match=f'"{field}"'):
        FindingInput(**args)


def test_invalid_case_fields_are_refused() -> None:
    with pytest.raises(PolicyError, match='"ai_status"'):
        case(ai_status="done")
    with pytest.raises(PolicyError, match='"received_at"'):
        case(received_at="2024-05-01")
    with pytest.raises(ValueError, match='"now"'):  # PolicyError is a ValueError too
        assess(case(), "now", DEFAULT)


def test_findings_list_becomes_tuple() -> None:
    c = case(findings=[FindingInput("bleed", 0.9, 0.5)])
    assert isinstance(c.findings, tuple) and hash(c)


def test_importing_policy_pulls_no_torch_textual_or_pynetdicom() -> None:
    code = "import sys, triage.flow.policy; print([m for m in ('torch', 'textual', 'pynetdicom') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.strip() == "[]"
