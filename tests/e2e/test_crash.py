"""``kill -9`` of ``triage serve`` mid-replay: nothing acknowledged is lost, and
after a restart (crash recovery) and a full re-send the store and the index
agree exactly, with no duplicates and no leftovers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_io.send import DicomFile, find_dicom_files, replay
from dicom_io.writer import UID_ROOT
from tests.e2e.support import (
    LOCALHOST,
    ServeFactory,
    assert_stored,
    count_indexed,
    dataset_bytes,
    indexed_instances,
    sha256_file,
    studies_json,
    wait_for,
    write_ct_series,
)

pytestmark = [pytest.mark.slow, pytest.mark.external, pytest.mark.timeout(240)]

KILL_AFTER = 80  # indexed instances
# Unpaced, over many associations, so that stores are in flight when the kill lands.
PARALLEL = 8
# pynetdicom notices a dead peer only when the DIMSE timeout expires, so the
# first replay gives up this long after the kill.
FIRST_REPLAY_TIMEOUT = 5.0


def _generate(root: Path) -> dict[str, Path]:
    """300 CT slices (128 x 128) in three series of two studies; {SOP UID: path}."""
    study_a = generate_uid(UID_ROOT)
    files: dict[str, Path] = {}
    files |= write_ct_series(root / "a1", slices=120, size=128, seed=1, study_uid=study_a, accession_number="A")
    files |= write_ct_series(
        root / "a2", slices=90, size=128, seed=2, study_uid=study_a, accession_number="A", series_description="AXIAL 1MM"
    )
    files |= write_ct_series(root / "b1", slices=90, size=128, seed=3, accession_number="B", patient_id="P2")
    return files


def _replay_in_thread(files: list[DicomFile], port: int, on_result: Callable[[DicomFile, bool], None]) -> threading.Thread:
    """Start replaying ``files`` (product SCU, per-file outcomes to ``on_result``)."""
    thread = threading.Thread(
        target=replay,
        args=(files, LOCALHOST, port),
        name="replay",
        daemon=True,
        kwargs=dict(parallel=PARALLEL, timeout=FIRST_REPLAY_TIMEOUT, on_result=on_result),
    )
    thread.start()
    return thread


def test_kill_9_mid_replay_then_restart_and_resend(triage_serve: ServeFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected = _generate(tmp_path / "src")
    sop_of = {p: sop for sop, p in expected.items()}
    files, skipped = find_dicom_files([tmp_path / "src"])
    assert (len(files), skipped) == (300, [])

    acked: set[str] = set()
    lock = threading.Lock()

    def on_result(f: DicomFile, ok: bool) -> None:
        if ok:
            with lock:
                acked.add(sop_of[f.path])

    first = triage_serve.start(data)
    thread = _replay_in_thread(files, first.port, on_result)
    wait_for(
        lambda: count_indexed(data) > KILL_AFTER,
        timeout=60,
        interval=0.02,
        what=f"more than {KILL_AFTER} indexed instances",
        abort=first.died,
    )
    first.kill()
    thread.join(timeout=60)
    assert not thread.is_alive(), "replay did not give up after the server was killed"
    with lock:
        acked_before_kill = set(acked)
    # Some of the indexed instances may not have had their response delivered yet.
    assert 0 < len(acked_before_kill) < len(expected), "the kill did not land mid-replay"

    # Durability: every acknowledged instance is indexed and its file is complete,
    # before any recovery has run.
    crashed = {r.sop_instance_uid: r for r in indexed_instances(data)}
    assert acked_before_kill <= set(crashed)
    for sop in acked_before_kill:
        stored = data / crashed[sop].path
        assert sha256_file(stored) == crashed[sop].sha256, crashed[sop].path
        assert dataset_bytes(stored) == dataset_bytes(expected[sop]), crashed[sop].path

    # What a kill during a write leaves, whether or not this kill happened to:
    # a partial temporary file beside the instances of its series.
    victim = next(sop for sop in expected if sop not in crashed)
    series_dir = data / Path(crashed[next(iter(acked_before_kill))].path).parent
    partial = expected[victim].read_bytes()
    (series_dir / f".{victim}.{uuid.uuid4().hex}.tmp").write_bytes(partial[: len(partial) // 2])

    second = triage_serve.start(data)  # recovery runs before it answers C-ECHO
    assert not list(data.rglob("*.tmp")), "recovery left temporary files"
    acked.clear()
    summary = replay(files, LOCALHOST, second.port, parallel=4, timeout=30, on_result=on_result)
    assert (summary.sent, summary.failed) == (len(expected), 0), summary.failures[:5]
    assert acked == set(expected)

    # Each UID indexed once with one file (size, sha256, path, counters checked),
    # no temporary files, no conflicts: the re-sent bytes equal the kept ones.
    rows = assert_stored(data, expected, calling_ae=None)
    assert not (data / "conflicts").exists() or not any((data / "conflicts").iterdir())
    for sop in acked_before_kill:
        assert rows[sop].sha256 == crashed[sop].sha256, f"{sop}: acknowledged before the kill, then changed"
    for sop, source in expected.items():
        assert dataset_bytes(data / rows[sop].path) == dataset_bytes(source), rows[sop].path

    studies = studies_json(data)
    assert sorted((s["num_series"], s["num_instances"]) for s in studies.values()) == [(1, 90), (2, 210)]

    assert second.stop() == 0, second.log_text()[-4000:]
