"""``triage case ...`` and ``triage studies``/``audit``/``monitor`` on a real
SQLite index holding a study with an AI finding."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from triage.app.cli import main
from triage.clock import utcnow
from triage.reading.identity import os_account
from triage.store.db import make_engine
from triage.store.models import AIFinding, AuditEvent, Series, SeriesResult, Study


@pytest.fixture
def index(tmp_path: Path) -> Path:
    """A data dir whose index holds one scored head CT (bleed 0.93, urgent) and one unscored study."""
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'triage.db'}")
    now = utcnow()
    with engine.begin() as conn:
        for pk, uid, acc, status in ((1, "1.2.3.1", "ACC1", "scored"), (2, "1.2.3.2", "ACC2", "pending")):
            conn.execute(
                insert(Study.__table__).values(
                    id=pk,
                    study_uid=uid,
                    accession_number=acc,
                    patient_id=f"P{pk}",
                    modalities="CT",
                    ai_status=status,
                    order_priority="ROUTINE",
                    first_received=now - timedelta(minutes=5),
                    last_received=now,
                    study_description="CT HEAD",
                    read_state="unread",
                    status="complete",
                )
            )
        conn.execute(insert(Series.__table__).values(id=1, series_uid="1.2.3.1.1", study_pk=1, modality="CT", status="complete"))
        conn.execute(
            insert(SeriesResult.__table__).values(
                id=1, series_pk=1, study_pk=1, generation=0, analysed=True, reason="head CT", failures="[]", scored_at=now
            )
        )
        conn.execute(
            insert(AIFinding.__table__).values(
                id=7,
                result_pk=1,
                study_pk=1,
                series_pk=1,
                kind="bleed",
                probability=0.93,
                operating_point=0.1,
                urgent=True,
                model_name="bleed-ct",
                model_version="1.0.0",
                weights_sha256="ab" * 32,
                regions=json.dumps([{"slice_index": 3, "box": [1, 2, 3, 4], "probability": 0.93}]),
            )
        )
    return data


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """[readers]: the OS account running the tests may act as dr.ada (admin) and dr.bo; dr.cy is someone else's."""
    account = os_account()
    path = tmp_path / "triage.toml"
    path.write_text(
        f'[readers."dr.ada"]\nrole = "admin"\nos_accounts = ["{account}"]\n'
        f'[readers."dr.bo"]\nos_accounts = ["{account}"]\n'
        '[readers."dr.cy"]\nos_accounts = ["somebody-else"]\n',
        encoding="utf-8",
    )
    return path


def _stdin(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_read_from_the_command_line(
    index: Path, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--data-dir", str(index), "--config", str(config)]
    code, out, _ = _run(capsys, "studies", *d, "--json")
    rows = json.loads(out)
    assert [r["accession_number"] for r in rows] == ["ACC1", "ACC2"]  # the bleed first
    assert rows[0]["priority_class"] == "critical" and rows[0]["findings"][0]["label"].startswith("AI suggestion")

    assert _run(capsys, "case", "claim", "ACC1", "--user", "dr.ada", *d)[0] == 0
    code, out, _ = _run(capsys, "case", "show", "ACC1", "--user", "dr.ada", *d)
    assert code == 0 and "AI suggestion #7: bleed 0.93" in out and "why: bleed 0.93 >= 0.10" in out
    assert _run(capsys, "case", "feedback", "ACC1", "agree", "--finding", "7", "--user", "dr.ada", *d)[0] == 0
    assert _run(capsys, "case", "draft", "ACC1", "Acute haemorrhage.", "--user", "dr.ada", *d)[0] == 0
    _stdin(monkeypatch, "ada-signs-42")
    assert _run(capsys, "readers", "passwd", "--user", "dr.ada", "--password-stdin", *d)[0] == 0
    _stdin(monkeypatch, "ada-signs-42")
    code, out, _ = _run(capsys, "case", "sign", "1.2.3.1", "--user", "dr.ada", "--password-stdin", *d)
    assert code == 0 and "signed by dr.ada" in out

    # Signed: a second signature is an invalid transition, reported in one line.
    _stdin(monkeypatch, "ada-signs-42")
    code, _, err = _run(capsys, "case", "sign", "ACC1", "--user", "dr.ada", "--password-stdin", *d)
    assert code == 1 and err.startswith("triage: error:") and "Traceback" not in err
    # The AI cannot act, and nobody acts anonymously.
    code, _, err = _run(capsys, "case", "claim", "ACC2", "--user", "triage-ai", *d)
    assert code == 1 and "triage-ai" in err
    code, _, err = _run(capsys, "case", "claim", "ACC2", *d)  # the account may act as two readers: which?
    assert code == 1 and "--user" in err and "dr.ada, dr.bo" in err
    code, _, err = _run(capsys, "case", "claim", "NOPE", "--user", "dr.ada", *d)
    assert code == 1 and "no study" in err

    code, out, _ = _run(capsys, "case", "history", "ACC1", *d)
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert actions == ["claim", "view", "feedback", "draft", "sign"]
    (sign,) = [json.loads(line) for line in out.splitlines() if json.loads(line)["action"] == "sign"]
    assert (sign["detail"]["auth"], sign["detail"]["os_account"]) == ("password", os_account())
    # The chain holds the five study events and the password set. (Whether the fixture's finding rows match
    # the trail is the audit tests' concern: the fixture writes finding 7 without its inference event.)
    _, out, err = _run(capsys, "audit", "verify", *d)
    assert "audit trail intact" in out + err and "6 events" in out + err

    code, out, _ = _run(capsys, "monitor", *d, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["detectors"][0]["model_name"] == "bleed-ct"


def test_audit_export_filters_and_verify_names_the_broken_event(index: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(index)]
    for study in ("ACC1", "ACC2"):
        assert _run(capsys, "case", "claim", study, "--user", "dr.bo", "--config", str(config), *d)[0] == 0
    code, out, _ = _run(capsys, "audit", "export", *d, "--study", "1.2.3.2")
    assert code == 0 and [json.loads(x)["study_uid"] for x in out.splitlines()] == ["1.2.3.2"]
    code, out, _ = _run(capsys, "audit", "export", *d, "--since", "2999-01-01")
    assert code == 0 and out == ""
    code, _, err = _run(capsys, "audit", "export", *d, "--since", "yesterday")
    assert code == 2 and "--since" in err

    engine = make_engine(f"sqlite:///{index / 'triage.db'}")
    with engine.begin() as conn:
        conn.execute(AuditEvent.__table__.delete().where(AuditEvent.__table__.c.seq == 1))
        assert conn.execute(select(AuditEvent.__table__.c.seq)).scalars().all() == [2]
    code, _, err = _run(capsys, "audit", "verify", *d)
    assert code == 3 and "event 1" in err


def test_signing_asks_the_password_and_the_account_chooses_only_its_readers(
    index: Path, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--data-dir", str(index), "--config", str(config)]
    account = os_account()
    # --user outside the account's readers: one line naming the account and whom it may act as.
    code, _, err = _run(capsys, "case", "claim", "ACC1", "--user", "dr.cy", *d)
    assert code == 1 and err.strip() == f"triage: error: OS account {account} may not act as dr.cy; it may act as: dr.ada, dr.bo"
    # Without a [readers] table the account is its own reader: nobody else.
    code, _, err = _run(capsys, "case", "claim", "ACC1", "--user", "dr.ada", "--data-dir", str(index))
    assert code == 1 and f"OS account {account} may not act as dr.ada; it may act as: {account}" in err

    assert _run(capsys, "case", "claim", "ACC1", "--user", "dr.bo", *d)[0] == 0
    assert _run(capsys, "case", "draft", "ACC1", "No bleed.", "--user", "dr.bo", *d)[0] == 0
    _stdin(monkeypatch, "anything")
    code, _, err = _run(capsys, "case", "sign", "ACC1", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 1 and "dr.bo has no signing password yet" in err

    # The admin resets dr.bo's; dr.bo changes it, giving the current one; a wrong current one changes nothing.
    _stdin(monkeypatch, "first-bo-pw")
    code, out, _ = _run(capsys, "readers", "passwd", "dr.bo", "--user", "dr.ada", "--password-stdin", *d)
    assert code == 0 and out.strip() == "signing password reset for dr.bo by dr.ada"
    _stdin(monkeypatch, "wrong-current", "second-bo-pw")
    code, _, err = _run(capsys, "readers", "passwd", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 1 and err.strip() == "triage: error: wrong signing password for dr.bo"
    _stdin(monkeypatch, "first-bo-pw", "second-bo-pw")
    assert _run(capsys, "readers", "passwd", "--user", "dr.bo", "--password-stdin", *d)[0] == 0
    # Only an admin resets another reader's.
    _stdin(monkeypatch, "bo-sets-ada")
    code, _, err = _run(capsys, "readers", "passwd", "dr.ada", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 1 and "dr.bo may not set dr.ada's signing password" in err

    _stdin(monkeypatch, "first-bo-pw")  # the old one
    code, _, err = _run(capsys, "case", "sign", "ACC1", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 1 and err.count("\n") == 1 and "wrong signing password for dr.bo" in err and "Traceback" not in err
    _stdin(monkeypatch, "second-bo-pw")
    code, out, _ = _run(capsys, "case", "sign", "ACC1", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 0 and "signed by dr.bo" in out

    # amend asks again
    assert _run(capsys, "case", "claim", "ACC1", "--user", "dr.bo", *d)[0] == 0
    _stdin(monkeypatch, "nope-nope")
    code, _, err = _run(capsys, "case", "amend", "ACC1", "Addendum.", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 1 and "wrong signing password" in err
    _stdin(monkeypatch, "second-bo-pw")
    code, out, _ = _run(capsys, "case", "amend", "ACC1", "Addendum.", "--user", "dr.bo", "--password-stdin", *d)
    assert code == 0 and "amendment v2" in out

    code, out, _ = _run(capsys, "readers", "list", *d)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].startswith("dr.ada  role admin  auth password") and "no password set" in lines[0]
    assert lines[1].startswith("dr.bo  role radiologist  auth password") and "password set 2" in lines[1]
    assert "os accounts somebody-else" in lines[2]

    code, out, _ = _run(capsys, "audit", "export", *d)
    events = [json.loads(line) for line in out.splitlines()]
    sets = [e for e in events if e["action"] == "reader_password_set"]
    assert [(e["actor"], e["detail"]["reader"], e["detail"]["reset"]) for e in sets] == [
        ("dr.ada", "dr.bo", True),
        ("dr.bo", "dr.bo", False),
    ]
    assert not any("pw" in json.dumps(e) for e in sets)  # no secret in the trail
    refused = [e["detail"]["failures"] for e in events if e["action"] == "signature_refused"]
    assert refused == [1, 1, 1]  # wrong current, at signing, at amending: each success in between resets the count


def test_signing_needs_a_terminal_or_password_stdin(
    index: Path, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = ["--data-dir", str(index), "--config", str(config)]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    code, _, err = _run(capsys, "readers", "passwd", "--user", "dr.ada", *d)
    assert code == 1 and "--password-stdin" in err
