"""``triage serve``'s /healthz and /metrics over real HTTP, and the systemd notify protocol."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.scu import store
from triage.app import sdnotify
from triage.app.server import TriageServer
from triage.clock import as_utc
from triage.config import Settings
from triage.errors import TriageError
from triage.flow.pipeline import ClaimedJob
from triage.store.tables import INSTANCE, OUTBOX, RESULT, SERIES

MONITORED = {"monitoring.http_port": 0, "completeness.stable_after": 0.3, "completeness.check_interval": 0.05}


def get(server: TriageServer, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.monitoring.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(server: TriageServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser: (name, labels) -> value."""
    code, text = get(server, "/metrics")
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_metrics_show_received_refused_queued_and_outbox(make_server, make_ct_series, tmp_path: Path) -> None:
    server = make_server(**MONITORED)
    files = make_ct_series(slices=3, size=32)
    ds = dcmread(files[0])
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request names another instance: 0xA900
    mismatch = tmp_path / "mismatch.dcm"
    ds.save_as(mismatch)
    assert store(server.port, [*files, files[0], mismatch]) == [0, 0, 0, 0, 0xA900]

    first = scrape(server)
    assert first[("triage_instances_received_total", (("outcome", "stored"),))] == 3
    assert first[("triage_instances_received_total", (("outcome", "duplicate"),))] == 1
    assert first[("triage_instances_refused_total", (("reason", "dataset_mismatch"), ("status", "0xA900")))] == 1
    assert first[("triage_instances_refused_total", (("reason", "out_of_resources"), ("status", "0xA700")))] == 0
    assert first[("triage_database_up", ())] == 1
    assert first[("triage_associations_open", ())] == 0
    assert first[("triage_data_free_bytes", ())] > 0
    assert first[("triage_last_received_timestamp_seconds", ())] > time.time() - 60

    # The series completes after its stability time: a queued job (nothing scores in this test).
    wait_for(lambda: scrape(server)[("triage_jobs", (("status", "pending"),))] == 1)
    done = scrape(server)
    assert done[("triage_series_waiting", ())] == 0
    assert done[("triage_jobs", (("status", "running"),))] == 0
    assert done[("triage_jobs_oldest_pending_age_seconds", ())] >= 0
    assert not any(name == "triage_outbox_pending" for name, _ in done)  # nothing to send: no series of it

    with server.engine.begin() as conn:
        study_pk, received = conn.execute(select(SERIES.c.study_pk, SERIES.c.last_received)).one()
        created = as_utc(received) - timedelta(seconds=120)
        for kind, attempts in (("ai_sr", 2), ("key_image", 0)):
            conn.execute(
                OUTBOX.insert().values(
                    study_pk=study_pk, kind=kind, source_key="k", destination="pacs", attempts=attempts, created_at=created
                )
            )
    sent = scrape(server)
    assert sent[("triage_outbox_pending", (("destination", "pacs"),))] == 2
    assert sent[("triage_outbox_retrying", (("destination", "pacs"),))] == 1
    assert sent[("triage_outbox_oldest_pending_age_seconds", (("destination", "pacs"),))] >= 120


def test_a_recorded_result_is_observed_in_the_histograms(make_server, make_ct_series) -> None:
    server = make_server(**MONITORED)
    assert store(server.port, make_ct_series(slices=2, size=32)) == [0, 0]
    with server.engine.begin() as conn:
        series_pk, study_pk, received = conn.execute(select(SERIES.c.id, SERIES.c.study_pk, SERIES.c.last_received)).one()
        conn.execute(
            RESULT.insert().values(
                series_pk=series_pk, study_pk=study_pk, generation=0, duration_s=1.5, scored_at=as_utc(received) + timedelta(seconds=20)
            )
        )
    after: list[int] = []
    hook = server.monitoring.observing(lambda job: after.append(job.id))  # what the worker's on_recorded runs
    hook(ClaimedJob(id=7, series_pk=series_pk, study_pk=study_pk, generation=0, attempts=1, series_uid="s", study_uid="t"))
    assert after == [7]  # the wrapped hook (queueing results) still runs
    metrics = scrape(server)
    assert metrics[("triage_scoring_duration_seconds_count", ())] == 1
    assert metrics[("triage_scoring_duration_seconds_sum", ())] == 1.5
    assert metrics[("triage_scoring_duration_seconds_bucket", (("le", "2.0"),))] == 1
    assert metrics[("triage_scoring_duration_seconds_bucket", (("le", "1.0"),))] == 0
    assert metrics[("triage_time_to_triage_seconds_sum", ())] == pytest.approx(20.0)
    assert metrics[("triage_time_to_triage_seconds_bucket", (("le", "15.0"),))] == 0


def test_refusals_are_counted_across_listener_processes(make_server, make_ct_series) -> None:
    # No space to spare: every store is refused before its dataset reaches the ingestor (0xA700).
    server = make_server(**MONITORED, **{"listener.processes": 2, "listener.min_free_mb": 2**30})
    assert store(server.port, make_ct_series(slices=2, size=32)) == [0xA700, 0xA700]
    assert store(server.port, make_ct_series(slices=1, size=32)) == [0xA700]
    metrics = scrape(server)
    assert metrics[("triage_instances_refused_total", (("reason", "out_of_resources"), ("status", "0xA700")))] == 3
    assert metrics[("triage_instances_received_total", (("outcome", "stored"),))] == 0
    assert metrics[("triage_data_min_free_bytes", ())] == 2**50
    code, body = get(server, "/healthz")
    assert (code, json.loads(body)["checks"]["listener"]) == (200, "ok")
    victim = server._children[0].process
    victim.kill()
    victim.join()
    code, body = get(server, "/healthz")
    assert code == 503 and "listener-1 is not running" in json.loads(body)["checks"]["listener"]


def _move_database(server: TriageServer, to: str) -> None:
    """Take the data directory, SQLite file and all, away (like a volume unmounted) or put it back.

    The pooled connections are closed each time; no new one can open while it is
    away (its folder is missing, so SQLite cannot create an empty file there).
    """
    data_dir = server.settings.data_dir
    gone = data_dir.with_name(data_dir.name + ".gone")
    server.engine.dispose()
    if to == "away":
        data_dir.rename(gone)
    else:
        gone.rename(data_dir)
    server.engine.dispose()  # what a server thread opened in between, to the file away


def test_healthz_fails_when_the_database_is_gone(make_server) -> None:
    server = make_server(**MONITORED)
    code, body = get(server, "/healthz")
    assert code == 200
    assert json.loads(body) == {"status": "ok", "role": "all", "checks": {"database": "ok", "listener": "ok"}}
    _move_database(server, "away")
    try:
        code, body = get(server, "/healthz")
        answer = json.loads(body)
        assert code == 503 and answer["status"] == "failing"
        assert answer["checks"]["database"].startswith("does not answer") and answer["checks"]["listener"] == "ok"
        metrics = scrape(server)  # the scrape itself still works
        assert metrics[("triage_database_up", ())] == 0 and ("triage_data_free_bytes", ()) not in metrics
    finally:
        _move_database(server, "back")
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/nothing")[0] == 404


@pytest.fixture
def light_worker(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TriageServer]]:
    """A server that scores, with the detectors left unloaded (no torch): its claiming loop is what is checked."""
    started: list[TriageServer] = []

    def make(**overrides: Any) -> TriageServer:
        server = TriageServer(make_settings(**{"pipeline.enabled": True, **overrides}))
        assert server.scoring is not None
        server.scoring.detectors = []  # type: ignore[assignment]
        server.scoring.inference = SimpleNamespace(device="cpu", close=lambda: None)  # type: ignore[assignment]
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


def test_healthz_fails_when_the_scoring_loop_hangs(light_worker, monkeypatch: pytest.MonkeyPatch) -> None:
    import triage.flow.pipeline as pipeline

    hang, release = threading.Event(), threading.Event()
    real_claim = pipeline.claim_jobs

    def claim(*args: Any, **kwargs: Any) -> Any:
        if hang.is_set():
            release.wait(30)  # a database call that does not come back
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(pipeline, "claim_jobs", claim)
    server = light_worker(
        **MONITORED, **{"role": "worker", "pipeline.heartbeat_seconds": 0.2, "pipeline.lease_seconds": 1.0, "pipeline.poll_interval": 0.05}
    )
    wait_for(lambda: server.scoring is not None and server.scoring.beat_age() is not None)
    code, body = get(server, "/healthz")
    assert code == 200 and json.loads(body)["checks"] == {"database": "ok", "scoring": "ok"}
    assert ("triage_scoring_loop_age_seconds", ()) in scrape(server)
    hang.set()
    try:
        wait_for(lambda: get(server, "/healthz")[0] == 503, timeout=10)
        assert "stale after 0.4 s" in json.loads(get(server, "/healthz")[1])["checks"]["scoring"]
    finally:
        release.set()
    hang.clear()
    wait_for(lambda: get(server, "/healthz")[0] == 200)


def test_no_endpoint_unless_configured(make_server) -> None:
    server = make_server()
    with pytest.raises(TriageError, match="set \\[monitoring\\] http_port"):
        server.monitoring.http_port  # noqa: B018


# -- the systemd notify protocol ----------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on: a unix datagram socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(10)
    yield sock
    sock.close()


def messages_until(sock: socket.socket, wanted: str) -> list[str]:
    seen: list[str] = []
    while wanted not in seen:
        seen.append(sock.recv(4096).decode())
    return seen


def test_ready_watchdog_and_stopping_are_sent(make_settings, notify_socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    server = TriageServer(make_settings())
    try:
        server.start()
        assert messages_until(notify_socket, "READY=1")[0] == "READY=1"
        assert messages_until(notify_socket, "WATCHDOG=1")[-1] == "WATCHDOG=1"
        # A failing check: the pings stop, and systemd's status line says why.
        _move_database(server, "away")
        try:
            seen: list[str] = []
            while not any(m.startswith("STATUS=failing: database: does not answer") for m in seen):
                seen.append(notify_socket.recv(4096).decode())
            notify_socket.settimeout(0.3)  # several intervals: no ping while it fails
            with pytest.raises(TimeoutError):
                notify_socket.recv(4096)
        finally:
            _move_database(server, "back")
        notify_socket.settimeout(10)
        assert {"WATCHDOG=1", "STATUS=serving"} <= set(messages_until(notify_socket, "STATUS=serving"))
    finally:
        server.stop()
    assert messages_until(notify_socket, "STOPPING=1")[-1] == "STOPPING=1"


def test_notify_without_a_socket_and_the_watchdog_settings(tmp_path: Path, notify_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "none")}) is False  # nobody listening: no raise
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")}) is True
    assert notify_socket.recv(64) == b"READY=1"
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for pid 1


def test_abstract_notify_socket() -> None:
    name = f"triage-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(64) == b"WATCHDOG=1"


def test_instance_rows_are_what_was_counted(make_server, make_ct_series) -> None:
    # The counter and the index agree on what was stored.
    server = make_server(**MONITORED)
    assert store(server.port, make_ct_series(slices=4, size=32)) == [0] * 4
    with server.engine.connect() as conn:
        rows = len(conn.execute(select(INSTANCE.c.id)).all())
    assert scrape(server)[("triage_instances_received_total", (("outcome", "stored"),))] == rows == 4
