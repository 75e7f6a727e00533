"""The keyed audit chain on a real SQLite file: the key file, rows checked against
the chain, and anchors outside the database (issue 14, part 7)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.triage.rows import T0, add_study
from triage.app.cli import main
from triage.config import Settings
from triage.reading.identity import AuthMethod
from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential
from triage.store import audit, audit_key
from triage.store.audit import Action, AuditError, AuditKeyError, anchor, append, canonical_json, export, verify
from triage.store.audit_key import create_key, default_key_file, read_key
from triage.store.db import make_engine

A, B = "alice", "bob"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    yield eng
    eng.dispose()


def raw(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return result.all() if result.returns_rows else []


def fill(engine: Engine, n: int) -> None:
    for i in range(n):
        with engine.begin() as conn:
            append(conn, actor=A, action=Action.VIEW, study_uid="1.2.9", detail={"i": i})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):
        return self.now


def signed_study(engine: Engine, tmp_path: Path, uid: str = "1.2.3") -> WorklistService:
    """A study read and signed by alice through the worklist service (every event the real one)."""
    add_study(engine, uid, audited=True)
    clock = Clock()
    svc = WorklistService(engine, Settings(data_dir=tmp_path), clock=clock)
    svc.claim(uid, A)
    svc.save_draft(uid, A, "Acute subdural haematoma.")
    svc.sign(uid, A, SigningCredential(reader=A, method=AuthMethod.PASSWORD, os_account="reader-os", at=clock()))
    return svc


def event_seq(engine: Engine, action: str) -> int:
    return int(raw(engine, "SELECT max(seq) FROM audit_event WHERE action = :a", a=action)[0][0])


# -- the key file ------------------------------------------------------------------------------


def test_key_file_is_created_0600_on_first_append_and_its_id_is_in_the_head(engine: Engine) -> None:
    path = default_key_file()  # under the tests' XDG_CONFIG_HOME, never the real home
    assert "config-home" in str(path)
    fill(engine, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key(path)
    assert key is not None and len(bytes.fromhex(path.read_text().strip())) == 32
    assert raw(engine, "SELECT key_id FROM audit_head")[0][0] == key.key_id == hashlib.sha256(key.secret).hexdigest()[:16]
    (event,) = export(engine)
    doc = {k: event[k] for k in ("seq", "at", "actor", "action", "study_uid", "detail", "prev_hash")}
    assert event["hash"] != hashlib.sha256(canonical_json(doc).encode()).hexdigest()  # keyed, not plain SHA-256


def test_a_new_key_is_written_whole_and_never_replaces_one(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "audit.key"
    first = create_key(path)
    audit_key.forget_loaded_keys()
    assert create_key(path) == first  # the existing key wins
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no temporary file left


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602])
def test_a_key_file_open_to_other_users_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "audit.key"
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(mode)
    with pytest.raises(AuditKeyError) as err:
        read_key(path)
    assert str(err.value) == (
        f"audit key file {path} is accessible by other users (mode {mode:04o}); run `chmod 600 {path}` (or 640 for a readers' group)"
    )


def test_a_group_readable_key_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o640)
    assert read_key(path) is not None


def test_a_key_file_that_holds_no_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.key"
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(AuditKeyError, match=f"audit key file {path} does not hold a key"):
        read_key(path)


def test_missing_and_wrong_keys_are_named_not_called_a_broken_chain(engine: Engine, tmp_path: Path) -> None:
    fill(engine, 3)
    key_id = raw(engine, "SELECT key_id FROM audit_head")[0][0]
    gone = tmp_path / "gone.key"
    audit_key.bind_key(engine, create_key(tmp_path / "other.key"))
    other = read_key(tmp_path / "other.key")
    assert other is not None
    wrong = f"audit key {other.path} (key id {other.key_id}) does not match this database's (key id {key_id}); restore the key file"
    with pytest.raises(AuditKeyError) as err:
        verify(engine)
    assert str(err.value) == wrong
    with pytest.raises(AuditKeyError, match="does not match this database's"), engine.begin() as conn:
        append(conn, actor=A, action=Action.VIEW, study_uid=None, detail={})
    with pytest.raises(AuditKeyError) as err:
        audit.prepare_key(engine, gone)  # the server's start: refused, and no new key made
    assert str(err.value) == f"audit key file {gone} is missing; this database's chain is keyed with key id {key_id}: restore the key file"
    assert not gone.exists()
    audit_key.bind_key(engine, audit.prepare_key(engine, default_key_file()))  # the right key again
    assert verify(engine).ok


# -- rebuilt chains ------------------------------------------------------------------------------


def rebuild(engine: Engine, digest: Callable[[str], str], head_key_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite every event after ``edit``, hashing each with ``digest``, and move the head: a whole forged chain."""
    events = list(export(engine))
    prev = audit.GENESIS_HASH
    for event in events:
        edit(event)
        event["prev_hash"] = prev
        doc = {k: event[k] for k in ("seq", "at", "actor", "action", "study_uid", "detail", "prev_hash")}
        event["hash"] = digest(canonical_json(doc))
        raw(
            engine,
            "UPDATE audit_event SET actor = :a, detail = :d, prev_hash = :p, hash = :h WHERE seq = :s",
            a=event["actor"],
            d=canonical_json(event["detail"]),
            p=event["prev_hash"],
            h=event["hash"],
            s=event["seq"],
        )
        prev = event["hash"]
    raw(engine, "UPDATE audit_head SET seq = :s, hash = :h, key_id = :k", s=events[-1]["seq"], h=prev, k=head_key_id)


def to_bob(event: dict[str, Any]) -> None:
    """Re-attribute alice's work (the sign included) to bob."""
    if event["actor"] == A:
        event["actor"] = B


def test_a_chain_rebuilt_with_plain_sha256_is_caught(engine: Engine, tmp_path: Path) -> None:
    signed_study(engine, tmp_path)
    raw(engine, "UPDATE report SET signed_by = :b", b=B)
    raw(engine, "UPDATE study SET claimed_by = NULL")
    key_id = raw(engine, "SELECT key_id FROM audit_head")[0][0]
    rebuild(engine, lambda doc: hashlib.sha256(doc.encode()).hexdigest(), key_id, to_bob)
    result = verify(engine)
    assert (result.ok, result.first_broken_seq, result.problem) == (False, 1, "event 1: hash does not match its contents (edited?)")


def test_a_chain_rebuilt_with_another_key_is_caught(engine: Engine, tmp_path: Path) -> None:
    import hmac

    signed_study(engine, tmp_path)
    raw(engine, "UPDATE report SET signed_by = :b", b=B)
    real_id = raw(engine, "SELECT key_id FROM audit_head")[0][0]
    forged = os.urandom(32)
    rebuild(engine, lambda doc: hmac.new(forged, doc.encode(), hashlib.sha256).hexdigest(), real_id, to_bob)
    assert verify(engine).problem == "event 1: hash does not match its contents (edited?)"
    # The forger also writes their key's id into the head: then the key, not the chain, is named.
    raw(engine, "UPDATE audit_head SET key_id = :k", k=hashlib.sha256(forged).hexdigest()[:16])
    with pytest.raises(AuditKeyError, match="does not match this database's"):
        verify(engine)
    raw(engine, "UPDATE audit_head SET key_id = NULL")
    assert verify(engine).problem == f"audit head has {event_seq(engine, 'sign')} events but no key id (edited?)"


# -- current rows against the chain --------------------------------------------------------------


def test_intact_rows_verify(engine: Engine, tmp_path: Path) -> None:
    signed_study(engine, tmp_path)
    assert verify(engine) == audit.AuditVerification(ok=True, events=event_seq(engine, "sign"))


def test_an_edited_signed_report_is_caught(engine: Engine, tmp_path: Path) -> None:
    signed_study(engine, tmp_path)
    raw(engine, "UPDATE report SET text = 'No acute abnormality.'")
    result = verify(engine)
    line = f"report v1 of study 1.2.3: text differs from its sign event (seq {event_seq(engine, 'sign')})"
    assert (result.ok, result.first_broken_seq, result.problem, result.mismatches) == (False, None, line, (line,))
    assert result.events == event_seq(engine, "sign")  # the chain itself is intact


def test_a_re_attributed_or_deleted_signed_report_is_caught(engine: Engine, tmp_path: Path) -> None:
    signed_study(engine, tmp_path)
    seq = event_seq(engine, "sign")
    raw(engine, "UPDATE report SET signed_by = :b", b=B)
    assert verify(engine).mismatches == (f"report v1 of study 1.2.3: signed by bob, its sign event (seq {seq}) by alice",)
    raw(engine, "UPDATE report SET status = 'draft', signed_by = NULL")
    assert verify(engine).mismatches == (f"report v1 of study 1.2.3: status draft, but its sign event (seq {seq}) signed it",)
    raw(engine, "DELETE FROM outbox")
    raw(engine, "DELETE FROM report")
    rid = json.loads(raw(engine, "SELECT detail FROM audit_event WHERE seq = :s", s=seq)[0][0])["report_id"]
    assert verify(engine).mismatches == (f"report v1 of study 1.2.3: signed in event {seq} (report id {rid}), now missing",)


def test_an_edited_draft_is_caught(engine: Engine, tmp_path: Path) -> None:
    add_study(engine, "1.2.3", audited=True)
    svc = WorklistService(engine, Settings(data_dir=tmp_path), clock=Clock())
    svc.claim("1.2.3", A)
    svc.save_draft("1.2.3", A, "First words.")
    assert verify(engine).ok
    raw(engine, "UPDATE report SET text = 'Other words.'")
    assert verify(engine).mismatches == (f"report v1 of study 1.2.3: text differs from its draft event (seq {event_seq(engine, 'draft')})",)


def test_an_edited_finding_is_caught(engine: Engine) -> None:
    added = add_study(engine, "1.2.3", findings=(("bleed", 0.93, 0.5), ("fracture", 0.2, 0.6)), audited=True)
    assert verify(engine).ok
    seq = event_seq(engine, "inference")
    fid = added.finding_ids[0]
    raw(engine, "UPDATE ai_finding SET probability = 0.1, urgent = 0 WHERE id = :f", f=fid)
    assert verify(engine).mismatches == (
        f"finding {fid} of study 1.2.3 (series 1.2.3.1): probability 0.1 (event: 0.93), urgent False (event: True) "
        f"differ from its inference event (seq {seq})",
    )
    raw(engine, "UPDATE ai_finding SET probability = 0.93, urgent = 1, weights_sha256 = :w WHERE id = :f", w="cd" * 32, f=fid)
    assert verify(engine).mismatches == (
        f"finding {fid} of study 1.2.3 (series 1.2.3.1): model sha256 '{'cd' * 32}' (event: '{'ab' * 32}') "
        f"differ from its inference event (seq {seq})",
    )
    raw(engine, "DELETE FROM ai_finding WHERE id = :f", f=fid)
    assert verify(engine).mismatches == (
        f"finding {added.finding_ids[1]} of study 1.2.3 (series 1.2.3.1): kind 'fracture' (event: 'bleed'), probability 0.2 "
        f"(event: 0.93), operating_point 0.6 (event: 0.5), urgent False (event: True), model name 'fracture-ct' (event: 'bleed-ct') "
        f"differ from its inference event (seq {seq})",
        f"series 1.2.3.1 of study 1.2.3: 1 findings, its inference event (seq {seq}) recorded 2 (deleted?)",
    )


def test_an_edited_read_state_or_claim_is_caught(engine: Engine, tmp_path: Path) -> None:
    signed_study(engine, tmp_path)
    add_study(engine, "4.5.6", audited=True)
    seq = event_seq(engine, "sign")
    raw(engine, "UPDATE study SET read_state = 'reading', claimed_by = 'mallory' WHERE study_uid = '1.2.3'")
    raw(engine, "UPDATE study SET read_state = 'signed' WHERE study_uid = '4.5.6'")
    assert verify(engine).mismatches == (
        f"study 1.2.3: read state reading, its event (seq {seq}) says signed",
        f"study 1.2.3: claimed by mallory, its event (seq {seq}) says unclaimed",
        "study 4.5.6: read state signed, no claim or sign event records a change",
    )


def test_many_differences_are_counted_past_the_listed_ones(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("triage.store.audit_state.MAX_LINES", 2)
    for i in range(4):
        add_study(engine, f"1.2.{i}", audited=True)
    raw(engine, "UPDATE study SET claimed_by = 'mallory'")
    assert len(verify(engine).mismatches) == 3 and verify(engine).mismatches[-1] == "... and 2 more differences"


# -- anchors ----------------------------------------------------------------------------------


def test_anchor_appends_a_json_line_0640_and_logs_it(engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "anchors" / "audit-anchors.jsonl"
    assert anchor(engine, None, path) is None  # an empty trail: nothing to anchor
    fill(engine, 3)
    with caplog.at_level(logging.INFO, logger="triage.audit"):
        first = anchor(engine, read_key(default_key_file()), path)
    assert first is not None and first.seq == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~_umask()
    (line,) = path.read_text().splitlines()
    assert json.loads(line) == {"at": first.at, "seq": 3, "hash": raw(engine, "SELECT hash FROM audit_head")[0][0]}
    assert [r.getMessage() for r in caplog.records if r.name == "triage.audit"] == [f"audit anchor {line}"]
    assert anchor(engine, None, path, only_if_moved=True) is None  # the head has not moved
    fill(engine, 1)
    assert anchor(engine, None, path, only_if_moved=True) is not None
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [3, 4]
    assert verify(engine, anchor_file=path).ok


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_truncated_tail_is_caught_by_the_anchor(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "audit-anchors.jsonl"
    fill(engine, 6)
    anchor(engine, None, path)
    # Delete the newest events and move the head back: a shorter chain, valid on its own.
    h4 = raw(engine, "SELECT hash FROM audit_event WHERE seq = 4")[0][0]
    raw(engine, "DELETE FROM audit_event WHERE seq > 4")
    raw(engine, "UPDATE audit_head SET seq = 4, hash = :h", h=h4)
    assert verify(engine).ok  # without the anchor
    result = verify(engine, anchor_file=path)
    at = json.loads(path.read_text())["at"]
    assert (result.ok, result.first_broken_seq, result.problem) == (
        False,
        5,
        f"chain ends at event 4, but the anchor of {at} names event 6 (truncated?)",
    )


def test_a_chain_rebuilt_with_the_key_is_caught_by_the_anchor(engine: Engine, tmp_path: Path) -> None:
    import hmac

    path = tmp_path / "audit-anchors.jsonl"
    fill(engine, 4)
    anchor(engine, None, path)
    key = read_key(default_key_file())
    assert key is not None
    rebuild(engine, lambda doc: hmac.new(key.secret, doc.encode(), hashlib.sha256).hexdigest(), key.key_id, to_bob)
    assert verify(engine).ok  # whoever holds the key can rebuild; the anchor outside the database still knows
    at = json.loads(path.read_text())["at"]
    assert verify(engine, anchor_file=path).problem == f"event 4: hash differs from the anchor of {at} (chain rewritten?)"


def test_an_edited_anchor_file_is_refused_with_its_line(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "audit-anchors.jsonl"
    path.write_text('{"at":"x","seq":1,"hash":"' + "0" * 64 + '"}\nnot json\n')
    with pytest.raises(audit.AnchorError, match=f"audit anchor file {path} line 2 is not an anchor"):
        verify(engine, anchor_file=path)


def test_the_server_anchors_periodically_and_at_shutdown(make_server: Callable[..., Any]) -> None:
    server = make_server(**{"audit.anchor_interval_s": 0.2})
    path = server.settings.data_dir / "audit-anchors.jsonl"
    with server.engine.begin() as conn:
        append(conn, actor=A, action=Action.VIEW, study_uid=None, detail={})
    import time

    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [1]  # once: the head moved once
    time.sleep(0.5)
    with server.engine.begin() as conn:
        append(conn, actor=A, action=Action.VIEW, study_uid=None, detail={})
    server.anchorer.interval = 3600  # the next periodic one would come too soon to tell apart
    server.stop()
    seqs = [json.loads(x)["seq"] for x in path.read_text().splitlines()]
    assert seqs[0] == 1 and seqs[-1] == 2
    assert verify(make_engine(server.settings.db_url), anchor_file=path).ok


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() sets the process's key file from the settings: put it back after the test.
    monkeypatch.setattr(audit_key, "_key_file", None)


def test_cli_verify_names_what_differs_and_anchor_writes_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_key: None
) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'triage.db'}")
    signed_study(engine, tmp_path)
    assert main(["audit", "anchor", "--data-dir", str(data)]) == 0
    assert f"anchored event {event_seq(engine, 'sign')} in {data / 'audit-anchors.jsonl'}" in capsys.readouterr().out
    assert main(["audit", "verify", "--data-dir", str(data)]) == 0
    assert "audit trail intact" in capsys.readouterr().out
    raw(engine, "UPDATE report SET text = 'edited'")
    assert main(["audit", "verify", "--data-dir", str(data)]) == 3
    err = capsys.readouterr().err
    assert f"report v1 of study 1.2.3: text differs from its sign event (seq {event_seq(engine, 'sign')})" in err


def test_cli_refuses_a_world_readable_or_wrong_key_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cli_key: None
) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'triage.db'}")
    fill(engine, 2)
    loose = tmp_path / "loose.key"
    loose.write_text(os.urandom(32).hex() + "\n")
    loose.chmod(0o644)
    monkeypatch.setenv("TRIAGE_AUDIT__KEY_FILE", str(loose))
    assert main(["audit", "verify", "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"audit key file {loose} is accessible by other users (mode 0644)" in err
    loose.chmod(0o600)
    audit_key.forget_loaded_keys()
    assert main(["audit", "verify", "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match this database's (key id" in err and "restore the key file" in err


def test_append_refuses_a_head_without_key_id(engine: Engine) -> None:
    fill(engine, 1)
    raw(engine, "UPDATE audit_head SET key_id = NULL")
    with pytest.raises(AuditError, match="audit head has 1 events but no key id"), engine.begin() as conn:
        append(conn, actor=A, action=Action.VIEW, study_uid=None, detail={})


def test_findings_no_inference_event_records_are_caught(engine: Engine) -> None:
    added = add_study(engine, "1.2.3")  # rows written straight into the index, no event
    assert verify(engine).mismatches == (f"finding {added.finding_ids[0]} of study 1.2.3 (series 1.2.3.1): no inference event records it",)
