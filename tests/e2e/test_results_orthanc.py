"""The AI's results back to a real PACS: Orthanc (Debian's build) sends a
sample study to ``triage serve``, which scores it with the shipped detectors
and C-STOREs its TID 1500 SR (and a key image) back into the same study in
Orthanc; with Orthanc stopped while the result is pending, it arrives once
Orthanc is back.

One ``triage serve`` and one Orthanc (fixed ports, so it can be restarted on
them) serve the module: loading the detectors is the slow part.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicom_io.results.ai_sr import parse_ai_sr
from tests.e2e.support import LOCALHOST, ServeFactory, ServeProcess, clean_env, free_port, require_binary, wait_for

from .test_orthanc import ORTHANC, Orthanc, stop_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.external, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_studies"
MANIFEST = {s["folder"]: s for s in json.loads((SAMPLES / "manifest.json").read_text())["studies"]}
SCORED_TIMEOUT = 300.0  # a cold `triage serve` loads torch and the detectors on a 2-core runner

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Pacs:
    """Orthanc on fixed ports, restartable on them with its storage kept."""

    root: Path
    http_port: int
    dicom_port: int
    triage_port: int
    orthanc: Orthanc | None = None

    def start(self) -> Orthanc:
        config = {
            "Name": "triage-results-e2e",
            "StorageDirectory": str(self.root / "orthanc-storage"),
            "IndexDirectory": str(self.root / "orthanc-index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"triage": ["TRIAGE", LOCALHOST, self.triage_port]},
            "Plugins": [],
            "SaveJobs": False,
            "DicomScuTimeout": 30,
        }
        config_path = self.root / "orthanc-results.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = self.root / "orthanc-results.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [require_binary(ORTHANC), str(config_path)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        orthanc = Orthanc(self.http_port, proc, log_path)
        wait_for(
            lambda: orthanc.request("GET", "/system", timeout=5).get("DicomAet") == "ORTHANC",
            timeout=60,
            interval=0.2,
            what=f"Orthanc's REST API on port {self.http_port}",
            ignore=(urllib.error.URLError, ConnectionError, TimeoutError),
            abort=orthanc.died,
        )
        self.orthanc = orthanc
        return orthanc

    def stop(self) -> None:
        if self.orthanc is not None:
            stop_orthanc(self.orthanc)
            self.orthanc = None

    @property
    def api(self) -> Orthanc:
        assert self.orthanc is not None, "Orthanc is not running"
        return self.orthanc

    def download(self, instance_id: str) -> bytes:
        with _http.open(self.api.url(f"/instances/{instance_id}/file"), timeout=30) as resp:
            return resp.read()

    def push_to_triage(self, folder: str) -> str:
        """Upload a sample study into Orthanc, then have Orthanc C-STORE it to triage; its Study UID."""
        ids = []
        for path in sorted((SAMPLES / folder).glob("*.dcm")):
            answer = self.api.request("POST", "/instances", path.read_bytes())
            assert answer["Status"] in ("Success", "AlreadyStored"), answer
            ids.append(answer["ID"])
        job = self.api.request(
            "POST", "/modalities/triage/store", json.dumps({"Resources": ids, "Synchronous": True}).encode(), timeout=120
        )
        assert (job["InstancesCount"], job["FailedInstancesCount"]) == (len(ids), 0), job
        return str(MANIFEST[folder]["study_uid"])

    def series_of(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's series in Orthanc (with their instance ids), or [] while it has none."""
        found = self.api.request("POST", "/tools/lookup", study_uid.encode())
        study = next((f for f in found if f["Type"] == "Study"), None)
        if study is None:
            return []
        return list(self.api.request("GET", f"/studies/{study['ID']}/series"))

    def sr_of(self, study_uid: str) -> dict[str, Any] | None:
        return next((s for s in self.series_of(study_uid) if s["MainDicomTags"].get("Modality") == "SR"), None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pacs, ServeProcess]]:
    require_binary(ORTHANC)
    root = tmp_path_factory.mktemp("results-orthanc")
    http_port, dicom_port = free_port(), free_port()
    factory = ServeFactory(root)
    destination = {"name": "ORTHANC", "ae_title": "ORTHANC", "host": LOCALHOST, "port": dicom_port}
    server = factory.start(
        root / "data",
        env={
            "TRIAGE_COMPLETENESS__STABLE_AFTER": "2",
            "TRIAGE_RESULTS__DESTINATIONS": json.dumps([destination]),
            "TRIAGE_RESULTS__KEY_IMAGES": "true",
            "TRIAGE_RESULTS__RETRY_MIN_SECONDS": "0.5",
            "TRIAGE_RESULTS__RETRY_MAX_SECONDS": "2",
            "TRIAGE_RESULTS__SEND_INTERVAL": "0.2",
        },
    )
    pacs = Pacs(root, http_port, dicom_port, server.port)
    pacs.start()
    try:
        yield pacs, server
    finally:
        pacs.stop()
        problems = factory.stop_all()
        assert not problems, problems


def outbox(data_dir: Path, study_uid: str) -> list[tuple[str, str, int, str | None]]:
    """(kind, status, attempts, last_error) of the study's outbox rows, read beside the server."""
    conn = sqlite3.connect(data_dir / "triage.db", timeout=30)
    try:
        return conn.execute(
            "SELECT o.kind, o.status, o.attempts, o.last_error FROM outbox o JOIN study s ON s.id = o.study_pk"
            " WHERE s.study_uid = ? ORDER BY o.id",
            (study_uid,),
        ).fetchall()
    except sqlite3.OperationalError:  # the table is being created
        return []
    finally:
        conn.close()


def test_the_sr_comes_back_into_the_same_study_in_orthanc(setup) -> None:
    pacs, server = setup
    started = time.monotonic()
    study_uid = pacs.push_to_triage("05_head_ct")

    sr_series = wait_for(
        lambda: pacs.sr_of(study_uid), timeout=SCORED_TIMEOUT, interval=0.5, what="the AI SR in Orthanc's study", abort=server.died
    )
    print(f"SR in Orthanc {time.monotonic() - started:.1f} s after Orthanc's store job")
    assert sr_series["MainDicomTags"]["SeriesDescription"] == "AI triage results (suggestion)"
    modalities = {s["MainDicomTags"].get("Modality") for s in pacs.series_of(study_uid)}
    assert {"CT", "SR"} <= modalities, modalities  # beside the CT it came from: the same study

    (instance_id,) = sr_series["Instances"]
    ds = dcmread(BytesIO(pacs.download(instance_id)))
    assert (ds.StudyInstanceUID, ds.PatientID) == (study_uid, "PH001005")
    findings = {f["kind"]: f for f in parse_ai_sr(ds)}
    bleed = findings["bleed"]
    truth = MANIFEST["05_head_ct"]["findings"][0]
    assert bleed["at_or_above"] is True and bleed["probability"] >= bleed["operating_point"]
    assert set(bleed["referenced_sop_instance_uids"]) & set(truth["sop_instance_uids"]), bleed
    # The key image of the bleed follows into the same study (Secondary Capture, modality OT).
    wait_for(
        lambda: any(s["MainDicomTags"].get("Modality") == "OT" for s in pacs.series_of(study_uid)),
        timeout=60,
        interval=0.5,
        what="the key image in Orthanc",
        abort=server.died,
    )
    rows = wait_for(
        lambda: (r := outbox(server.data_dir, study_uid)) and all(x[1] == "sent" for x in r) and r,
        timeout=30,
        what="the outbox rows marked sent",
    )
    assert sorted(r[0] for r in rows) == ["ai_sr", "key_image"]


def test_orthanc_down_while_the_result_is_pending_then_back_gets_it(setup) -> None:
    pacs, server = setup
    # A radiograph completes 5 s after its last instance (completeness.per_modality): Orthanc is
    # stopped before the study is scored, so the SR meets a closed port first.
    study_uid = pacs.push_to_triage("08_extremity_xr")
    pacs.stop()
    failed = wait_for(
        lambda: [r for r in outbox(server.data_dir, study_uid) if r[0] == "ai_sr" and r[2] >= 2],
        timeout=SCORED_TIMEOUT,
        interval=0.5,
        what="failed attempts to send the SR to the stopped Orthanc",
        abort=server.died,
    )
    (kind, status, attempts, last_error) = failed[0]
    assert status == "pending" and last_error is not None and "connection refused" in last_error, failed

    pacs.start()
    sr_series = wait_for(
        lambda: pacs.sr_of(study_uid), timeout=60, interval=0.5, what="the SR in Orthanc after its restart", abort=server.died
    )
    (instance_id,) = sr_series["Instances"]
    findings = parse_ai_sr(dcmread(BytesIO(pacs.download(instance_id))))
    assert [f["kind"] for f in findings] == ["fracture"]
    rows = wait_for(
        lambda: [r for r in outbox(server.data_dir, study_uid) if r[0] == "ai_sr" and r[1] == "sent"],
        timeout=30,
        what="the SR's outbox row marked sent",
    )
    assert rows[0][2] > attempts  # the attempts while Orthanc was down are kept
