"""The whole pipeline: ``triage serve`` as a subprocess, the sample studies
replayed over DICOM, scored and ranked with reasons; a radiologist's read
through the worklist service; the audit trail verified, then tampered with.

One server run serves the module's tests (scoring the samples is the slow part).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_io.send import find_dicom_files, replay
from tests.e2e.support import LOCALHOST, ServeFactory, run_triage, wait_for
from triage.config import load_settings
from triage.reading import identity, signing
from triage.reading.service import WorklistService
from triage.store.db import make_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_studies"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())
# The shipped detectors that pass the sample-studies test of issue 4; the nodule
# detectors flag some negative chest studies (their xfail in test_shipped_detectors).
RELIABLE_KINDS = {"head_ct", "extremity_xr"}
# Order priority and context points off: these tests look at what the AI adds.
AI_ONLY = {
    "TRIAGE_POLICY__ORDER_POINTS": json.dumps({"STAT": 0, "HIGH": 0, "MEDIUM": 0, "ROUTINE": 0, "LOW": 0}),
    "TRIAGE_POLICY__EMERGENCY_POINTS": "0",
}


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """Serve, replay the samples, wait until every study has its AI result; the data dir and `triage studies --json`."""
    root = tmp_path_factory.mktemp("pipeline")
    factory = ServeFactory(root)
    data = root / "data"
    server = factory.start(data, env={"TRIAGE_COMPLETENESS__STABLE_AFTER": "1", **AI_ONLY})
    files, _ = find_dicom_files([SAMPLES])
    summary = replay(files, LOCALHOST, server.port, calling_ae="E2EPACS")
    assert summary.failed == 0, summary.failures[:3]

    def all_scored() -> list[dict[str, Any]] | None:
        done = run_triage("studies", "--data-dir", str(data), "--json", env=AI_ONLY)
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        if len(rows) == len(MANIFEST["studies"]) and all(r["ai_status"] != "pending" for r in rows):
            return rows
        return None

    rows = wait_for(all_scored, timeout=240, what="every sample study scored", interval=1.0, abort=server.died)
    yield data, rows
    problems = factory.stop_all()
    assert not problems, problems


def _truth() -> dict[str, dict[str, Any]]:
    return {s["study_uid"]: s for s in MANIFEST["studies"]}


def test_positive_studies_rank_above_negative_ones_with_reasons(ranked) -> None:
    _, rows = ranked
    truth = _truth()
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    rank = {r["study_uid"]: r["rank"] for r in rows}
    positives = [uid for uid, s in truth.items() if s["present"] and s["kind"] in RELIABLE_KINDS]
    negatives = [uid for uid, s in truth.items() if not s["present"] and s["kind"] in RELIABLE_KINDS | {"abdomen_ct"}]
    assert positives and negatives
    assert max(rank[u] for u in positives) < min(rank[u] for u in negatives)
    for row in rows:
        study = truth[row["study_uid"]]
        if study["present"] and study["kind"] in RELIABLE_KINDS:
            kind = study["findings"][0]["kind"]
            assert any(r.startswith(f"{kind} ") and "operating point" in r for r in row["reasons"]), row["reasons"]
            assert row["priority_class"] in ("critical", "urgent")
            assert any(f["kind"] == kind and f["urgent"] and f["regions"] for f in row["findings"])
        if study["kind"] == "abdomen_ct":  # no detector: ranked all the same, and it says why
            assert row["ai_status"] == "not_analysed"
            assert any(r.startswith("not analysed by AI") for r in row["reasons"])


@pytest.mark.xfail(strict=True, reason="nodule-ct misses its targets on the sample chest CTs (see the README's Measured)")
def test_every_positive_sample_ranks_above_every_negative_one(ranked) -> None:
    _, rows = ranked
    truth = _truth()
    rank = {r["study_uid"]: r["rank"] for r in rows}
    positives = [rank[u] for u, s in truth.items() if s["present"]]
    negatives = [rank[u] for u, s in truth.items() if not s["present"]]
    assert max(positives) < min(negatives)


def test_a_read_is_audited_and_the_trail_detects_tampering(ranked) -> None:
    data, rows = ranked
    top = rows[0]["study_uid"]
    settings = load_settings(overrides={"data_dir": str(data)}, environ={})
    worklist = WorklistService(make_engine(settings.db_url), settings)
    worklist.claim(top, "dr.ada")
    view = worklist.open(top, "dr.ada")
    worklist.record_impression(top, "dr.ada", "Acute parenchymal haemorrhage.", kinds=["bleed"])
    worklist.feedback(top, "dr.ada", "agree", finding_id=view.findings[0].id)
    worklist.save_draft(top, "dr.ada", "Acute right parenchymal haemorrhage, 2 cm.")
    # Signing asks for the reader's second identification component: a signing password set here.
    ada = identity.Reader("dr.ada", "Dr Ada", identity.Role.RADIOLOGIST, identity.AuthMethod.PASSWORD, ("e2e",))
    signing.set_password(worklist.engine, ada, "e2e-signing-pw", by=ada, by_account="e2e")
    worklist.sign(top, "dr.ada", signing.authenticate(worklist.engine, ada, "e2e", "e2e-signing-pw"))

    verified = run_triage("audit", "verify", "--data-dir", str(data))
    assert verified.returncode == 0, verified.stderr
    exported = run_triage("audit", "export", "--data-dir", str(data), "--study", top)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    actions = [e["action"] for e in events]
    for action in (
        "instances_received",
        "series_complete",
        "inference",
        "rank_changed",
        "claim",
        "view",
        "impression",
        "feedback",
        "draft",
        "sign",
    ):
        assert action in actions, f"no {action} event for the study"
    received = next(e for e in events if e["action"] == "instances_received")
    assert received["actor"] == "listener" and received["detail"]["calling_ae"] == "E2EPACS"
    inference = next(e for e in events if e["action"] == "inference")
    assert inference["actor"] == "triage-ai" and inference["detail"]["inputs"][0]["sha256"]
    assert [e["actor"] for e in events if e["action"] == "sign"] == ["dr.ada"]

    # An edit of one event's content is found, and named.
    victim = inference["seq"]
    with sqlite3.connect(data / "triage.db") as conn:
        conn.execute("UPDATE audit_event SET detail = replace(detail, 'triage-ai', 'someone') WHERE seq = ?", (victim,))
        conn.execute("UPDATE audit_event SET actor = 'someone' WHERE seq = ?", (victim,))
    broken = run_triage("audit", "verify", "--data-dir", str(data))
    assert broken.returncode == 3
    assert f"event {victim}" in broken.stderr
