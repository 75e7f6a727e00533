"""The database layer on a real PostgreSQL server (``postgres_url``: a fresh
database per test on one throw-away server from Debian's binaries).

What scale-out relies on: several listeners indexing into one database, several
completeness monitors deciding the same series, several workers claiming from
one queue, and every one of them appending to one hash chain, concurrently
(threads with their own engines stand in for processes on other hosts).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from tests.triage.rows import add_study, header, record
from triage.bench.pgcluster import PostgresCluster
from triage.clock import utcnow
from triage.config import CompletenessSettings, Settings, load_settings
from triage.flow.completeness import complete_stable_series
from triage.flow.pipeline import claim_jobs, record_result, renew_leases
from triage.reading.identity import AuthMethod
from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential
from triage.reading.states import ClaimConflict
from triage.store import audit
from triage.store.db import make_engine
from triage.store.index import SqlIndex
from triage.store.models import Instance, Job, Series, Study
from triage.store.tables import JOB, SERIES, STUDY
from triage.vocabulary import JobStatus

T = TypeVar("T")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
STABLE = CompletenessSettings(stable_after=10)


@pytest.fixture
def engines(postgres_url: str) -> Iterator[Callable[[], Engine]]:
    """Engines on the test's database, each with its own pool (a process on another host); disposed at teardown."""
    made: list[Engine] = []

    def make() -> Engine:
        made.append(make_engine(postgres_url))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    return load_settings(overrides={"data_dir": str(tmp_path), "db": url, **overrides}, environ={})


def together(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..n-1)`` on ``n`` threads released at the same moment; re-raise the first error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    if errors:
        raise errors[0]
    return results


def count(engine: Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def server_deadlocks(cluster: PostgresCluster) -> int:
    """Deadlocks the server detected (and broke by failing a transaction) so far, from its log."""
    assert cluster.log_path is not None
    return cluster.log_path.read_text(errors="replace").count("deadlock detected")


def index_series(engine: Engine, studies: int, series_per_study: int, instances: int, at: datetime) -> None:
    index = SqlIndex(engine)
    for st in range(1, studies + 1):
        for se in range(1, series_per_study + 1):
            for i in range(1, instances + 1):
                rec = record(header(study=f"2.{st}", series=f"2.{st}.{se}", sop=f"2.{st}.{se}.{i}"))
                assert index.record(replace(rec, received_at=at))


# -- schema and types ----------------------------------------------------------------


def test_make_engine_creates_the_tables_even_when_processes_start_together(postgres_url: str) -> None:
    engines = together(4, lambda _: make_engine(postgres_url))
    try:
        tables = set(inspect(engines[0]).get_table_names())
        assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}  # stamped at the head revision
        assert {"study", "series", "instance", "job", "audit_event", "audit_head", "outbox"} <= tables
        columns = {c["name"]: c for c in inspect(engines[0]).get_columns("job")}
        assert str(columns["lease_until"]["type"]) == "TIMESTAMP"  # with time zone
        assert columns["lease_until"]["type"].timezone is True
    finally:
        for engine in engines:
            engine.dispose()


def test_utc_datetimes_and_booleans_round_trip(engines: Callable[[], Engine]) -> None:
    engine = engines()
    local = datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with Session(engine) as s:
        s.add(Study(study_uid="3.1", first_received=local, last_received=local, scored_at=None))
        s.commit()
    with Session(engine) as s:
        study = s.exec(select(Study)).scalar_one()
        assert study.first_received == local
        assert study.first_received.utcoffset() == timedelta(0)
        assert study.first_received.isoformat() == "2026-03-01T08:30:15.123456+00:00"
        assert study.scored_at is None
    # A comparison bound to an aware time in another zone selects by the instant.
    received = STUDY.c.first_received
    assert count(engine, select(func.count()).where(received < local + timedelta(microseconds=1))) == 1
    assert count(engine, select(func.count()).where(received < local)) == 0


# -- the index -------------------------------------------------------------------------


def test_index_group_commits_from_many_threads_idempotent_on_sop_uid(engines: Callable[[], Engine]) -> None:
    index = SqlIndex(engines())
    assert index.record(record(header(sop="1.2.3.1.1")))
    assert not index.record(record(header(sop="1.2.3.1.1")))  # the same instance again
    index.start()
    try:
        # Eight associations, the first instance of each sent twice (a retry).
        def send(t: int) -> list[bool]:
            out = []
            for i in range(25):
                out.append(index.record(record(header(series=f"1.2.3.{t + 2}", sop=f"1.2.3.{t + 2}.{i + 1}"))))
            out.append(index.record(record(header(series=f"1.2.3.{t + 2}", sop=f"1.2.3.{t + 2}.1"))))
            return out

        results = together(8, send)
    finally:
        index.close()
    assert all(r == [True] * 25 + [False] for r in results)
    with Session(index.engine) as s:
        study = s.exec(select(Study)).scalar_one()
        assert (study.num_series, study.num_instances, study.modalities) == (9, 201, "CT")
        assert sorted(x.num_instances for x in s.exec(select(Series)).scalars()) == [1] + [25] * 8
    assert count(index.engine, select(func.count()).select_from(Instance)) == 201
    assert index.find("1.2.3.5.7") == ("ab" * 32, "studies/1.2.3/1.2.3.5/1.2.3.5.7.dcm")
    assert audit.verify(index.engine).ok


def test_two_listeners_index_the_same_studies_without_losing_or_doubling(engines: Callable[[], Engine]) -> None:
    """Two index writers (two listeners) get the series of the same studies, some instances twice."""
    listeners = [SqlIndex(engines()), SqlIndex(engines())]
    for index in listeners:
        index.start()

    def send(which: int) -> list[bool]:
        index = listeners[which]
        futures = []
        for st in range(1, 11):
            for se in range(1, 3):
                # Listener 0 gets instances 1-6, listener 1 instances 5-10: 5 and 6 reach both.
                for i in range(1 + 4 * which, 7 + 4 * which):
                    futures.append(index.submit(record(header(study=f"4.{st}", series=f"4.{st}.{se}", sop=f"4.{st}.{se}.{i}"))))
        return [f.result() for f in futures]

    try:
        results = together(2, send)
    finally:
        for index in listeners:
            index.close()
    # Every instance is new to exactly one listener.
    assert sum(r.count(True) for r in results) == 10 * 2 * 10
    engine = listeners[0].engine
    assert count(engine, select(func.count()).select_from(Instance)) == 200
    assert count(engine, select(func.count()).select_from(Series)) == 20
    with Session(engine) as s:
        for study in s.exec(select(Study)).scalars():
            assert (study.num_series, study.num_instances) == (2, 20), study.study_uid
        for series in s.exec(select(Series)).scalars():
            assert series.num_instances == 10, series.series_uid
    assert audit.verify(engine).ok


# -- completeness and the queue ---------------------------------------------------------


def test_two_monitors_give_exactly_one_job_per_series_generation(engines: Callable[[], Engine]) -> None:
    index_series(engines(), studies=10, series_per_study=4, instances=2, at=T0)
    monitors = [engines(), engines()]
    now = T0 + timedelta(minutes=1)
    done = together(2, lambda i: complete_stable_series(monitors[i], STABLE, now))
    assert not set(done[0]) & set(done[1])
    assert len(done[0]) + len(done[1]) == 40
    engine = monitors[0]
    assert count(engine, select(func.count()).select_from(Job)) == 40
    assert count(engine, select(func.count(func.distinct(JOB.c.series_pk))).where(JOB.c.generation == 0)) == 40
    assert count(engine, select(func.count()).select_from(STUDY).where(STUDY.c.status == "complete")) == 10

    # Late instances reopen 10 series: their next completion is one more job each.
    index = SqlIndex(engines())
    for st in range(1, 11):
        late = record(header(study=f"2.{st}", series=f"2.{st}.1", sop=f"2.{st}.1.9"))
        assert index.record(replace(late, received_at=now))
    later = now + timedelta(minutes=1)
    done = together(2, lambda i: complete_stable_series(monitors[i], STABLE, later))
    assert sorted(done[0] + done[1]) == sorted(set(done[0] + done[1])) and len(done[0] + done[1]) == 10
    with engine.connect() as conn:
        jobs = conn.execute(select(JOB.c.generation, JOB.c.num_instances)).all()
    assert sorted(jobs) == [(0, 2)] * 40 + [(1, 3)] * 10
    assert count(engine, select(func.count()).where(audit.EVENT.c.action == "series_complete")) == 50
    assert audit.verify(engine).ok


def test_a_listener_and_a_monitor_on_the_same_series_neither_deadlock_nor_lose(
    engines: Callable[[], Engine], postgres_cluster: PostgresCluster
) -> None:
    """Late instances arrive for every series while a monitor completes them: both
    lock the same series and study rows and append to one chain, in one lock order."""
    index_series(engines(), studies=8, series_per_study=5, instances=1, at=T0)
    index, monitor = SqlIndex(engines(), max_batch=8), engines()
    index.start()
    now = T0 + timedelta(minutes=1)
    deadlocks_before = server_deadlocks(postgres_cluster)

    def listener() -> list[bool]:
        futures = [
            index.submit(
                replace(
                    record(header(study=f"2.{st}", series=f"2.{st}.{se}", sop=f"2.{st}.{se}.{i}")), received_at=T0 + timedelta(seconds=1)
                )
            )
            for i in range(2, 10)
            for st in range(1, 9)
            for se in range(1, 6)
        ]
        return [f.result() for f in futures]

    def monitoring() -> int:
        return sum(len(complete_stable_series(monitor, STABLE, now)) for _ in range(40))

    try:
        received, _ = together(2, lambda i: (listener, monitoring)[i]())
    finally:
        index.close()
    assert received == [True] * 320
    # A deadlock PostgreSQL broke would not show above (the index retries a failed
    # batch record by record), so look for it where the server reports it.
    assert server_deadlocks(postgres_cluster) == deadlocks_before
    complete_stable_series(monitor, STABLE, now + timedelta(minutes=1))  # whatever reopened last
    with monitor.connect() as conn:
        series = conn.execute(select(SERIES.c.id, SERIES.c.generation, SERIES.c.num_instances)).all()
        jobs = conn.execute(select(JOB.c.series_pk, JOB.c.generation, JOB.c.num_instances)).all()
    assert len(series) == 40 and all(n == 9 for _, _, n in series)
    assert len(jobs) == len({(pk, g) for pk, g, _ in jobs})  # one job per completion
    final = {(pk, g): n for pk, g, n in jobs}
    assert all(final.get((pk, g)) == 9 for pk, g, _ in series)  # each series' last completion, all 9 instances
    assert audit.verify(monitor).ok


def test_two_workers_never_claim_the_same_job(engines: Callable[[], Engine], tmp_path: Path, postgres_url: str) -> None:
    index_series(engines(), studies=15, series_per_study=4, instances=1, at=T0)
    assert len(complete_stable_series(engines(), STABLE, T0 + timedelta(minutes=1))) == 60
    cfg = settings(tmp_path, postgres_url)
    workers = [engines(), engines()]
    now = utcnow()

    rounds = threading.Barrier(2)

    def drain(i: int) -> list[list[int]]:
        # Both claim at the same moment, round after round: without SKIP LOCKED the
        # later one would wait for the earlier one's candidates, then find them taken.
        got = []
        for _ in range(15):
            rounds.wait()
            got.append([j.id for j in claim_jobs(workers[i], f"w{i}", 2, cfg, now)])
        return got

    per_round = together(2, drain)
    assert [len(ids) for w in per_round for ids in w] == [2] * 30
    claimed = [[job for ids in w for job in ids] for w in per_round]
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == list(range(1, 61))
    assert claim_jobs(workers[0], "w0", 2, cfg, now) == []
    with workers[0].connect() as conn:
        rows = conn.execute(select(JOB.c.id, JOB.c.status, JOB.c.worker, JOB.c.attempts)).all()
    owner = {job: f"w{i}" for i in (0, 1) for job in claimed[i]}
    assert all((r.status, r.worker, r.attempts) == ("running", owner[r.id], 1) for r in rows)


def test_lapsed_leases_are_reclaimed_and_the_heartbeat_keeps_them(engines: Callable[[], Engine], tmp_path: Path, postgres_url: str) -> None:
    engine = engines()
    index_series(engine, studies=1, series_per_study=2, instances=1, at=T0)
    complete_stable_series(engine, STABLE, T0 + timedelta(minutes=1))
    cfg = settings(tmp_path, postgres_url, **{"pipeline.lease_seconds": 60, "pipeline.heartbeat_seconds": 15})
    now = utcnow()
    first, second = claim_jobs(engine, "w1", 2, cfg, now)
    # w1 renews first's lease only (its heartbeat for the job it still holds).
    assert renew_leases(engine, "w1", [first.id], 60, now + timedelta(seconds=50)) == 1
    assert renew_leases(engine, "w2", [first.id], 60, now + timedelta(seconds=50)) == 0  # not w2's
    with engine.connect() as conn:
        lease = conn.execute(select(JOB.c.lease_until).where(JOB.c.id == first.id)).scalar_one()
    assert lease == now + timedelta(seconds=110) and lease.utcoffset() == timedelta(0)
    assert claim_jobs(engine, "w2", 5, cfg, now + timedelta(seconds=30)) == []  # both leases live
    (taken,) = claim_jobs(engine, "w2", 5, cfg, now + timedelta(seconds=61))  # second's lease lapsed
    assert (taken.id, taken.attempts) == (second.id, 2)
    assert renew_leases(engine, "w1", [second.id], 60, now + timedelta(seconds=62)) == 0  # w1 lost it
    (again,) = claim_jobs(engine, "w2", 5, cfg, now + timedelta(seconds=111))
    assert (again.id, again.attempts) == (first.id, 2)


def test_a_result_is_recorded_once_with_its_findings(engines: Callable[[], Engine], tmp_path: Path, postgres_url: str) -> None:
    from detectors.base import Finding, ModelIdentity, Region
    from detectors.routing import FindingKind
    from triage.flow.scoring import SeriesScore

    engine = engines()
    index_series(engine, studies=1, series_per_study=1, instances=2, at=T0)
    complete_stable_series(engine, STABLE, T0 + timedelta(minutes=1))
    cfg = settings(tmp_path, postgres_url)
    (job,) = claim_jobs(engine, "w1", 1, cfg)
    region = Region(job.series_uid, "2.1.1.1", 0, (0, 1), (1, 2, 30, 40), 0.93)
    finding = Finding(FindingKind.BLEED, job.series_uid, 0.93, 0.4, (region,), ModelIdentity("bleed-ct", "1.0", "ab" * 32), "bleed-ct")
    score = SeriesScore(job.series_uid, "CT", "", 2, "head CT", True, findings=(finding,))
    assert record_result(engine, job, "w1", score, [], "cpu", 0.2, cfg.policy)
    assert not record_result(engine, job, "w1", score, [], "cpu", 0.2, cfg.policy)  # no longer running: dropped
    with Session(engine) as s:
        study = s.exec(select(Study)).scalar_one()
        assert (study.ai_status, study.priority_class) == ("scored", "critical")
        assert study.scored_at is not None and study.scored_at.utcoffset() == timedelta(0)
    with engine.connect() as conn:
        assert conn.execute(select(JOB.c.status, JOB.c.attempts)).one() == (JobStatus.DONE.value, 1)
        urgent = conn.execute(select(func.count()).where(audit.EVENT.c.action == "inference")).scalar_one()
    assert urgent == 1
    assert audit.verify(engine).ok


# -- the audit chain and the worklist ----------------------------------------------------


def test_audit_appends_from_many_threads_make_one_gapless_chain(engines: Callable[[], Engine]) -> None:
    writers = [engines() for _ in range(4)]

    def append(i: int) -> list[int]:
        seqs = []
        for n in range(25):
            with writers[i % 4].begin() as conn:
                seqs.append(audit.append(conn, actor=f"dr.{i}", action="view", study_uid=f"5.{i}", detail={"n": n}))
        return seqs

    seqs = together(8, append)
    assert sorted(s for thread in seqs for s in thread) == list(range(1, 201))
    assert all(thread == sorted(thread) for thread in seqs)
    result = audit.verify(writers[0])
    assert (result.ok, result.events) == (True, 200)
    assert [e["seq"] for e in audit.export(writers[0], study_uid="5.3")] == seqs[3]


def test_worklist_items_claim_and_sign(engines: Callable[[], Engine], tmp_path: Path) -> None:
    engine = engines()
    # With their inference events: verify checks the findings against the chain.
    urgent = add_study(engine, "6.1", (("bleed", 0.95, 0.5),), received=T0, audited=True)
    add_study(engine, "6.2", (("bleed", 0.05, 0.5),), received=T0 - timedelta(minutes=1), audited=True)
    svc = WorklistService(engine, Settings(data_dir=tmp_path))
    items = svc.items()
    assert [i.study.study_uid for i in items] == ["6.1", "6.2"]
    assert items[0].findings[0].urgent is True and items[1].findings[0].urgent is False

    # Two readers claim the top study at the same moment: one gets it.
    other = WorklistService(engines(), Settings(data_dir=tmp_path))
    outcomes = together(2, lambda i: _try_claim((svc, other)[i], "6.1", f"dr.{i}"))
    assert sorted(outcomes) == ["claimed", "conflict"]
    reader = f"dr.{outcomes.index('claimed')}"
    view = svc.open("6.1", reader)
    assert [f.id for f in view.findings] == urgent.finding_ids
    svc.feedback("6.1", reader, "agree", finding_id=urgent.finding_ids[0])
    svc.save_draft("6.1", reader, "Acute haemorrhage.")
    credential = SigningCredential(reader=reader, method=AuthMethod.PASSWORD, os_account="pg-test", at=svc.clock())
    assert svc.sign("6.1", reader, credential) == 1
    with Session(engine) as s:
        study = s.exec(select(Study).where(Study.study_uid == "6.1")).scalar_one()
        assert (study.read_state, study.claimed_by) == ("signed", None)
    assert [i.study.study_uid for i in svc.items(include_signed=False)] == ["6.2"]
    actions = [e["action"] for e in audit.export(engine, study_uid="6.1")]
    assert actions == ["claim", "view", "feedback", "draft", "sign"]
    assert audit.verify(engine).ok


def _try_claim(svc: WorklistService, uid: str, user: str) -> str:
    try:
        svc.claim(uid, user)
    except ClaimConflict:
        return "conflict"
    return "claimed"
