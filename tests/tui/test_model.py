"""The worklist model: order, rank, filters, search and incremental updates (pure, no textual)."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest

from triage.flow.cases import FindingRow
from triage.flow.policy import Urgency
from triage.reading.views import StudyFacts, WorklistItem, arrival_order_key, worklist_order_key
from triage.vocabulary import PriorityClass, ReadState
from tui.model import WorklistModel, badge_text, findings_summary, modality_labels, patient_text, status_text, wait_text

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def finding(kind: str, p: float, op: float = 0.5, fid: int = 1) -> FindingRow:
    return FindingRow(
        id=fid,
        study_pk=1,
        series_uid="s",
        kind=kind,
        probability=p,
        operating_point=op,
        urgent=p >= op,
        model_name=f"{kind}-ct",
        model_version="1",
        weights_sha256="ab" * 32,
        regions=(),
    )


def item(
    uid: str,
    score: float = 10.0,
    minutes: int = 0,
    *,
    read_state: ReadState = ReadState.UNREAD,
    claimed_by: str | None = None,
    ai_status: str = "scored",
    ai_reason: str | None = None,
    findings: tuple[FindingRow, ...] = (),
    modality: str = "CT",
    pid: str = "P1",
    name: str | None = "DOE^JANE",
    accession: str | None = "A1",
    hidden: bool = False,
) -> WorklistItem:
    """A row received ``minutes`` after T0 with urgency ``score``."""
    received = T0 + timedelta(minutes=minutes)
    study = StudyFacts(
        study_uid=uid,
        patient_id=pid,
        patient_name=name,
        patient_sex="F",
        patient_age="064Y",
        accession_number=accession,
        study_date=None,
        modality=modality,
        description="CT HEAD",
        order_priority="ROUTINE",
        patient_location=None,
        requesting_service=None,
        num_series=1,
        num_instances=1,
        first_received=received,
        receive_status="complete",
        ai_status=ai_status,
        ai_reason=ai_reason,
        scored_at=None,
        read_state=read_state,
        claimed_by=claimed_by,
        claim_expires=T0 + timedelta(hours=1) if claimed_by else None,
    )
    cls = PriorityClass.CRITICAL if score >= 100 else PriorityClass.URGENT if score >= 50 else PriorityClass.ROUTINE
    urgency = Urgency(priority_class=cls, score=score, base_score=score, waiting_min=5.0, target_min=60.0, overdue=False, reasons=())
    return WorklistItem(rank=0, study=study, urgency=urgency, findings=findings, ai_hidden=hidden)


def test_load_orders_by_urgency_with_signed_last() -> None:
    m = WorklistModel()
    m.load([item("a", 10, 0), item("b", 90, 5), item("c", 200, 9, read_state=ReadState.SIGNED), item("d", 50, 1)])
    assert list(m.visible) == ["b", "d", "a", "c"]
    assert [m.row(i).study.study_uid for i in range(len(m))] == ["b", "d", "a", "c"]
    assert (m.total, m.unsigned, len(m)) == (4, 3, 4)


def test_equal_scores_order_oldest_first_then_uid() -> None:
    m = WorklistModel()
    m.load([item("z", 10, 5), item("y", 10, 1), item("x", 10, 5)])
    assert list(m.visible) == ["y", "x", "z"]


def test_arrival_order_is_first_received_first_and_toggles_back() -> None:
    m = WorklistModel()
    m.load([item("a", 10, 3), item("b", 90, 5), item("c", 200, 1, read_state=ReadState.SIGNED)])
    assert m.toggle_sort() == "arrival"
    assert list(m.visible) == ["c", "a", "b"]
    assert m.toggle_sort() == "urgency"
    assert list(m.visible) == ["b", "a", "c"]


def test_unknown_sort_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sort mode"):
        WorklistModel(sort="alphabetical")


def test_rank_is_urgency_position_among_unsigned_whatever_the_view() -> None:
    m = WorklistModel()
    m.load(
        [item("a", 10, 0, modality="DX"), item("b", 90, 5), item("c", 200, 9, read_state=ReadState.SIGNED), item("d", 50, 1, modality="DX")]
    )
    expected = {"b": 1, "d": 2, "a": 3, "c": None}
    assert {u: m.rank_of(u) for u in "abcd"} == expected
    m.toggle_sort()
    m.set_filters(modality="CR/DX")
    assert list(m.visible) == ["a", "d"]
    assert {u: m.rank_of(u) for u in "abcd"} == expected
    assert m.rank_of("nope") is None


def test_apply_inserts_moves_and_skips_unchanged() -> None:
    m = WorklistModel()
    m.load([item("a", 10, 0), item("b", 90, 5), item("d", 50, 1)])
    assert m.apply([item("e", 60, 7)]) == {"e"}
    assert list(m.visible) == ["b", "e", "d", "a"]
    assert m.rank_of("e") == 2
    assert m.apply([item("a", 300, 0)]) == {"a"}  # re-scored: moves to the top
    assert list(m.visible) == ["a", "b", "e", "d"]
    assert m.apply([item("a", 300, 0)]) == set()
    signed = item("b", 90, 5, read_state=ReadState.SIGNED)
    assert m.apply([signed]) == {"b"}
    assert list(m.visible) == ["a", "e", "d", "b"]
    assert (m.unsigned, m.rank_of("b"), m.rank_of("d")) == (3, None, 3)


def test_apply_matches_a_full_sort_after_many_random_updates() -> None:
    rng = random.Random(7)
    uids = [f"u{i}" for i in range(60)]

    def rand(uid: str) -> WorklistItem:
        return item(
            uid,
            round(rng.uniform(0, 300), 1),
            rng.randrange(0, 50),
            modality=rng.choice(["CT", "DX"]),
            read_state=rng.choice(list(ReadState)),
        )

    m = WorklistModel()
    m.load(rand(u) for u in uids[:30])
    m.set_filters(modality="CT")
    current = {i.study.study_uid: i for i in (m.get(u) for u in uids[:30]) if i}
    for _ in range(200):
        batch = [rand(rng.choice(uids)) for _ in range(rng.randrange(1, 4))]
        m.apply(batch)
        current.update({b.study.study_uid: b for b in batch})
        if rng.random() < 0.2:
            m.toggle_sort()
        key = worklist_order_key if m.sort == "urgency" else arrival_order_key
        want = [i.study.study_uid for i in sorted(current.values(), key=key) if i.study.modality == "CT"]
        assert list(m.visible) == want
        urgency = [i for i in sorted(current.values(), key=worklist_order_key)]
        unsigned = [i.study.study_uid for i in urgency if i.study.read_state is not ReadState.SIGNED]
        assert [m.rank_of(u) for u in unsigned] == list(range(1, len(unsigned) + 1))
        assert all(m.index_of(u) == n for n, u in enumerate(want))


def test_index_of_is_none_when_filtered_out_or_unknown() -> None:
    m = WorklistModel()
    m.load([item("a", 10, modality="CT"), item("b", 20, modality="DX")])
    assert (m.index_of("a"), m.index_of("b")) == (1, 0)
    m.set_filters(modality="CT")
    assert (m.index_of("a"), m.index_of("b"), m.index_of("x"), m.index_of(None)) == (0, None, None, None)


def test_modality_filter_groups_radiographs_and_ignores_sr() -> None:
    assert modality_labels("CT\\SR") == ("CT",)
    assert modality_labels("DX") == ("CR/DX",)
    assert modality_labels("CR\\DX") == ("CR/DX",)
    assert modality_labels("SR") == ("SR",)
    m = WorklistModel()
    m.load([item("a", 10, modality="CT\\SR"), item("b", 20, modality="CR"), item("c", 30, modality="DX"), item("d", 40, modality="MR")])
    assert m.modality_choices() == ["CR/DX", "CT", "MR"]
    m.set_filters(modality="CR/DX")
    assert list(m.visible) == ["c", "b"]
    m.set_filters(modality="CT")
    assert list(m.visible) == ["a"]
    m.set_filters(modality=None)
    assert len(m) == 4


def test_status_filter_and_text() -> None:
    rows = [
        item("new", 10),
        item("mine", 20, read_state=ReadState.READING, claimed_by="dr.ada"),
        item("lapsed", 25, read_state=ReadState.READING),
        item("signed", 30, read_state=ReadState.SIGNED),
        item("failed", 40, ai_status="failed", ai_reason="unreadable pixels"),
        item("na", 50, ai_status="not_analysed"),
        item("pending", 60, ai_status="pending"),
        item("partial", 70, ai_status="partial"),
    ]
    texts = {r.study.study_uid: status_text(r) for r in rows}
    assert texts == {
        "new": "new",
        "mine": "in review by dr.ada",
        "lapsed": "in review (claim lapsed)",
        "signed": "signed",
        "failed": "AI failed",
        "na": "not analysed",
        "pending": "AI pending",
        "partial": "AI partial",
    }
    m = WorklistModel()
    m.load(rows)
    for status, want in [
        ("new", ["new"]),
        ("in review", ["lapsed", "mine"]),
        ("signed", ["signed"]),
        ("AI failed", ["failed"]),
        ("not analysed", ["na"]),
        ("AI pending", ["pending"]),
        ("AI partial", ["partial"]),
    ]:
        m.set_filters(status=status)
        assert list(m.visible) == want, status
    m.set_filters(status="unsigned")
    assert "signed" not in m.visible and len(m) == 7
    with pytest.raises(ValueError, match="status filter"):
        m.set_filters(status="bogus")


def test_finding_filter_counts_only_flagged_findings() -> None:
    m = WorklistModel()
    m.load(
        [
            item("bleed", 10, findings=(finding("bleed", 0.93),)),
            item("low", 20, findings=(finding("bleed", 0.10),)),
            item("frac", 30, findings=(finding("fracture", 0.7), finding("nodule", 0.2, fid=2))),
            item("none", 40),
        ]
    )
    m.set_filters(finding="bleed")
    assert list(m.visible) == ["bleed"]
    m.set_filters(finding="any")
    assert list(m.visible) == ["frac", "bleed"]
    m.set_filters(finding="nodule")
    assert list(m.visible) == []
    m.set_filters(finding=None)
    assert len(m) == 4


def test_search_by_patient_id_name_or_accession_any_case() -> None:
    m = WorklistModel()
    m.load(
        [
            item("a", 10, pid="MRN123", name="SMITH^JOHN", accession="ACC9"),
            item("b", 20, pid="MRN456", name="JONES^ANN", accession="XYZ123"),
            item("c", 30, pid="Q1", name=None, accession=None),
        ]
    )
    m.set_search("mrn")
    assert list(m.visible) == ["b", "a"]
    m.set_search("smith")
    assert list(m.visible) == ["a"]
    m.set_search("xyz")
    assert list(m.visible) == ["b"]
    m.set_search("123")
    assert list(m.visible) == ["b", "a"]
    m.set_search("")
    assert len(m) == 3


def test_apply_respects_filters_when_a_study_changes() -> None:
    m = WorklistModel()
    m.load([item("a", 10), item("b", 20)])
    m.set_filters(status="new")
    assert list(m.visible) == ["b", "a"]
    m.apply([item("a", 10, read_state=ReadState.READING, claimed_by="dr.bob")])
    assert list(m.visible) == ["b"]
    assert m.get("a") is not None and m.index_of("a") is None
    m.apply([item("a", 10)])
    assert list(m.visible) == ["b", "a"]


def test_badges_carry_a_symbol_and_a_word() -> None:
    badges = {c: badge_text(c) for c in PriorityClass}
    assert badges == {PriorityClass.CRITICAL: "▲ CRIT", PriorityClass.URGENT: "◆ URG", PriorityClass.ROUTINE: "● ROUT"}
    assert badge_text("critical") == "▲ CRIT"


def test_findings_summary_flagged_first_with_probability() -> None:
    row = item("a", findings=(finding("nodule", 0.3), finding("bleed", 0.93, fid=2), finding("bleed", 0.6, fid=3)))
    assert findings_summary(row) == [("bleed 0.93", True), ("nodule 0.30", False)]
    assert findings_summary(item("h", findings=(), hidden=True)) == [("hidden until impression", False)]
    assert findings_summary(item("p", ai_status="pending")) == [("awaiting AI", False)]
    assert findings_summary(item("f", ai_status="failed", ai_reason="timeout")) == [("timeout", False)]
    assert findings_summary(item("n")) == [("no AI findings", False)]


def test_wait_and_patient_text() -> None:
    assert [wait_text(m) for m in (0, 7.9, 65, 24 * 60 + 61)] == ["0m", "7m", "1h05", "1d01"]
    assert patient_text(item("a", pid="P9", name="DOE^JANE^Q")) == "DOE, JANE Q  P9 F 64Y"
    assert (
        patient_text(
            dataclasses.replace(
                item("b"),
                study=dataclasses.replace(item("b").study, patient_name=None, patient_id=None, patient_sex=None, patient_age=None),
            )
        )
        == "(no patient)"
    )
