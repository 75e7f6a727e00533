"""Scoring jobs: leases, retries, failures, and real scoring of the sample
studies with the shipped detectors, on a real SQLite file."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select, update

from dicom_io.store import InstanceStore
from triage.clock import utcnow
from triage.config import Settings, load_settings
from triage.flow.completeness import complete_stable_series
from triage.flow.pipeline import ScoringWorker, claim_jobs, record_failure, record_result, stored_instances, study_ai_state
from triage.flow.scoring import SeriesScore
from triage.store import audit
from triage.store.db import make_engine
from triage.store.index import SqlIndex
from triage.store.models import AIFinding, AuditEvent, Instance
from triage.store.recovery import recover
from triage.store.tables import JOB, RESULT, SERIES, STUDY

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_studies"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = {"data_dir": str(tmp_path / "data"), "detectors.device": "cpu", "pipeline.poll_interval": 0.05}
    return load_settings(overrides={**base, **overrides}, environ={})


def _place(folders: list[str], data_dir: Path) -> None:
    """Put sample studies into the store layout, as the listener would have written them."""
    store = InstanceStore(data_dir)
    for folder in folders:
        for path in sorted((SAMPLES / folder).rglob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True)
            target = data_dir / store.relpath_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


@pytest.fixture
def received(tmp_path: Path) -> Callable[..., tuple[Settings, Any]]:
    """Index sample studies (by recovery) and complete their series: one pending job per series."""

    def make(folders: list[str], **overrides: Any) -> tuple[Settings, Any]:
        settings = _settings(tmp_path, **overrides)
        _place(folders, settings.data_dir)
        engine = make_engine(settings.db_url)
        recover(InstanceStore(settings.data_dir), SqlIndex(engine, data_dir=settings.data_dir), engine)
        complete_stable_series(engine, settings.completeness, now=utcnow() + timedelta(hours=1))
        return settings, engine

    return make


@pytest.fixture(scope="module")
def shipped() -> Iterator[tuple[Any, Any]]:
    from detectors.engine import InferenceEngine
    from detectors.registry import load_detectors

    with InferenceEngine("cpu", max_batch=8, max_wait_ms=5) as engine:
        yield load_detectors(device="cpu"), engine


def _run_until_done(worker: ScoringWorker, engine: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    worker.start()
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                left = conn.execute(select(JOB.c.id).where(JOB.c.status.in_(["pending", "running"]))).all()
            if not left:
                return
            time.sleep(0.1)
        raise AssertionError("scoring jobs did not finish")
    finally:
        worker.stop()


def _study(engine: Any, folder: str) -> Any:
    uid = json.loads((SAMPLES / "manifest.json").read_text())
    study_uid = next(s["study_uid"] for s in uid["studies"] if s["folder"] == folder)
    with engine.connect() as conn:
        return conn.execute(select(STUDY).where(STUDY.c.study_uid == study_uid)).mappings().one()


# -- the queue -------------------------------------------------------------------------


def test_claims_are_exclusive_and_a_lapsed_lease_is_claimed_again(received) -> None:
    settings, engine = received(["00_head_ct", "05_head_ct", "03_extremity_xr"], **{"pipeline.lease_seconds": 60})
    now = utcnow()
    first = claim_jobs(engine, "w1", 2, settings, now)
    second = claim_jobs(engine, "w2", 5, settings, now)
    assert len(first) == 2 and len(second) == 1
    assert not {j.id for j in first} & {j.id for j in second}
    assert claim_jobs(engine, "w3", 5, settings, now + timedelta(seconds=30)) == []  # leases still held

    taken = claim_jobs(engine, "w3", 5, settings, now + timedelta(seconds=61))  # w1 and w2 "crashed"
    assert sorted(j.id for j in taken) == sorted(j.id for j in first + second)
    assert all(j.attempts == 2 for j in taken)
    # The first worker comes back late: its result is not recorded over the new owner's.
    late = SeriesScore(first[0].series_uid, "CT", "", 1, "head CT", True)
    assert not record_result(engine, first[0], "w1", late, [], "cpu", 0.1, settings.policy)
    with engine.connect() as conn:
        assert conn.execute(select(RESULT)).all() == []


def test_a_job_that_keeps_failing_ends_as_ai_failed_with_its_reason(received) -> None:
    settings, engine = received(["00_head_ct"], **{"pipeline.max_attempts": 2})
    (job,) = claim_jobs(engine, "w1", 5, settings)
    assert not record_failure(engine, job, "w1", "RuntimeError: out of memory", 2, settings.policy)
    with engine.connect() as conn:
        assert conn.execute(select(JOB.c.status, JOB.c.error)).one() == ("pending", "RuntimeError: out of memory")
    (job,) = claim_jobs(engine, "w1", 5, settings)
    assert job.attempts == 2
    assert record_failure(engine, job, "w1", "RuntimeError: out of memory", 2, settings.policy)
    study = _study(engine, "00_head_ct")
    assert study["ai_status"] == "failed" and study["ai_reason"] == "RuntimeError: out of memory"
    with engine.connect() as conn:
        assert conn.execute(select(JOB.c.status)).scalar_one() == "failed"
        actions = conn.execute(select(AuditEvent.action)).scalars().all()
    assert "inference_failed" in actions
    assert audit.verify(engine).ok


def test_a_lease_that_runs_out_on_the_last_attempt_is_recorded_as_failed(received) -> None:
    settings, engine = received(
        ["03_extremity_xr"], **{"pipeline.max_attempts": 1, "pipeline.lease_seconds": 10, "pipeline.heartbeat_seconds": 5}
    )
    now = utcnow()
    assert len(claim_jobs(engine, "w1", 5, settings, now)) == 1
    assert claim_jobs(engine, "w2", 5, settings, now + timedelta(seconds=11)) == []
    study = _study(engine, "03_extremity_xr")
    assert study["ai_status"] == "failed"
    assert "did not finish in 1 attempts" in study["ai_reason"]


@pytest.mark.parametrize(
    ("results", "waiting", "expected"),
    [
        ([], 1, ("pending", None)),
        ([dict(analysed=False, reason="not analysed: abdomen", failures="[]", has_findings=False)], 0, ("not_analysed", "abdomen")),
        (
            [dict(analysed=False, reason="not analysed: SR", failures="[]", has_findings=False)],
            1,
            ("pending", "1 series still being scored"),
        ),
        ([dict(analysed=True, reason="head CT", failures="[]", has_findings=True)], 0, ("scored", None)),
        (
            [dict(analysed=True, reason="head CT", failures='["pixel data unreadable"]', has_findings=False)],
            0,
            ("failed", "pixel data unreadable"),
        ),
        (
            [
                dict(analysed=True, reason="head CT", failures="[]", has_findings=True),
                dict(analysed=True, reason="CR", failures='["bad image"]', has_findings=False),
            ],
            0,
            ("partial", "bad image"),
        ),
    ],
)
def test_study_ai_state(results: list[dict], waiting: int, expected: tuple[str, str | None]) -> None:
    from types import SimpleNamespace

    status, reason = study_ai_state([SimpleNamespace(**r) for r in results], waiting)
    assert (status.value, reason) == expected


# -- real scoring ------------------------------------------------------------------------


def test_the_worker_scores_sample_studies_and_ranks_them(received, shipped) -> None:
    detectors, inference = shipped
    folders = ["00_head_ct", "05_head_ct", "08_extremity_xr", "09_abdomen_ct"]
    settings, engine = received(folders)
    worker = ScoringWorker(engine, settings, detectors=detectors, inference=inference, worker_id="test")
    _run_until_done(worker, engine)

    bleed, normal, fracture, abdomen = (_study(engine, f) for f in ("05_head_ct", "00_head_ct", "08_extremity_xr", "09_abdomen_ct"))
    assert bleed["ai_status"] == "scored" and bleed["priority_class"] == "critical"
    assert fracture["ai_status"] == "scored" and fracture["priority_class"] in ("critical", "urgent")
    assert normal["ai_status"] == "scored" and normal["priority_class"] == "routine"
    assert abdomen["ai_status"] == "not_analysed" and "no detector" in abdomen["ai_reason"]
    with engine.connect() as conn:
        findings = conn.execute(select(AIFinding).where(AIFinding.study_pk == bleed["id"])).all()
        events = (
            conn.execute(select(AuditEvent.detail).where(AuditEvent.study_uid == bleed["study_uid"], AuditEvent.action == "inference"))
            .scalars()
            .all()
        )
        instances = conn.execute(select(Instance.sop_instance_uid, Instance.sha256)).all()
    (finding,) = findings
    assert finding.kind == "bleed" and finding.urgent and finding.model_name == "bleed-ct"
    assert json.loads(finding.regions)  # where the AI saw it
    (detail,) = [json.loads(e) for e in events]
    hashes = dict(instances)
    assert len(detail["inputs"]) == 24
    assert all(hashes[i["sop_instance_uid"]] == i["sha256"] for i in detail["inputs"])
    assert detail["outputs"][0]["kind"] == "bleed" and detail["device"] == "cpu"
    assert "bleed-ct" in detail["models"][0]
    assert audit.verify(engine).ok


def test_a_series_with_unreadable_pixels_stays_listed_as_ai_failed(received, shipped) -> None:
    detectors, inference = shipped
    settings, engine = received(["00_head_ct"])
    (path,) = {i.path for i in stored_instances(engine, 1, settings.data_dir)[:1]}
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated pixel data, after it was indexed
    worker = ScoringWorker(engine, settings, detectors=detectors, inference=inference, worker_id="test")
    _run_until_done(worker, engine)
    study = _study(engine, "00_head_ct")
    assert study["ai_status"] == "failed"
    assert study["ai_reason"]
    with engine.connect() as conn:
        assert conn.execute(select(JOB.c.status)).scalar_one() == "done"  # a data problem: not retried
        (failures,) = conn.execute(select(RESULT.c.failures)).one()
    assert json.loads(failures)


def test_a_rescored_series_replaces_its_earlier_findings(received, shipped) -> None:
    detectors, inference = shipped
    settings, engine = received(["05_head_ct"])
    worker = ScoringWorker(engine, settings, detectors=detectors, inference=inference, worker_id="a")
    _run_until_done(worker, engine)
    # A late instance reopened the series and it completed again: a new generation, a new job.
    with engine.begin() as conn:
        conn.execute(update(SERIES).values(generation=1, status="receiving"))
    complete_stable_series(engine, settings.completeness, now=utcnow() + timedelta(hours=2))
    worker = ScoringWorker(engine, settings, detectors=detectors, inference=inference, worker_id="b")
    _run_until_done(worker, engine)
    from triage.flow.cases import current_findings

    with engine.connect() as conn:
        assert conn.execute(select(RESULT.c.generation).order_by(RESULT.c.generation)).scalars().all() == [0, 1]
        current = current_findings(conn)
    (rows,) = current.values()
    assert len(rows) == 1  # only generation 1's finding counts


def test_the_heartbeat_keeps_a_long_job_from_being_taken_over(received) -> None:
    from triage.flow.pipeline import renew_leases

    settings, engine = received(["00_head_ct"], **{"pipeline.lease_seconds": 60, "pipeline.heartbeat_seconds": 10})
    now = utcnow()
    (job,) = claim_jobs(engine, "w1", 5, settings, now)
    assert renew_leases(engine, "w1", [job.id], 60, now + timedelta(seconds=50)) == 1
    assert claim_jobs(engine, "w2", 5, settings, now + timedelta(seconds=70)) == []  # renewed: still w1's
    assert renew_leases(engine, "w2", [job.id], 60, now + timedelta(seconds=80)) == 0  # not w2's to renew
    assert len(claim_jobs(engine, "w2", 5, settings, now + timedelta(seconds=111))) == 1  # w1 stopped beating
