"""The hash-chained audit log on a real SQLite file: appends, rollbacks,
tampering of every kind, export filters and concurrent writers."""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import Engine
from sqlmodel import select

from tests.support import REPO_ROOT
from triage.errors import DatabaseError
from triage.store.audit import (
    AI_ACTOR,
    GENESIS_HASH,
    Action,
    AuditError,
    AuditVerification,
    append,
    canonical_json,
    events_for_study,
    export,
    verify,
)
from triage.store.audit_key import default_key_file, read_key
from triage.store.db import make_engine, session_scope
from triage.store.models import AuditEvent, Study
from triage.store.tables import STUDY

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 't.db'}")


def fill(engine: Engine, n: int) -> None:
    """n events, each in its own transaction, about studies 1.2.<i % 2>."""
    for i in range(1, n + 1):
        with engine.begin() as conn:
            append(conn, actor="alice", action=Action.VIEW, study_uid=f"1.2.{i % 2}", detail={"i": i}, at=T0 + timedelta(minutes=i))


def raw(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return result.all() if result.returns_rows else []


def head(engine: Engine) -> tuple[int, str]:
    seq, digest = raw(engine, "SELECT seq, hash FROM audit_head WHERE id = 1")[0]
    return seq, digest


def recompute(event: dict[str, Any], secret: bytes | None = None) -> str:
    """The event hash as an outside auditor with the key file computes it from exported JSON."""
    if secret is None:
        key = read_key(default_key_file())  # the tests' key (XDG_CONFIG_HOME is a temporary dir)
        assert key is not None
        secret = key.secret
    doc = {k: event[k] for k in ("seq", "at", "actor", "action", "study_uid", "detail", "prev_hash")}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


# -- appending -------------------------------------------------------------------


def test_appends_chain_and_store_canonical_detail(engine: Engine) -> None:
    with engine.begin() as conn:
        assert append(conn, actor=AI_ACTOR, action=Action.INFERENCE, study_uid="1.2.3", detail={"b": "ü", "a": 0.25}) == 1
        assert append(conn, actor="alice", action="claim", study_uid="1.2.3", detail={}) == 2
    with engine.begin() as conn:
        assert append(conn, actor="listener", action=Action.INSTANCES_RECEIVED, study_uid=None, detail={"n": 3}) == 3

    rows = raw(engine, "SELECT seq, actor, action, study_uid, detail, prev_hash, hash FROM audit_event ORDER BY id")
    assert [r.seq for r in rows] == [1, 2, 3]
    assert [r.action for r in rows] == ["inference", "claim", "instances_received"]
    assert rows[0].detail == '{"a":0.25,"b":"ü"}'  # sorted, compact, UTF-8 kept
    assert rows[2].study_uid is None
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert len({r.hash for r in rows}) == 3
    assert head(engine) == (3, rows[2].hash)

    # An auditor recomputes every hash from the exported lines alone.
    events = list(export(engine))
    assert [recompute(e) for e in events] == [r.hash for r in rows]
    assert verify(engine) == AuditVerification(ok=True, events=3, first_broken_seq=None, problem=None)


def test_time_is_stored_exactly_and_round_trips(engine: Engine) -> None:
    at = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as conn:
        append(conn, actor="alice", action=Action.VIEW, study_uid="1.2.3", detail={}, at=at)
    with session_scope(engine) as s:
        stored = s.exec(select(AuditEvent)).one().at
    assert stored == at and stored.utcoffset() == timedelta(0)
    assert stored.microsecond == 123456
    (event,) = export(engine)
    assert event["at"] == "2024-05-06T07:08:09.123456+00:00"
    assert verify(engine).ok


def test_default_time_is_now_utc(engine: Engine) -> None:
    before = datetime.now(UTC)
    with engine.begin() as conn:
        append(conn, actor="alice", action=Action.VIEW, study_uid=None, detail={})
    (event,) = export(engine)
    at = datetime.fromisoformat(event["at"])
    assert before <= at <= datetime.now(UTC)


def test_rolled_back_transaction_leaves_no_event(engine: Engine) -> None:
    fill(engine, 2)
    head_before = head(engine)
    with pytest.raises(RuntimeError, match="change failed"):
        with engine.begin() as conn:
            assert append(conn, actor="alice", action=Action.SIGN, study_uid="1.2.3", detail={"report": 1}) == 3
            raise RuntimeError("change failed")
    assert raw(engine, "SELECT count(*) FROM audit_event")[0][0] == 2
    assert head(engine) == head_before
    with engine.begin() as conn:
        assert append(conn, actor="alice", action=Action.SIGN, study_uid="1.2.3", detail={"report": 1}) == 3
    assert verify(engine).ok and verify(engine).events == 3


def test_first_append_rolled_back_then_chain_starts_at_one(engine: Engine) -> None:
    with pytest.raises(RuntimeError):
        with engine.begin() as conn:
            append(conn, actor="alice", action=Action.VIEW, study_uid=None, detail={})
            raise RuntimeError("no")
    assert raw(engine, "SELECT count(*) FROM audit_head")[0][0] == 0
    fill(engine, 1)
    assert [e["seq"] for e in export(engine)] == [1]
    assert verify(engine).ok


def test_event_commits_with_the_orm_change(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(Study(study_uid="1.2.9"))
        append(s.connection(), actor="alice", action=Action.CLAIM, study_uid="1.2.9", detail={})
    with pytest.raises(RuntimeError):
        with session_scope(engine) as s:
            s.add(Study(study_uid="1.2.10"))
            append(s.connection(), actor="alice", action=Action.CLAIM, study_uid="1.2.10", detail={})
            raise RuntimeError("crash before commit")
    assert [r.study_uid for r in raw(engine, "SELECT study_uid FROM study")] == ["1.2.9"]
    assert [(e["seq"], e["study_uid"]) for e in export(engine)] == [(1, "1.2.9")]


class Colour(enum.Enum):
    RED = "red"


def test_detail_values_with_one_json_form_are_converted(engine: Engine) -> None:
    np = pytest.importorskip("numpy")
    detail = {
        "when": datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=1))),
        "naive": datetime(2024, 1, 1, 1, 0),  # taken as UTC
        "path": Path("studies") / "x.dcm",
        "colour": Colour.RED,
        "action": Action.SIGN,
        "kinds": {"nodule", "bleed"},
        "p": np.float32(0.5),
        "box": np.array([1, 2]),
    }
    with engine.begin() as conn:
        append(conn, actor=AI_ACTOR, action=Action.INFERENCE, study_uid="1.2.3", detail=detail)
    (event,) = export(engine)
    assert event["detail"] == {
        "when": "2024-01-01T01:00:00.000000+00:00",
        "naive": "2024-01-01T01:00:00.000000+00:00",
        "path": "studies/x.dcm",
        "colour": "red",
        "action": "sign",
        "kinds": ["bleed", "nodule"],
        "p": 0.5,
        "box": [1, 2],
    }
    assert verify(engine).ok


@pytest.mark.parametrize(
    ("detail", "message"),
    [
        ({"p": float("nan")}, "Out of range float values are not JSON compliant"),
        ({"nested": [1.0, {"q": float("inf")}]}, "Out of range float values are not JSON compliant"),
        ({"o": object()}, "object is not JSON serializable"),
        ({"bytes": b"\x00"}, "bytes is not JSON serializable"),
        ({1: "a", "b": 2}, "not supported between instances"),
        ({"s": "\ud800"}, "surrogates not allowed"),
    ],
)
def test_detail_without_canonical_json_is_refused(engine: Engine, detail: dict, message: str) -> None:
    fill(engine, 1)
    with pytest.raises(AuditError, match=message) as err:
        with engine.begin() as conn:
            append(conn, actor="alice", action=Action.FEEDBACK, study_uid="1.2.3", detail=detail)
    assert str(err.value).startswith("audit detail is not canonical JSON")
    assert [e["seq"] for e in export(engine)] == [1]
    assert head(engine)[0] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor": ""}, "audit actor must be a non-empty string, got ''"),
        ({"actor": "   "}, "audit actor must be a non-empty string"),
        ({"actor": None}, "audit actor must be a non-empty string, got None"),
        ({"actor": "x" * 65}, "audit actor is longer than 64 characters"),
        ({"action": "delete"}, "unknown audit action 'delete'"),
        ({"study_uid": ""}, "audit study_uid must be a non-empty string"),
        ({"study_uid": "1." * 40}, "audit study_uid is longer than 64 characters"),
        ({"detail": [1, 2]}, "audit detail must be a mapping, got list"),
        ({"at": datetime(2024, 1, 1)}, "audit time must be timezone-aware, got naive 2024-01-01T00:00:00"),
    ],
)
def test_invalid_arguments_are_refused(engine: Engine, kwargs: dict, message: str) -> None:
    args: dict[str, Any] = {"actor": "alice", "action": Action.VIEW, "study_uid": "1.2.3", "detail": {}} | kwargs
    with pytest.raises(AuditError, match=message):
        with engine.begin() as conn:
            append(conn, **args)
    assert list(export(engine)) == []


def test_append_outside_a_transaction_is_refused(engine: Engine) -> None:
    with engine.connect() as conn:
        with pytest.raises(AuditError, match="needs the caller's transaction"):
            append(conn, actor="alice", action=Action.VIEW, study_uid=None, detail={})
    assert list(export(engine)) == []


def test_event_inserted_behind_the_heads_back_stops_appends(engine: Engine) -> None:
    fill(engine, 2)
    raw(
        engine,
        "INSERT INTO audit_event (seq, at, actor, action, study_uid, detail, prev_hash, hash) "
        "VALUES (3, '2024-05-06 08:00:00.000000', 'mallory', 'view', NULL, '{}', :h, :h)",
        h="a" * 64,
    )
    with pytest.raises(DatabaseError, match="cannot append audit event \\(view by alice\\): IntegrityError: UNIQUE") as err:
        with engine.begin() as conn:
            append(conn, actor="alice", action=Action.VIEW, study_uid=None, detail={})
    assert "\n" not in str(err.value)
    assert head(engine)[0] == 2
    assert verify(engine).problem == "event 3: previous hash does not match event 2 (chain broken)"


def test_canonical_json_is_stable() -> None:
    assert canonical_json({"b": [1, 2.5, None, True], "a": {"y": "é", "x": 1}}) == '{"a":{"x":1,"y":"é"},"b":[1,2.5,null,true]}'


# -- verifying -------------------------------------------------------------------


def test_verify_empty_log(engine: Engine) -> None:
    assert verify(engine) == AuditVerification(ok=True, events=0)
    assert verify(engine).as_json() == {"ok": True, "events": 0, "first_broken_seq": None, "problem": None, "mismatches": []}


def test_verify_intact_log(engine: Engine) -> None:
    fill(engine, 6)
    result = verify(engine)
    assert result == AuditVerification(ok=True, events=6, first_broken_seq=None, problem=None)


def test_verify_reads_past_one_page(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("triage.store.audit._PAGE", 4)
    fill(engine, 10)
    assert verify(engine) == AuditVerification(ok=True, events=10)
    assert [e["seq"] for e in export(engine)] == list(range(1, 11))
    raw(engine, "DELETE FROM audit_event WHERE seq = 9")
    assert verify(engine).problem == "event 9 missing (deleted?)"


def swap_contents(engine: Engine, seq_a: int, seq_b: int) -> None:
    """Give each of two rows the other's whole contents (ids stay)."""
    cols = "seq, at, actor, action, study_uid, detail, prev_hash, hash"
    rows = {r.seq: r for r in raw(engine, f"SELECT id, {cols} FROM audit_event WHERE seq IN (:a, :b)", a=seq_a, b=seq_b)}
    raw(engine, "UPDATE audit_event SET seq = -seq WHERE seq IN (:a, :b)", a=seq_a, b=seq_b)
    sets = ", ".join(f"{c} = :{c}" for c in cols.split(", "))
    for target, source in ((rows[seq_a], rows[seq_b]), (rows[seq_b], rows[seq_a])):
        values = {c: getattr(source, c) for c in cols.split(", ")}
        raw(engine, f"UPDATE audit_event SET {sets} WHERE id = :id", id=target.id, **values)


def swap_seqs(engine: Engine, seq_a: int, seq_b: int) -> None:
    raw(engine, "UPDATE audit_event SET seq = -seq WHERE seq IN (:a, :b)", a=seq_a, b=seq_b)
    raw(engine, "UPDATE audit_event SET seq = :b WHERE seq = :a", a=-seq_a, b=seq_b)
    raw(engine, "UPDATE audit_event SET seq = :a WHERE seq = :b", a=seq_a, b=-seq_b)


def rewrite_with_valid_hash(engine: Engine, seq: int, detail: dict) -> None:
    """An edit by someone who knows the algorithm: the event's own hash is recomputed."""
    (event,) = [e for e in export(engine) if e["seq"] == seq]
    event["detail"] = detail
    raw(engine, "UPDATE audit_event SET detail = :d, hash = :h WHERE seq = :s", d=canonical_json(detail), h=recompute(event), s=seq)


TAMPERING: dict[str, tuple[Callable[[Engine], object], int | None, str]] = {
    "edit detail": (
        lambda e: raw(e, "UPDATE audit_event SET detail = :d WHERE seq = 3", d='{"i":99}'),
        3,
        "event 3: hash does not match its contents (edited?)",
    ),
    "edit actor": (
        lambda e: raw(e, "UPDATE audit_event SET actor = 'mallory' WHERE seq = 2"),
        2,
        "event 2: hash does not match its contents (edited?)",
    ),
    "edit time by a microsecond": (
        lambda e: raw(e, "UPDATE audit_event SET at = '2024-05-06 07:12:09.123457' WHERE seq = 4"),
        4,
        "event 4: hash does not match its contents (edited?)",
    ),
    "edit time to garbage": (
        lambda e: raw(e, "UPDATE audit_event SET at = 'yesterday' WHERE seq = 2"),
        2,
        "event 2: time is unreadable (edited?)",
    ),
    "detail reformatted": (
        lambda e: raw(e, "UPDATE audit_event SET detail = :d WHERE seq = 5", d='{"i": 5}'),
        5,
        "event 5: detail is not in canonical form (edited?)",
    ),
    "detail not json": (
        lambda e: raw(e, "UPDATE audit_event SET detail = '{oops' WHERE seq = 1"),
        1,
        "event 1: detail is not valid JSON (edited?)",
    ),
    "edit hash": (
        lambda e: raw(e, "UPDATE audit_event SET hash = :h WHERE seq = 4", h="f" * 64),
        4,
        "event 4: hash does not match its contents (edited?)",
    ),
    "edit prev_hash of first": (
        lambda e: raw(e, "UPDATE audit_event SET prev_hash = :h WHERE seq = 1", h="1" * 64),
        1,
        "event 1: previous hash is not the chain's start (edited?)",
    ),
    "edit with recomputed hash": (
        lambda e: rewrite_with_valid_hash(e, 2, {"i": 20}),
        3,
        "event 3: previous hash does not match event 2 (chain broken)",
    ),
    "edit last with recomputed hash": (lambda e: rewrite_with_valid_hash(e, 6, {"i": 60}), 6, "head hash does not match event 6 (edited?)"),
    "delete middle": (lambda e: raw(e, "DELETE FROM audit_event WHERE seq = 3"), 3, "event 3 missing (deleted?)"),
    "delete first": (lambda e: raw(e, "DELETE FROM audit_event WHERE seq = 1"), 1, "event 1 missing (deleted?)"),
    "delete last": (lambda e: raw(e, "DELETE FROM audit_event WHERE seq = 6"), 6, "head says 6 events, table ends at 5 (deleted?)"),
    "delete last two": (lambda e: raw(e, "DELETE FROM audit_event WHERE seq >= 5"), 5, "head says 6 events, table ends at 4 (deleted?)"),
    "delete all": (lambda e: raw(e, "DELETE FROM audit_event"), 1, "head says 6 events, table ends at 0 (deleted?)"),
    "delete head": (lambda e: raw(e, "DELETE FROM audit_head"), None, "audit head is missing, table has 6 events (deleted?)"),
    "head rewound": (lambda e: raw(e, "UPDATE audit_head SET seq = 4"), 5, "head says 4 events, table has 6 (inserted?)"),
    "reorder whole rows": (lambda e: swap_contents(e, 3, 4), 3, "event 3 out of order"),
    "swap seqs": (lambda e: swap_seqs(e, 2, 5), 2, "event 2 out of order"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_detects_tampering(engine: Engine, case: str) -> None:
    tamper, first_broken, problem = TAMPERING[case]
    fill(engine, 6)
    assert verify(engine).ok
    tamper(engine)
    result = verify(engine)
    assert (result.ok, result.first_broken_seq, result.problem) == (False, first_broken, problem)
    assert result.events == (first_broken - 1 if first_broken is not None else 6)
    assert result.as_json()["problem"] == problem


def test_reordered_rows_still_hash_correctly_one_by_one(engine: Engine) -> None:
    # Only the order is wrong: each moved row is self-consistent, so the break
    # is found by position, not by hash.
    fill(engine, 6)
    swap_contents(engine, 3, 4)
    assert all(recompute(e) == e["hash"] for e in export(engine))
    assert verify(engine).problem == "event 3 out of order"


# -- export --------------------------------------------------------------------


def test_export_filters_by_time_and_study(engine: Engine) -> None:
    plan = [("1.2.A", 0), ("1.2.B", 60), ("1.2.A", 120), ("1.2.B", 180), ("1.2.A", 240)]
    for i, (study, minutes) in enumerate(plan, start=1):
        with engine.begin() as conn:
            append(conn, actor="alice", action=Action.VIEW, study_uid=study, detail={"i": i}, at=T0 + timedelta(minutes=minutes))

    assert [e["seq"] for e in export(engine)] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in export(engine, since=T0 + timedelta(minutes=120))] == [3, 4, 5]  # inclusive
    assert [e["seq"] for e in export(engine, since=T0 + timedelta(minutes=121))] == [4, 5]
    assert [e["seq"] for e in export(engine, study_uid="1.2.A")] == [1, 3, 5]
    assert [e["seq"] for e in export(engine, since=T0 + timedelta(minutes=60), study_uid="1.2.A")] == [3, 5]
    # A naive time is taken as UTC; another offset means the same instant.
    naive = (T0 + timedelta(minutes=180)).replace(tzinfo=None)
    assert [e["seq"] for e in export(engine, since=naive)] == [4, 5]
    plus2 = (T0 + timedelta(minutes=180)).astimezone(timezone(timedelta(hours=2)))
    assert [e["seq"] for e in export(engine, since=plus2)] == [4, 5]
    assert list(export(engine, study_uid="9.9")) == []

    first = next(export(engine, study_uid="1.2.B"))
    assert first == {
        "seq": 2,
        "at": "2024-05-06T08:08:09.123456+00:00",
        "actor": "alice",
        "action": "view",
        "study_uid": "1.2.B",
        "detail": {"i": 2},
        "prev_hash": first["prev_hash"],
        "hash": first["hash"],
    }
    assert json.loads(json.dumps(first)) == first  # a JSON line as is


def test_events_for_study(engine: Engine) -> None:
    fill(engine, 5)
    history = events_for_study(engine, "1.2.0")
    assert [(e["seq"], e["detail"]) for e in history] == [(2, {"i": 2}), (4, {"i": 4})]
    assert events_for_study(engine, "nope") == []


def test_export_refuses_an_unreadable_event(engine: Engine) -> None:
    fill(engine, 2)
    raw(engine, "UPDATE audit_event SET detail = 'x' WHERE seq = 2")
    with pytest.raises(AuditError, match="audit event 2: detail is not valid JSON"):
        list(export(engine))


# -- concurrency -------------------------------------------------------------


def test_concurrent_appends_make_one_gapless_chain(engine: Engine) -> None:
    threads, per_thread = 6, 15
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    seqs: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with engine.begin() as conn:
                    if i % 3 == 0:  # a change before the event, as the worklist does
                        conn.execute(insert(STUDY).values(study_uid=f"1.9.{t}.{i}"))
                    seq = append(conn, actor=f"user{t}", action=Action.VIEW, study_uid=f"1.9.{t}", detail={"t": t, "i": i})
                with lock:
                    seqs.append(seq)
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    done = threading.Event()
    verdicts: list[AuditVerification] = []

    def audit_meanwhile() -> None:
        # verify while events commit: never a false alarm.
        while not done.is_set():
            verdicts.append(verify(engine))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    auditor = threading.Thread(target=audit_meanwhile)
    auditor.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    done.set()
    auditor.join(timeout=60)
    assert errors == []
    assert verdicts and [v for v in verdicts if not v.ok] == []
    total = threads * per_thread
    assert sorted(seqs) == list(range(1, total + 1))
    assert verify(engine) == AuditVerification(ok=True, events=total)
    events = list(export(engine))
    for t in range(threads):
        # Each thread's own events are in its order.
        assert [e["detail"]["i"] for e in events if e["actor"] == f"user{t}"] == list(range(per_thread))


# -- layering --------------------------------------------------------------------


def test_import_pulls_no_torch_textual_or_pynetdicom() -> None:
    code = "import sys, triage.store.audit\nprint(sorted(m for m in ('torch', 'textual', 'pynetdicom') if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
