"""Scale-out on PostgreSQL: ``triage serve --role listener`` and ``--role worker``
processes sharing one database (a throw-away server from Debian's binaries) and
one storage folder (the shared volume).

- Two listeners and two workers, 100 head CT studies sent in parallel to both
  listeners (some series split across them): every instance indexed once,
  every series completed once and scored once, every study scored, the audit
  chain intact.
- A worker killed (SIGKILL) while it holds a job: its lease runs out, the other
  worker takes the job and finishes it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dicom_io.send import DicomFile, ReplaySummary, find_dicom_files, replay
from tests.e2e.support import ServeFactory, ServeProcess, dataset_bytes, run_triage, sha256_file, wait_for, write_ct_series
from triage.store import audit
from triage.store.db import make_engine
from triage.store.tables import INSTANCE, JOB, SERIES, STUDY

pytestmark = [pytest.mark.slow, pytest.mark.external, pytest.mark.timeout(600)]


STUDIES = 100
SLICES = 4
SPLIT = 10  # studies whose series is sent half to each listener
WORKER_READY = "scoring worker"  # the worker's startup line (triage.flow.pipeline), logged once its detectors are loaded
# Every process sees the same database, storage and timing. Series complete after 5 s
# without a new instance: ample for the halves of a split series, which are sent together.
COMMON_ENV = {
    "TRIAGE_COMPLETENESS__STABLE_AFTER": "5",
    "TRIAGE_LISTENER__PROCESSES": "1",  # a 2-core runner: one listener process per server is enough
    "TRIAGE_DETECTORS__DEVICE": "cpu",
}


@pytest.fixture
def db(postgres_url: str) -> Iterator[tuple[str, Engine]]:
    """The test's database: its URL for the servers, an engine for the test's own queries."""
    engine = make_engine(postgres_url)
    yield postgres_url, engine
    engine.dispose()


def start_role(factory: ServeFactory, data: Path, url: str, role: str, env: dict[str, str]) -> ServeProcess:
    """``triage serve --role ROLE`` on the shared data folder and database.

    A listener is returned once it answers a C-ECHO; a worker (which does not
    listen) at once: see :func:`wait_worker_ready`.
    """
    args = ["--db", url, "--role", role]
    return factory.start(data, env={**COMMON_ENV, **env}, args=args, wait=role != "worker")


def wait_worker_ready(worker: ServeProcess) -> None:
    wait_for(
        lambda: WORKER_READY in worker.log_text(),
        timeout=180,
        interval=0.2,
        what=f"the scoring worker's startup line in {worker.log_path.name}",
        abort=worker.died,
    )


def replay_together(batches: Sequence[tuple[list[DicomFile], int]]) -> list[ReplaySummary]:
    """Replay each (files, port) batch on its own thread, all at once; the summaries in order."""
    summaries: list[ReplaySummary | None] = [None] * len(batches)

    def send(i: int) -> None:
        files, port = batches[i]
        summaries[i] = replay(files, "127.0.0.1", port, calling_ae="SCALEPACS", parallel=4, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(s is not None for s in summaries), "a replay did not finish"
    return summaries


def scalar(engine: Engine, query) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def inference_events(engine: Engine) -> Counter[tuple[str, int]]:
    """``inference`` audit events per (series UID, generation)."""
    return Counter((e["detail"]["series_uid"], e["detail"]["generation"]) for e in audit.export(engine) if e["action"] == "inference")


def test_two_listeners_two_workers_score_every_study_exactly_once(
    triage_serve: ServeFactory, db: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = db
    shared = tmp_path / "shared"  # the storage volume every server mounts
    src = tmp_path / "src"
    studies = [
        write_ct_series(
            src / f"s{i:03d}", slices=SLICES, size=64, seed=i, body_part="HEAD", patient_id=f"P{i:03d}", accession_number=f"A{i:03d}"
        )
        for i in range(STUDIES)
    ]
    expected = {sop: path for study in studies for sop, path in study.items()}
    files = {f.path: f for f in find_dicom_files([src])[0]}
    assert len(files) == STUDIES * SLICES

    # The split series go first on both sides, so that their halves arrive together.
    to_listener: list[list[DicomFile]] = [[], []]
    for study in studies[:SPLIT]:
        for n, path in enumerate(sorted(study.values())):
            to_listener[n % 2].append(files[path])
    for i, study in enumerate(studies[SPLIT:]):
        to_listener[i % 2] += [files[p] for p in sorted(study.values())]

    workers = [start_role(triage_serve, shared, url, "worker", {}) for _ in range(2)]  # loading their detectors meanwhile
    listeners = [start_role(triage_serve, shared, url, "listener", {}) for _ in range(2)]
    for worker in workers:
        wait_worker_ready(worker)

    summaries = replay_together([(to_listener[0], listeners[0].port), (to_listener[1], listeners[1].port)])
    for summary in summaries:
        assert summary.failed == 0, summary.failures[:3]
    assert sum(s.sent for s in summaries) == STUDIES * SLICES

    def all_scored() -> bool:
        scored = scalar(engine, select(func.count()).select_from(STUDY).where(STUDY.c.ai_status == "scored"))
        unfinished = scalar(engine, select(func.count()).select_from(JOB).where(JOB.c.status != "done"))
        return scored == STUDIES and unfinished == 0

    everyone = [*listeners, *workers]
    wait_for(
        all_scored,
        timeout=300,
        interval=1.0,
        what=f"{STUDIES} studies scored",
        abort=lambda: next((m for s in everyone if (m := s.died())), None),
    )

    with engine.connect() as conn:
        instances = conn.execute(select(INSTANCE.c.sop_instance_uid, INSTANCE.c.path, INSTANCE.c.sha256)).all()
        series = conn.execute(select(SERIES.c.id, SERIES.c.series_uid, SERIES.c.status, SERIES.c.generation, SERIES.c.num_instances)).all()
        jobs = conn.execute(
            select(JOB.c.series_pk, JOB.c.generation, JOB.c.status, JOB.c.attempts, JOB.c.num_instances, JOB.c.worker)
        ).all()
        study_rows = conn.execute(select(STUDY.c.num_instances, STUDY.c.num_series, STUDY.c.ai_status)).all()
    # None lost, none doubled: every instance indexed once, its file on the shared volume.
    assert sorted(r.sop_instance_uid for r in instances) == sorted(expected)
    for row in instances:
        stored = shared / row.path
        assert sha256_file(stored) == row.sha256, row.path
        assert dataset_bytes(stored) == dataset_bytes(expected[row.sop_instance_uid]), row.path
    assert not list(shared.rglob("*.tmp"))
    assert len(study_rows) == STUDIES
    assert all((r.num_instances, r.num_series, r.ai_status) == (SLICES, 1, "scored") for r in study_rows)
    # Each series completed once (whichever listener got its last instance) and scored once.
    assert len(series) == STUDIES
    assert all((s.status, s.generation, s.num_instances) == ("complete", 0, SLICES) for s in series), series
    assert sorted((j.series_pk, j.generation) for j in jobs) == sorted((s.id, 0) for s in series)
    assert all((j.status, j.attempts, j.num_instances) == ("done", 1, SLICES) for j in jobs)
    # Both workers took jobs (a worker's id is host:pid).
    by_pid = Counter(int(j.worker.rsplit(":", 1)[1]) for j in jobs)
    assert set(by_pid) == {w.proc.pid for w in workers}, by_pid
    events = inference_events(engine)
    assert events == Counter({(s.series_uid, 0): 1 for s in series})

    verified = run_triage("audit", "verify", "--db", url)
    assert verified.returncode == 0, verified.stderr
    assert "keyed hash chain and anchors verified, current rows match it" in verified.stdout
    listed = run_triage("studies", "--db", url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"ai_status": "scored"') == STUDIES


def test_a_killed_workers_job_is_leased_again_and_finished(triage_serve: ServeFactory, db: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = db
    shared = tmp_path / "shared"
    # Long enough to score (about a second on a CPU) that the job is seen running before it is done.
    study = write_ct_series(tmp_path / "src", slices=96, size=256, seed=7, body_part="HEAD")
    files, _ = find_dicom_files([tmp_path / "src"])
    lease = {"TRIAGE_PIPELINE__LEASE_SECONDS": "6", "TRIAGE_PIPELINE__HEARTBEAT_SECONDS": "2", "TRIAGE_COMPLETENESS__STABLE_AFTER": "2"}

    workers = [start_role(triage_serve, shared, url, "worker", lease) for _ in range(2)]
    listener = start_role(triage_serve, shared, url, "listener", lease)
    for worker in workers:
        wait_worker_ready(worker)
    (summary,) = replay_together([(files, listener.port)])
    assert (summary.sent, summary.failed) == (len(study), 0)

    def running_job() -> tuple[int, str] | None:
        with engine.connect() as conn:
            row = conn.execute(select(JOB.c.id, JOB.c.worker, JOB.c.status)).first()
        if row is not None and row.status == "done":
            pytest.fail("the job finished before the test could kill its worker")
        return (row.id, row.worker) if row is not None and row.status == "running" else None

    job_id, holder = wait_for(running_job, timeout=120, interval=0.02, what="a running job", abort=listener.died)
    pids = {w.proc.pid: w for w in workers}
    victim = pids[int(holder.rsplit(":", 1)[1])]
    victim.kill()
    (survivor,) = [w for w in workers if w is not victim]

    def finished() -> tuple | None:
        with engine.connect() as conn:
            row = conn.execute(select(JOB.c.status, JOB.c.attempts, JOB.c.worker).where(JOB.c.id == job_id)).one()
        return tuple(row) if row.status == "done" else None

    status, attempts, worker = wait_for(
        finished, timeout=120, interval=0.2, what="the job finished by the other worker", abort=survivor.died
    )
    assert (status, attempts) == ("done", 2)
    assert int(worker.rsplit(":", 1)[1]) == survivor.proc.pid
    with engine.connect() as conn:
        assert conn.execute(select(STUDY.c.ai_status)).scalar_one() == "scored"
        assert conn.execute(select(func.count()).select_from(JOB)).scalar_one() == 1
        (series_uid,) = conn.execute(select(SERIES.c.series_uid)).scalars().all()
    # The killed worker recorded nothing: one inference, by the survivor's attempt.
    assert inference_events(engine) == Counter({(series_uid, 0): 1})
    verified = run_triage("audit", "verify", "--db", url)
    assert verified.returncode == 0, verified.stderr
