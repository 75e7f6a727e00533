"""``triage case ...`` and ``triage studies``/``audit``/``monitor`` on a real
SQLite index holding a study with an AI finding."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from triage.app.cli import main
from triage.clock import utcnow
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


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_read_from_the_command_line(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(index)]
    code, out, _ = _run(capsys, "studies", *d, "--json")
    rows = json.loads(out)
    assert [r["accession_number"] for r in rows] == ["ACC1", "ACC2"]  # the bleed first
    assert rows[0]["priority_class"] == "critical" and rows[0]["findings"][0]["label"].startswith("AI suggestion")

    assert _run(capsys, "case", "claim", "ACC1", "--user", "dr.ada", *d)[0] == 0
    code, out, _ = _run(capsys, "case", "show", "ACC1", "--user", "dr.ada", *d)
    assert code == 0 and "AI suggestion #7: bleed 0.93" in out and "why: bleed 0.93 >= 0.10" in out
    assert _run(capsys, "case", "feedback", "ACC1", "agree", "--finding", "7", "--user", "dr.ada", *d)[0] == 0
    assert _run(capsys, "case", "draft", "ACC1", "Acute haemorrhage.", "--user", "dr.ada", *d)[0] == 0
    code, out, _ = _run(capsys, "case", "sign", "1.2.3.1", "--user", "dr.ada", *d)
    assert code == 0 and "signed by dr.ada" in out

    # Signed: a second signature is an invalid transition, reported in one line.
    code, _, err = _run(capsys, "case", "sign", "ACC1", "--user", "dr.ada", *d)
    assert code == 1 and err.startswith("triage: error:") and "Traceback" not in err
    # The AI cannot act, and nobody acts anonymously.
    code, _, err = _run(capsys, "case", "claim", "ACC2", "--user", "triage-ai", *d)
    assert code == 1 and "triage-ai" in err
    code, _, err = _run(capsys, "case", "claim", "ACC2", *d)
    assert code == 1 and "--user" in err
    code, _, err = _run(capsys, "case", "claim", "NOPE", "--user", "dr.ada", *d)
    assert code == 1 and "no study" in err

    code, out, _ = _run(capsys, "case", "history", "ACC1", *d)
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert actions == ["claim", "view", "feedback", "draft", "sign"]
    assert _run(capsys, "audit", "verify", *d)[1].startswith("audit trail intact: 5 events")

    code, out, _ = _run(capsys, "monitor", *d, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["detectors"][0]["model_name"] == "bleed-ct"


def test_audit_export_filters_and_verify_names_the_broken_event(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(index)]
    for study in ("ACC1", "ACC2"):
        _run(capsys, "case", "claim", study, "--user", "dr.bo", *d)
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
