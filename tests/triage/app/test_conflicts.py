"""A conflicting re-send over a real association: the same SOP Instance UID with
another patient ID is set aside, audited once, flagged on the study, and shown by
``triage case show``, ``triage studies`` and ``triage case conflicts``."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_io.writer import StudyMeta
from tests.scu import store
from triage.app.cli import main
from triage.store import audit
from triage.store.conflicts import identity_differences


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def _corrected_copy(path: Path, out: Path, **attrs: str) -> Path:
    """The same instance (same SOP Instance UID) with ``attrs`` changed: a "corrected" re-send."""
    ds = dcmread(path)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(out)
    return out


def _conflict_events(engine) -> list[dict]:
    return [e for e in audit.export(engine) if e["action"] == audit.Action.INSTANCE_CONFLICT.value]


@pytest.mark.parametrize("processes", [1, 2], ids=["in-process", "listener-processes"])
def test_conflicting_resend_is_audited_flagged_and_listed(
    make_server, make_ct_series, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    server = make_server(**{"listener.processes": processes})
    meta = StudyMeta(patient_id="P1", accession_number="ACC9")
    [first, second] = make_ct_series(slices=2, size=16, meta=meta)
    other = _corrected_copy(first, tmp_path / "other.dcm", PatientID="P2")

    assert store(server.port, [first, second]) == [0, 0]
    assert store(server.port, [other], calling_ae="RESENDER") == [0]  # acknowledged: nothing received is lost

    # One audit event, by the listener, naming both versions, the sender and what differs.
    [event] = _conflict_events(server.engine)
    detail = event["detail"]
    sop = str(dcmread(first, stop_before_pixels=True).SOPInstanceUID)
    assert event["actor"] == audit.LISTENER_ACTOR and event["study_uid"] == meta.study_uid
    assert detail["sop_instance_uid"] == sop and detail["series_uid"] == meta.series_uid
    assert detail["differences"] == {"patient_id": ["P1", "P2"]}
    assert detail["calling_ae"] == "RESENDER" and detail["peer"].startswith("127.0.0.1")
    assert detail["sha256"] != detail["kept_sha256"]
    kept_aside = server.settings.data_dir / detail["kept_aside"]
    assert kept_aside.is_file() and dcmread(kept_aside).PatientID == "P2"
    assert audit.verify(server.engine).ok

    d = ["--data-dir", str(server.settings.data_dir)]
    code, out = _run(capsys, "studies", *d, "--json")
    [row] = json.loads(out)
    assert code == 0 and row["conflicts"] == 1 and row["patient_id"] == "P1"  # the indexed version stays
    code, out = _run(capsys, "studies", *d)
    assert "CONFLICT: 1 version re-sent" in out and f"triage case conflicts {meta.study_uid}" in out

    # The reader is this OS account's own (no [readers] table): as `triage case` resolves it.
    monkeypatch.setenv("TRIAGE_USER", pwd.getpwuid(os.geteuid()).pw_name)
    code, out = _run(capsys, "case", "show", "ACC9", *d)
    assert code == 0 and "CONFLICT: 1 version" in out

    code, out = _run(capsys, "case", "conflicts", "ACC9", *d, "--json")
    doc = json.loads(out)
    [version] = doc["conflicts"]
    assert doc["study_uid"] == meta.study_uid and version["sop_instance_uid"] == sop
    assert version["calling_ae"] == "RESENDER" and version["path"] == detail["kept_aside"]
    assert version["differences"] == {"patient_id": {"kept": "P1", "set_aside": "P2"}}
    code, out = _run(capsys, "case", "conflicts", meta.study_uid, *d)
    assert code == 0
    assert f"{sop}  received " in out and "from RESENDER@127.0.0.1" in out and detail["sha256"][:12] in out
    assert "patient ID: kept P1, set aside P2" in out and detail["kept_aside"] in out


def test_the_same_conflicting_bytes_twice_are_one_conflict(make_server, make_ct_series, tmp_path: Path) -> None:
    server = make_server()
    meta = StudyMeta(patient_id="P1", patient_name="DOE^JANE")
    [first] = make_ct_series(slices=1, size=16, meta=meta)
    other = _corrected_copy(first, tmp_path / "other.dcm", PatientID="P2", PatientName="ROE^JANE")
    third = _corrected_copy(first, tmp_path / "third.dcm", PatientID="P3")

    assert store(server.port, [first, other]) == [0, 0]
    assert store(server.port, [other]) == [0]  # the same set-aside bytes again: nothing new
    assert len(_conflict_events(server.engine)) == 1
    with server.engine.connect() as conn:
        assert conn.exec_driver_sql("select conflicts from study").all() == [(1,)]
        assert conn.exec_driver_sql("select conflicts from instance").all() == [(1,)]

    assert store(server.port, [third]) == [0]  # other bytes again: a second conflict
    events = _conflict_events(server.engine)
    assert [e["detail"]["differences"] for e in events] == [
        {"patient_id": ["P1", "P2"], "patient_name": ["DOE^JANE", "ROE^JANE"]},
        {"patient_id": ["P1", "P3"]},
    ]
    with server.engine.connect() as conn:
        assert conn.exec_driver_sql("select conflicts from study").all() == [(2,)]
    assert len(list((server.settings.data_dir / "conflicts").rglob("*.dcm"))) == 2


def test_identity_differences_treats_absent_and_empty_alike(make_ct_series) -> None:
    from dicom_io.headers import read_header

    [path] = make_ct_series(slices=1, size=16, meta=StudyMeta(patient_id="P1", accession_number="A1"))
    header = read_header(path)
    kept = {
        "patient_id": "P1",
        "patient_name": header.patient_name,
        "patient_birth_date": "",
        "patient_sex": header.patient_sex,
        "accession_number": "A0",
        "study_uid": header.study_uid,
        "series_uid": "1.2.3",
    }
    assert identity_differences(kept, header) == {"accession_number": ["A0", "A1"], "series_uid": ["1.2.3", header.series_uid]}
