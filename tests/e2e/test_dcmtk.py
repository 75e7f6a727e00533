"""``triage serve`` against dcmtk's echoscu and storescu, as a PACS would talk to it."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, RLELossless

from tests.e2e.support import (
    LOCALHOST,
    ServeFactory,
    assert_same_instance,
    assert_stored,
    clean_env,
    count_indexed,
    dataset_bytes,
    pydicom_test_file,
    require_binary,
    sop_uid_of,
    studies_json,
    wait_for,
    write_ct_series,
)

pytestmark = [pytest.mark.slow, pytest.mark.external, pytest.mark.timeout(180)]

ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"

# storescu proposes uncompressed transfer syntaxes by default and would try to
# decompress other files (and fail for JPEG 2000). Each group of files is sent
# with the proposal of its own transfer syntax so nothing is transcoded; -R
# proposes only the SOP classes of the files being sent.
_PROPOSAL = {
    ExplicitVRLittleEndian: ["-R"],
    RLELossless: ["-R", "-xr"],
    JPEG2000: ["-R", "-xw"],  # 1.2.840.10008.1.2.4.91, "lossless or lossy"
}
# Debian's dcmtk otherwise waits for delayed ACKs (~40 ms per message).
_DCMTK_ENV = {"TCP_NODELAY": "1"}
_TIMEOUTS = ["-to", "10", "-ta", "10", "-td", "30"]


@pytest.fixture(autouse=True)
def _dcmtk_installed() -> None:
    """Skip (or fail in CI) before any server starts when dcmtk is missing."""
    require_binary(ECHOSCU)
    require_binary(STORESCU)


def _dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary(tool), *args], env=clean_env(_DCMTK_ENV), capture_output=True, text=True, timeout=timeout, check=False
    )


def _echoscu(port: int, calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return _dcmtk(ECHOSCU, *_TIMEOUTS, "-aec", "TRIAGE", "-aet", calling_ae, LOCALHOST, str(port))


def _storescu(port: int, files: Sequence[Path], calling_ae: str = "DCMTKSCU") -> None:
    """Send ``files`` with storescu, one run per transfer syntax; every run must succeed."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(str(read_file_meta_info(f).TransferSyntaxUID), []).append(f)
    for ts, members in groups.items():
        done = _dcmtk(STORESCU, *_PROPOSAL[ts], *_TIMEOUTS, "-aec", "TRIAGE", "-aet", calling_ae, LOCALHOST, str(port), *map(str, members))
        assert done.returncode == 0, f"storescu ({ts}) exited {done.returncode}:\n{done.stdout}{done.stderr}"


def test_echoscu_succeeds(triage_serve: ServeFactory, tmp_path: Path) -> None:
    server = triage_serve.start(tmp_path / "data")
    done = _echoscu(server.port)
    assert done.returncode == 0, done.stdout + done.stderr


def test_storescu_series_and_compressed_files_arrive_intact(triage_serve: ServeFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    series = write_ct_series(tmp_path / "ct", slices=20, size=64)
    extras = {sop_uid_of(p): p for p in map(pydicom_test_file, ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])}
    server = triage_serve.start(data)

    _storescu(server.port, [*series.values(), *extras.values()])

    # Every success was acknowledged after indexing, so no waiting is needed here.
    rows = assert_stored(data, {**series, **extras}, calling_ae="DCMTKSCU")
    studies = studies_json(data)
    ct_study = rows[next(iter(series))].study_uid
    assert len(studies) == 4
    assert (studies[ct_study]["num_series"], studies[ct_study]["num_instances"]) == (1, 20)
    for sop in extras:
        assert (studies[rows[sop].study_uid]["num_series"], studies[rows[sop].study_uid]["num_instances"]) == (1, 1)

    # pydicom wrote the generated series without group lengths or padding, so
    # dcmtk sends its dataset unchanged and the stored bytes are the same.
    for sop, source in series.items():
        assert dataset_bytes(data / rows[sop].path) == dataset_bytes(source), rows[sop].path
    # dcmtk re-encodes the test files (drops group lengths and trailing padding)
    # but must not transcode them: same elements, same (compressed) pixel bytes.
    for sop, source in extras.items():
        assert_same_instance(data / rows[sop].path, source)

    # Series become complete from the DB's timestamps (stable_after = 1 s).
    wait_for(
        lambda: all(s["status"] == "complete" for s in studies_json(data).values()),
        timeout=30,
        interval=0.5,
        what="every study to be complete",
    )


def test_calling_ae_outside_allow_list_is_rejected(triage_serve: ServeFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = triage_serve.start(data, env={"TRIAGE_LISTENER__ALLOWED_AE_TITLES": '["GOODAE"]'}, calling_ae="GOODAE")

    bad = _echoscu(server.port, calling_ae="BADAE")
    assert bad.returncode != 0, f"echoscu as BADAE succeeded:\n{bad.stdout}{bad.stderr}"
    assert "reject" in (bad.stdout + bad.stderr).lower(), bad.stdout + bad.stderr
    wait_for(
        lambda: "BADAE" in server.log_text() and "not in listener.allowed_ae_titles" in server.log_text(),
        timeout=10,
        what="the rejection to be logged",
    )

    good = _echoscu(server.port, calling_ae="GOODAE")
    assert good.returncode == 0, good.stdout + good.stderr

    # A store from a refused AE leaves nothing behind.
    ct = pydicom_test_file("CT_small.dcm")
    refused = _dcmtk(STORESCU, "-R", *_TIMEOUTS, "-aec", "TRIAGE", "-aet", "BADAE", LOCALHOST, str(server.port), str(ct))
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert count_indexed(data) == 0
    assert not list(data.rglob("*.dcm"))
