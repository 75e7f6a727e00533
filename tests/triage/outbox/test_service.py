"""The outbox: AI results and signed reports sent to a PACS that is a second
``triage serve`` on loopback (it indexes what it receives), a PACS that is
down and comes back, back-off, a restart, and the report only after signing.

Studies arrive over DICOM; their scoring is recorded with
``triage.flow.pipeline.record_result`` (the scoring worker's own call) with a
finding on the sample's bleed, so no detector runs here.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from pydicom import dcmread
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from detectors.base import Finding, ModelIdentity, Region
from detectors.routing import FindingKind
from dicom_io.results.ai_sr import parse_ai_sr
from dicom_io.results.report_sr import report_text
from dicom_io.send import find_dicom_files, replay
from tests.support import self_signed_cert
from triage.app.server import TriageServer
from triage.app.studies import format_table, item_json, results_line
from triage.bench.common import free_port
from triage.clock import utcnow
from triage.config import Settings
from triage.flow.completeness import complete_stable_series
from triage.flow.pipeline import claim_jobs, record_result, stored_instances
from triage.outbox.service import (
    OutboxSender,
    ResultKind,
    backoff_seconds,
    build_dataset,
    build_file,
    claim_due,
    enqueue_scored,
    object_uids,
    on_recorded_hook,
)
from triage.reading.identity import AuthMethod
from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential
from triage.store import audit
from triage.store.models import AuditEvent, Instance, Series, Study
from triage.store.tables import OUTBOX

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_studies"
HEAD = next(s for s in json.loads((SAMPLES / "manifest.json").read_text())["studies"] if s["folder"] == "05_head_ct")
AUDIT = AuditEvent.__table__
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
FAST = {"results.retry_min_seconds": 0.2, "results.retry_max_seconds": 0.8, "results.send_interval": 0.05}


def wait_for(condition: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def destination(port: int, name: str = "PACS") -> dict[str, Any]:
    return {"name": name, "ae_title": "TRIAGE", "host": "127.0.0.1", "port": port}


@pytest.fixture
def start(make_settings: Callable[..., Settings], tmp_path: Path):
    """``start(name, **overrides)``: a TriageServer on ``tmp_path/name`` (stopped at teardown)."""
    servers: list[TriageServer] = []

    def run(name: str, **overrides: Any) -> TriageServer:
        server = TriageServer(make_settings(data_dir=str(tmp_path / name), **overrides))
        server.start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


def receive_head_ct(server: TriageServer) -> str:
    """The sample head CT with a bleed, sent to ``server`` over DICOM; its Study UID."""
    files, _ = find_dicom_files([SAMPLES / "05_head_ct"])
    summary = replay(files, "127.0.0.1", server.port, calling_ae="MODALITY")
    assert summary.failed == 0, summary.failures[:2]
    return str(HEAD["study_uid"])


def record_scoring(server: TriageServer, probability: float = 0.93) -> Any:
    """Complete the study's series and record its scoring as the scoring worker does; the job."""
    engine, settings = server.engine, server.settings
    complete_stable_series(engine, settings.completeness, now=utcnow() + timedelta(hours=1))
    (job,) = claim_jobs(engine, "test-worker", 5, settings)
    truth = HEAD["findings"][0]
    region = Region(
        series_uid=HEAD["series_uid"],
        sop_instance_uid=truth["sop_instance_uids"][1],
        slice_index=15,
        slices=(14, 17),
        box=tuple(truth["box"]),
        probability=probability,
    )
    finding = Finding(
        kind=FindingKind.BLEED,
        series_uid=HEAD["series_uid"],
        probability=probability,
        operating_point=0.4,
        regions=(region,),
        model=ModelIdentity("bleed-ct", "1.0", "f" * 64),
        detector="bleed-ct",
    )
    score = SimpleNamespace(analysed=True, reason="head CT", failures=(), findings=(finding,))
    instances = stored_instances(engine, job.series_pk, settings.data_dir)
    assert record_result(engine, job, "test-worker", score, instances, "cpu", 0.5, settings.policy)
    return job


def outbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all()


def indexed(engine: Engine, sop_uid: str | None) -> Any:
    """The instance row (with its study UID) of ``sop_uid`` in an index, or None."""
    with engine.connect() as conn:
        return conn.execute(
            select(Instance.path, Instance.sop_class_uid, Study.study_uid)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(Instance.sop_instance_uid == sop_uid)
        ).first()


def test_a_scored_study_is_sent_to_the_pacs_and_indexed_there(start) -> None:
    pacs = start("pacs")
    source = start("triage", **{"results.destinations": [destination(pacs.port)], "results.key_images": True, **FAST})
    study_uid = receive_head_ct(source)
    assert outbox_rows(source.engine) == []  # nothing before the study is scored
    job = record_scoring(source)
    hook = on_recorded_hook(source.engine, source.settings, source.outbox.wake if source.outbox else None)
    hook(job)
    hook(job)  # the same scoring again: no second object

    rows = outbox_rows(source.engine)
    assert sorted(r.kind for r in rows) == ["ai_sr", "key_image"]
    assert {r.destination for r in rows} == {"PACS"}
    sent = wait_for(
        lambda: (
            [r for r in outbox_rows(source.engine) if r.status == "sent"]
            if all(r.status == "sent" for r in outbox_rows(source.engine))
            else None
        ),
        "both objects acknowledged",
    )
    by_kind = {r.kind: r for r in sent}
    assert all(r.attempts == 1 and r.last_error is None and r.sent_at is not None for r in sent)

    # The PACS indexed both into the same study; the SR reads back to the bleed on its slice.
    sr, key = indexed(pacs.engine, by_kind["ai_sr"].sop_instance_uid), indexed(pacs.engine, by_kind["key_image"].sop_instance_uid)
    assert (sr.sop_class_uid, sr.study_uid) == (COMPREHENSIVE_SR, study_uid)
    assert (key.sop_class_uid, key.study_uid) == (SECONDARY_CAPTURE, study_uid)
    (parsed,) = parse_ai_sr(pacs.settings.data_dir / sr.path)
    assert (parsed["kind"], parsed["probability"], parsed["at_or_above"]) == ("bleed", 0.93, True)
    assert parsed["referenced_sop_instance_uids"] == [HEAD["findings"][0]["sop_instance_uids"][1]]
    # Our copy, written durably under results/<study>/<sop>.dcm, is what the PACS got.
    ours = source.settings.data_dir / by_kind["ai_sr"].path
    assert by_kind["ai_sr"].path == f"results/{study_uid}/{by_kind['ai_sr'].sop_instance_uid}.dcm"
    assert dcmread(ours).SOPInstanceUID == by_kind["ai_sr"].sop_instance_uid
    assert not list(source.settings.data_dir.rglob("*.tmp"))

    # Each send is an audit event, and the chain is intact.
    with source.engine.connect() as conn:
        events = conn.execute(select(AUDIT.c.detail).where(AUDIT.c.action == "result_sent")).scalars().all()
    details = sorted((json.loads(e) for e in events), key=lambda d: d["kind"])
    assert [(d["kind"], d["destination"], d["attempts"]) for d in details] == [("ai_sr", "PACS", 1), ("key_image", "PACS", 1)]
    assert details[0]["sop_instance_uid"] == by_kind["ai_sr"].sop_instance_uid
    assert audit.verify(source.engine).ok

    # What `triage studies` shows.
    service = WorklistService(source.engine, source.settings)
    states = service.results(study_uid)
    assert [(s.kind, s.status, s.attempts) for s in states] == [("ai_sr", "sent", 1), ("key_image", "sent", 1)]
    items = service.items()
    results = service.results_by_study([i.study.study_uid for i in items])
    assert item_json(items[0], results[study_uid])["results"][0]["status"] == "sent"
    assert "results: ai_sr -> PACS sent; key_image -> PACS sent" in format_table(items, results=results)

    # The same scoring asked again makes no new SR.
    assert enqueue_scored(source.engine, source.settings, job.study_pk) == 0


def test_the_sr_waits_for_every_series_of_the_study(start) -> None:
    source = start("triage", **{"results.destinations": [destination(1)]})
    receive_head_ct(source)
    job = record_scoring(source)
    # A late instance reopens the series (its generation moves on): the study shows its old result
    # but is not fully scored, so nothing is queued until the new completion is scored.
    with source.engine.begin() as conn:
        conn.execute(update(Series.__table__).values(generation=Series.__table__.c.generation + 1))
    assert enqueue_scored(source.engine, source.settings, job.study_pk) == 0
    assert outbox_rows(source.engine) == []


def test_back_off_doubles_nothing_is_dropped_and_the_object_arrives_once_the_pacs_is_up(start) -> None:
    port = free_port()  # nothing listens here yet
    source = start(
        "triage", **{"results.destinations": [destination(port)], "results.retry_min_seconds": 5, "results.retry_max_seconds": 30}
    )
    assert source.outbox is not None
    source.outbox.stop()  # the test drives the sender with its own clock
    receive_head_ct(source)
    job = record_scoring(source)
    assert enqueue_scored(source.engine, source.settings, job.study_pk) == 1
    now = [datetime.now(UTC)]
    sender = OutboxSender(source.engine, source.settings, clock=lambda: now[0])

    delays = []
    for attempt in range(1, 6):
        assert sender.run_once() == 1
        (row,) = outbox_rows(source.engine)
        assert (row.status, row.attempts) == ("pending", attempt)
        assert row.last_error.startswith("connection refused")
        due = row.next_attempt_at.replace(tzinfo=UTC)
        delays.append((due - now[0]).total_seconds())
        now[0] = due - timedelta(seconds=0.5)
        assert sender.run_once() == 0  # not due yet
        now[0] = due
    assert delays == [5, 10, 20, 30, 30] == [backoff_seconds(a, 5, 30) for a in range(1, 6)]
    assert "ai_sr -> PACS pending (5 attempts: connection refused)" == results_line(
        WorklistService(source.engine, source.settings).results(HEAD["study_uid"])
    )

    pacs = start("pacs", **{"listener.port": port})
    assert sender.run_once() == 1
    (row,) = outbox_rows(source.engine)
    assert (row.status, row.attempts, row.last_error) == ("sent", 6, None)
    assert indexed(pacs.engine, row.sop_instance_uid).study_uid == HEAD["study_uid"]
    assert sender.run_once() == 0  # sent rows are never sent again


def test_a_restarted_server_sends_what_was_left_pending(start, make_settings, tmp_path: Path) -> None:
    port = free_port()
    overrides = {"results.destinations": [destination(port)], **FAST}
    source = start("triage", **overrides)
    receive_head_ct(source)
    hook = on_recorded_hook(source.engine, source.settings, source.outbox.wake if source.outbox else None)
    hook(record_scoring(source))
    wait_for(lambda: outbox_rows(source.engine)[0].attempts >= 2, "two failed attempts")
    source.stop()
    (row,) = outbox_rows(source.engine)
    assert row.status == "pending" and row.path is not None  # built once, kept

    pacs = start("pacs", **{"listener.port": port})
    restarted = TriageServer(make_settings(data_dir=str(tmp_path / "triage"), **overrides))
    restarted.start()
    try:
        wait_for(lambda: outbox_rows(restarted.engine)[0].status == "sent", "the SR sent after the restart")
    finally:
        restarted.stop()
    (after,) = outbox_rows(restarted.engine)
    assert after.sop_instance_uid == row.sop_instance_uid and after.attempts > row.attempts
    assert indexed(pacs.engine, row.sop_instance_uid) is not None


def test_a_sender_claim_is_exclusive_until_its_lease_runs_out(start) -> None:
    source = start("triage", **{"results.destinations": [destination(1, "A"), destination(2, "B")]})
    assert source.outbox is not None
    source.outbox.stop()
    receive_head_ct(source)
    job = record_scoring(source)
    assert enqueue_scored(source.engine, source.settings, job.study_pk) == 2  # one per destination
    now = utcnow()
    first = claim_due(source.engine, now, limit=1, lease_s=60)
    second = claim_due(source.engine, now, limit=5, lease_s=60)
    assert len(first) == 1 and len(second) == 1 and first[0].id != second[0].id
    assert claim_due(source.engine, now + timedelta(seconds=30)) == []
    assert len(claim_due(source.engine, now + timedelta(seconds=61))) == 2  # the senders died: due again
    # The two destinations get one object: one file, one SOP Instance UID.
    built = [build_file(source.engine, source.settings, r) for r in first + second]
    assert built[0] == built[1]


def _credential(service: WorklistService) -> SigningCredential:
    """dr.jones's credential as ``signing.authenticate`` returns it (signing itself is tested in tests/triage/reading)."""
    return SigningCredential(reader="dr.jones", method=AuthMethod.PASSWORD, os_account="jones", at=service.clock())


def _read_and_sign(service: WorklistService, study_uid: str, text: str, amend: bool = False) -> None:
    service.claim(study_uid, "dr.jones")
    if amend:
        service.amend(study_uid, "dr.jones", text, _credential(service))
    else:
        service.save_draft(study_uid, "dr.jones", text)
    service.sign(study_uid, "dr.jones", _credential(service))


def test_signing_queues_the_report_sr_and_nothing_goes_out_before(start) -> None:
    pacs = start("pacs")
    source = start("triage", **{"results.destinations": [destination(pacs.port)], **FAST})
    study_uid = receive_head_ct(source)
    service = WorklistService(source.engine, source.settings)
    service.claim(study_uid, "dr.jones")
    service.save_draft(study_uid, "dr.jones", "draft: maybe a bleed")
    assert outbox_rows(source.engine) == []  # a draft is never queued

    service.sign(study_uid, "dr.jones", _credential(service))
    (row,) = outbox_rows(source.engine)
    assert (row.kind, row.source_key) == ("report_sr", str(1))
    sent = wait_for(lambda: [r for r in outbox_rows(source.engine) if r.status == "sent"], "the report SR sent")
    report = indexed(pacs.engine, sent[0].sop_instance_uid)
    assert (report.sop_class_uid, report.study_uid) == (BASIC_TEXT_SR, study_uid)
    ds = dcmread(pacs.settings.data_dir / report.path)
    assert report_text(ds) == "draft: maybe a bleed"
    assert str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == "dr.jones^"

    # An amendment is a new report SR, the first its predecessor.
    _read_and_sign(service, study_uid, "Impression: intraparenchymal bleed, right.", amend=True)
    rows = wait_for(
        lambda: (r := outbox_rows(source.engine)) and len(r) == 2 and all(x.status == "sent" for x in r) and r, "the amended report SR sent"
    )
    amended = dcmread(pacs.settings.data_dir / indexed(pacs.engine, rows[1].sop_instance_uid).path)
    assert report_text(amended) == "Impression: intraparenchymal bleed, right." and amended.InstanceNumber == 2
    assert (
        amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == rows[0].sop_instance_uid
    )
    assert object_uids(ResultKind.REPORT_SR, study_uid, "1")[1] == rows[0].sop_instance_uid


def test_no_report_sr_when_export_is_off(start) -> None:
    source = start("triage", **{"results.destinations": [destination(1)], "results.report_export": "none"})
    study_uid = receive_head_ct(source)
    _read_and_sign(WorklistService(source.engine, source.settings), study_uid, "normal")
    assert outbox_rows(source.engine) == []


def test_a_row_whose_object_cannot_be_built_stays_pending_with_the_reason(start) -> None:
    source = start("triage", **{"results.destinations": [destination(1)]})
    assert source.outbox is not None
    source.outbox.stop()
    receive_head_ct(source)
    job = record_scoring(source)
    enqueue_scored(source.engine, source.settings, job.study_pk)
    # A key image of a finding the index does not have: its object cannot be built.
    with source.engine.begin() as conn:
        conn.execute(update(OUTBOX).values(kind="key_image", source_key="x#finding-999"))
    sender = OutboxSender(source.engine, source.settings)
    assert sender.run_once() == 1
    (row,) = outbox_rows(source.engine)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error == "cannot build: AI finding 999 is not in the index"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_results_go_over_dicom_tls_to_a_tls_pacs(start, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    pacs = start("pacs", **{"listener.tls.cert": str(cert), "listener.tls.key": str(key), "listener.tls.ca": str(cert)})
    # Our client certificate: the TLS PACS requires one (the same self-signed pair).
    tls = {"tls": True, "ca": str(cert), "cert": str(cert), "key": str(key), "server_name": "localhost"}
    source = start("triage", **{"results.destinations": [destination(pacs.port) | tls], **FAST})
    receive_head_ct(source)
    job = record_scoring(source)
    on_recorded_hook(source.engine, source.settings, source.outbox.wake if source.outbox else None)(job)
    (row,) = wait_for(lambda: [r for r in outbox_rows(source.engine) if r.status == "sent"] or None, "the SR over TLS")
    assert indexed(pacs.engine, row.sop_instance_uid) is not None


def test_a_tls_destination_without_its_files_is_a_config_error(make_settings) -> None:
    from triage.errors import ConfigError

    with pytest.raises(ConfigError, match="results.destinations.*no such file"):
        make_settings(**{"results.destinations": [destination(104) | {"tls": True, "ca": "/nonexistent/ca.pem"}]})


def test_the_ai_sr_is_built_on_the_site_clock(start) -> None:
    # New York: a non-zero offset whatever the season, so a UTC-stamped SR could not pass.
    source = start("triage", **{"results.destinations": [destination(1)], "site.timezone": "America/New_York"})
    receive_head_ct(source)
    job = record_scoring(source)
    assert enqueue_scored(source.engine, source.settings, job.study_pk) == 1
    (row,) = outbox_rows(source.engine)
    before = utcnow()
    ds = build_dataset(source.engine, source.settings, ResultKind.AI_SR, job.study_pk, row.source_key)
    offset = before.astimezone(ZoneInfo("America/New_York")).strftime("%z")
    assert ds.TimezoneOffsetFromUTC == offset and offset in ("-0500", "-0400")
    made = datetime.strptime(f"{ds.ContentDate}{str(ds.ContentTime).split('.')[0]}{offset}", "%Y%m%d%H%M%S%z")
    assert before - timedelta(seconds=1) <= made <= utcnow()
    header = dcmread(sorted((SAMPLES / "05_head_ct").glob("*.dcm"))[0], stop_before_pixels=True)
    assert (ds.StudyDate, ds.StudyTime) == (header.StudyDate, header.StudyTime)  # the study's own, as received
