"""``triage serve`` with listener processes sharing one socket, indexing
through the main process."""

from __future__ import annotations

import sqlite3

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_io.send import echo
from dicom_io.writer import StudyMeta
from tests.scu import store
from triage.errors import DicomNetworkError


def test_listener_processes_index_through_the_main_process(make_server, make_ct_series) -> None:
    server = make_server(**{"listener.processes": 2})
    assert len(server._children) == 2
    first = make_ct_series(slices=4, size=32)
    second = make_ct_series(slices=3, size=32, meta=StudyMeta(patient_id="P2"))
    assert store(server.port, first) == [0] * 4
    assert store(server.port, second + first[:1]) == [0] * 4  # the last one is a duplicate
    assert echo("127.0.0.1", server.port) < 5
    with sqlite3.connect(server.settings.data_dir / "triage.db") as conn:
        assert conn.execute("select count(*), sum(num_instances) from study").fetchone() == (2, 7)
        assert conn.execute("select count(*) from instance").fetchone() == (7,)


def test_a_dead_listener_process_is_replaced(make_server, make_ct_series) -> None:
    server = make_server(**{"listener.processes": 2})
    victim = server._children[0].process
    victim.kill()
    victim.join()
    server.check_listeners()
    assert server._children[0].process.is_alive() and server._children[0].process is not victim
    assert store(server.port, make_ct_series(slices=2, size=32)) == [0, 0]


def test_association_limit_counts_every_listener_process(make_server) -> None:
    server = make_server(**{"listener.processes": 2, "listener.max_associations": 2})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    holders = [ae.associate("127.0.0.1", server.port, ae_title="TRIAGE") for _ in range(2)]
    try:
        assert all(h.is_established for h in holders)
        with pytest.raises(DicomNetworkError, match="rejected"):
            echo("127.0.0.1", server.port)
    finally:
        for h in holders:
            h.release()
    assert echo("127.0.0.1", server.port) < 5


def test_a_stop_asked_for_while_starting_starts_no_scoring(make_settings) -> None:
    """SIGTERM during start-up: the listener comes up and goes, but no job is claimed to be waited for."""
    from triage.app.server import TriageServer

    server = TriageServer(make_settings(**{"pipeline.enabled": True}))
    assert server.scoring is not None
    server.start(stopping=lambda: True)
    try:
        assert server.scoring.detectors is None  # the detectors were not even loaded
        assert echo("127.0.0.1", server.port, called_ae="TRIAGE") >= 0  # but the listener serves until the stop
    finally:
        server.stop()


def test_a_stop_asked_for_while_the_detectors_load_claims_no_job(make_settings) -> None:
    # SIGTERM lands after the check before loading, while torch and the weights load: the worker must not
    # then claim a job and make the stop wait for a series to be scored.
    from triage.app.server import TriageServer

    settings = make_settings(**{"pipeline.enabled": True})
    asked = iter([False, True])  # the server's check before loading: no stop yet; the worker's after it: stop
    server = TriageServer(settings)
    assert server.scoring is not None
    try:
        server.start(stopping=lambda: next(asked))
        assert server.scoring.detectors  # loaded
        assert not server.scoring.claiming  # but nothing claims jobs
    finally:
        server.stop()
