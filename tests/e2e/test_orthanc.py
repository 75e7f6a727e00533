"""A PACS (Orthanc, Debian's build) pushes studies to ``triage serve`` with C-STORE."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    LOCALHOST,
    ServeFactory,
    assert_same_instance,
    assert_stored,
    clean_env,
    dataset_bytes,
    free_port,
    pydicom_test_file,
    require_binary,
    sop_uid_of,
    studies_json,
    wait_for,
    write_ct_series,
)

pytestmark = [pytest.mark.slow, pytest.mark.external, pytest.mark.timeout(180)]

ORTHANC = "/usr/sbin/Orthanc"
# Uncompressed (explicit and implicit VR), RLE, JPEG 2000 and JPEG baseline.
TEST_FILES = ["CT_small.dcm", "rtdose.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"]

# Loopback only: never through an HTTP proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Orthanc:
    """A running Orthanc with its own storage, index and ports under tmp_path."""

    http_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://{LOCALHOST}:{self.http_port}{path}"

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> Any:
        """One REST call; returns the decoded JSON answer."""
        req = urllib.request.Request(self.url(path), data=body, method=method)
        with _http.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def died(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"Orthanc exited with {self.proc.returncode}; log:\n{self.log_path.read_text(errors='replace')[-4000:]}"


def start_orthanc(tmp_path: Path, triage_port: int) -> Orthanc:
    """Start Orthanc with no plugins, knowing triage as modality ``triage``; wait for its REST API."""
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "triage-e2e",
        "StorageDirectory": str(tmp_path / "orthanc-storage"),
        "IndexDirectory": str(tmp_path / "orthanc-index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"triage": ["TRIAGE", LOCALHOST, triage_port]},
        "Plugins": [],
        "SaveJobs": False,
        "DicomScuTimeout": 30,
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [require_binary(ORTHANC), str(config_path)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    orthanc = Orthanc(http_port, proc, log_path)
    wait_for(
        lambda: orthanc.request("GET", "/system", timeout=5).get("DicomAet") == "ORTHANC",
        timeout=60,
        interval=0.2,
        what=f"Orthanc's REST API on port {http_port}",
        ignore=(urllib.error.URLError, ConnectionError, TimeoutError),
        abort=orthanc.died,
    )
    return orthanc


def stop_orthanc(orthanc: Orthanc) -> None:
    if orthanc.proc.poll() is None:
        orthanc.proc.send_signal(signal.SIGTERM)
        try:
            orthanc.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            orthanc.proc.kill()
            orthanc.proc.wait()


@pytest.fixture
def orthanc_for(tmp_path: Path) -> Iterator[Any]:
    """``orthanc_for(triage_port)`` starts Orthanc; it is stopped at teardown."""
    require_binary(ORTHANC)
    started: list[Orthanc] = []

    def start(triage_port: int) -> Orthanc:
        started.append(start_orthanc(tmp_path, triage_port))
        return started[-1]

    yield start
    for orthanc in started:
        stop_orthanc(orthanc)


def test_orthanc_pushes_a_study_to_triage(triage_serve: ServeFactory, orthanc_for: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    series = write_ct_series(tmp_path / "ct", slices=25, size=64)
    extras = {sop_uid_of(p): p for p in map(pydicom_test_file, TEST_FILES)}
    expected = {**series, **extras}
    server = triage_serve.start(data)
    orthanc = orthanc_for(server.port)

    orthanc_ids = []
    for path in expected.values():
        answer = orthanc.request("POST", "/instances", path.read_bytes())
        assert answer["Status"] == "Success", (path, answer)
        orthanc_ids.append(answer["ID"])

    assert orthanc.request("POST", "/modalities/triage/echo", b"{}") == {}
    job = orthanc.request(
        "POST", "/modalities/triage/store", json.dumps({"Resources": orthanc_ids, "Synchronous": True}).encode(), timeout=120
    )
    assert (job["InstancesCount"], job["FailedInstancesCount"], job["RemoteAet"]) == (len(expected), 0, "TRIAGE"), job

    # Orthanc got a success for each instance, given only once it was stored and indexed.
    rows = assert_stored(data, expected, calling_ae="ORTHANC")
    for sop, source in series.items():
        assert dataset_bytes(data / rows[sop].path) == dataset_bytes(source), rows[sop].path
    for sop, source in extras.items():
        assert_same_instance(data / rows[sop].path, source)

    studies = studies_json(data)
    assert len(studies) == 1 + len(extras)
    ct_study = studies[rows[next(iter(series))].study_uid]
    assert (ct_study["num_series"], ct_study["num_instances"], ct_study["modality"]) == (1, 25, "CT")
