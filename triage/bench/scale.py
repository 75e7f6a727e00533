"""``triage bench scale``: what a second listener and a second worker add, on PostgreSQL.

Scale-out is more ``triage serve`` processes against one PostgreSQL and one
storage volume (ARCHITECTURE.md). This bench runs them on one machine, against
the PostgreSQL of ``--db`` (a server URL; the bench creates and drops its own
databases there, so the role needs CREATEDB) or, without it, a throw-away
server started for the run (:class:`triage.bench.pgcluster.PostgresCluster`, with
fsync on, as a real site would run it).

1. Ingest: the same ``--n`` generated CT slices (``--size`` x ``--size``, in
   series of up to 100, as ``triage bench ingest`` makes them) are sent over
   ``--parallel`` associations to one ``triage serve --role listener``, then,
   on a fresh database and data directory, to two listeners sharing them (on
   different ports; the associations split evenly between them). Timed like
   ``bench ingest``: a C-STORE is answered once the file is fsynced and its
   index row committed, so images/s includes indexing into PostgreSQL. Every
   instance must be stored and indexed exactly once.
2. Scoring: ``--studies`` small head CTs (``--study-slices`` slices of
   ``--study-size``, body part HEAD, so the bleed detector scores them) are
   received by one listener with a ``--stable-after`` wait until every series
   has its scoring job; the listener is stopped. For 1 and then 2
   ``triage serve --role worker`` processes, the received database is copied
   (``CREATE DATABASE ... TEMPLATE``: each run starts from the same fresh
   state, nothing is reset in place), the jobs are held back while the workers
   start and load their detectors, then released at once; studies/hour is the
   studies over the time from the release to the last study scored. Every
   study must be scored, by exactly one job, with one result and one inference
   audit event per series.

The ratios are what the issue asks for. On one machine the processes share its
cores: two CPU workers on two cores compete for the same cores, so their ratio
shows the cost of coordinating through the database more than added capacity
(a worker on another GPU host brings its own); the same holds for listeners.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.bench.common import HOST, BenchFailure, check_space, machine, ratio, times
from triage.bench.served import CALLING_AE, SERVE_AE, ServedProcess
from triage.clock import as_utc
from triage.config import available_cores
from triage.errors import USER_ERRORS, TriageError

# pydicom, pynetdicom, SQLAlchemy and torch are imported where they are used:
# `triage` builds every subcommand's parser on each start.
if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


MIN_SIZE, MAX_SIZE = 16, 2048  # ingest slices, as `bench ingest`
MIN_STUDY_SIZE, MAX_STUDY_SIZE = 32, 1024  # scored studies, as `bench triage`
MAX_STUDY_SLICES = 400
MAX_PARALLEL = 64
HEADER_BYTES = 2048  # rough size of file meta + CT header per instance

JOBS_TIMEOUT_S = 120.0  # beyond the stable wait, until every received series has its job
PER_STUDY_TIMEOUT_S = 60.0  # scoring wait: this much per study, plus the above
POLL_S = 0.1
HOLD = timedelta(days=1)  # a held job's lease: far beyond the run
HOLDER = "bench-scale-hold"

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# TRIAGE_* variables the bench sets itself for each served process.
_OWN_ENV = ("TRIAGE_DB", "TRIAGE_CONFIG", "TRIAGE_ROLE", "TRIAGE_DATA_DIR")

Progress = Callable[[str], None]


# -- what is run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleBenchConfig:
    """What to measure (the CLI's flags)."""

    db: str | None = None  # a PostgreSQL server URL; None: a throw-away server
    n: int = 600  # ingest: CT slices sent to each configuration
    size: int = 256
    parallel: int = 4  # associations in all, split evenly between the listeners
    studies: int = 24  # scoring: head CTs
    study_slices: int = 16
    study_size: int = 128
    stable_after: float = 1.0  # the receiving listener's series stability wait, scoring phase
    device: str = "cpu"  # the workers' detectors
    keep: bool = False

    def check(self) -> None:
        """Raise :class:`TriageError` naming the first bad option."""
        if self.db is not None:
            _check_postgres_url(self.db)
        if self.n < 2:
            raise TriageError(f"--n must be at least 2, got {self.n}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise TriageError(f"--size must be between {MIN_SIZE} and {MAX_SIZE}, got {self.size}")
        if not 2 <= self.parallel <= MAX_PARALLEL or self.parallel % 2:
            raise TriageError(
                f"--parallel must be an even number between 2 and {MAX_PARALLEL} (split evenly between 2 listeners), got {self.parallel}"
            )
        if self.parallel > self.n:
            raise TriageError(f"--parallel ({self.parallel}) must not exceed --n ({self.n})")
        if self.studies < 2:
            raise TriageError(f"--studies must be at least 2 (2 workers share them), got {self.studies}")
        if not 1 <= self.study_slices <= MAX_STUDY_SLICES:
            raise TriageError(f"--study-slices must be between 1 and {MAX_STUDY_SLICES}, got {self.study_slices}")
        if not MIN_STUDY_SIZE <= self.study_size <= MAX_STUDY_SIZE:
            raise TriageError(f"--study-size must be between {MIN_STUDY_SIZE} and {MAX_STUDY_SIZE}, got {self.study_size}")
        if not (self.stable_after > 0 and math.isfinite(self.stable_after)):  # also refuses NaN
            raise TriageError(f"--stable-after must be a positive number of seconds, got {self.stable_after}")
        if not _DEVICE.match(self.device):
            raise TriageError(f'--device must be "auto", "cpu", "cuda", "cuda:N" or "mps", got {self.device!r}')


def _check_postgres_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise TriageError(f"--db is not a database URL: {url!r}") from None
    if parsed.get_backend_name() != "postgresql":
        raise TriageError(f"--db must be a PostgreSQL URL (postgresql+psycopg://user@host/database), got a {parsed.get_backend_name()} one")


@dataclass(frozen=True)
class IngestRun:
    """One ingest configuration: the timed batch into 1 or 2 listeners."""

    listeners: int
    instances: int
    seconds: float
    stored_files: int
    indexed_rows: int

    @property
    def images_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ScoringRun:
    """One scoring configuration: the received studies scored by 1 or 2 workers."""

    workers: int
    studies: int
    seconds: float  # jobs released -> last study scored
    jobs_by_worker: tuple[int, ...]  # jobs done by each worker, most first
    scored_once: bool  # every series: one job, done; one result; one inference event

    @property
    def studies_per_hour(self) -> float:
        return self.studies * 3600.0 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ScaleBenchResult:
    config: ScaleBenchConfig
    cpus: int
    machine: str
    database: str  # what PostgreSQL ran the bench, in words
    sender: str
    warmup_instances: int = 0
    listener_processes: int = 0  # per listener (`listener.processes`)
    databases: tuple[str, ...] = ()  # the databases the bench made, in order (kept with --db --keep)
    ingest: tuple[IngestRun, ...] = ()
    scoring: tuple[ScoringRun, ...] = ()
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and len(self.ingest) == 2 and len(self.scoring) == 2

    @property
    def ingest_ratio(self) -> float | None:
        return _second_over_first([r.images_per_s for r in self.ingest])

    @property
    def scoring_ratio(self) -> float | None:
        return _second_over_first([r.studies_per_hour for r in self.scoring])

    def as_json(self) -> dict[str, Any]:
        config = asdict(self.config)
        if config["db"]:
            config["db"] = _shown_url(config["db"])
        return {
            "config": config,
            "machine": {"cpus": self.cpus, "platform": self.machine},
            "database": self.database,
            "databases": list(self.databases),
            "ingest": {
                "instances": self.config.n,
                "size": self.config.size,
                "parallel": self.config.parallel,
                "warmup_instances": self.warmup_instances,
                "sender": self.sender,
                "listener_processes": self.listener_processes,
                "runs": [{**asdict(r), "images_per_s": r.images_per_s} for r in self.ingest],
                "ratio_2_vs_1": self.ingest_ratio,
            },
            "scoring": {
                "studies": self.config.studies,
                "slices": self.config.study_slices,
                "size": self.config.study_size,
                "device": self.config.device,
                "fresh_state": "a copy of the received database per run",
                "runs": [
                    {**asdict(r), "jobs_by_worker": list(r.jobs_by_worker), "studies_per_hour": r.studies_per_hour} for r in self.scoring
                ],
                "ratio_2_vs_1": self.scoring_ratio,
            },
            "notes": list(self.notes),
            "problems": list(self.problems),
            "ok": self.ok,
        }


def _second_over_first(rates: Sequence[float]) -> float | None:
    return ratio(rates[1], rates[0]) if len(rates) == 2 and rates[0] > 0 else None


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- the bench ----------------------------------------------------------------------------------
def run_scale_bench(config: ScaleBenchConfig, progress: Progress | None = None) -> ScaleBenchResult:
    """Measure ingest with 1 vs 2 listeners and scoring with 1 vs 2 workers; see the module docstring.

    Parameters
    ----------
    config
        What to run.
    progress
        Called with a line before each stage (the CLI prints them on stderr).

    Returns
    -------
    ScaleBenchResult
        The figures; ``problems`` is non-empty when a server failed or an
        instance or study was lost or handled twice (the figures measured until
        then stand).

    Raises
    ------
    TriageError
        Bad options, bad ``TRIAGE_*`` settings, too little free disk space, or
        a PostgreSQL that cannot be started or used.
    """
    config.check()
    say = progress or (lambda _line: None)
    root = Path(tempfile.mkdtemp(prefix="triage-bench-scale-"))
    notes: list[str] = []
    problems: list[str] = []
    try:
        _check_space(root, config)
        empty_toml = root / "empty.toml"  # so that a triage.toml where we run does not change the servers
        empty_toml.write_text("")
        listener_processes = _served_settings(empty_toml).listener.process_count
        sender = _sender_name(config.parallel)
        with _postgres(config, say) as (server_url, database):
            # A throw-away server goes with its databases; on a given one they are dropped unless kept.
            dbs = _Databases(server_url, f"triage_bench_scale_{os.getpid()}", keep=config.keep or config.db is None)
            result = ScaleBenchResult(
                config=config,
                cpus=available_cores(),
                machine=machine(),
                database=database,
                sender=sender,
                listener_processes=listener_processes,
            )
            ingest: list[IngestRun] = []
            scoring: list[ScoringRun] = []
            warmup_n = min(config.parallel, 8) * 2
            try:
                try:  # each phase appends a run as it is measured: a failure keeps the ones before it
                    _ingest_phase(config, root, empty_toml, dbs, warmup_n, say, ingest)
                except BenchFailure as exc:
                    problems.append(f"ingest: {exc}")
                try:
                    _scoring_phase(config, root, empty_toml, dbs, say, scoring)
                except BenchFailure as exc:
                    problems.append(f"scoring: {exc}")
            finally:
                made = tuple(dbs.names)
                problems += dbs.drop_all()
            if config.keep and config.db:
                notes.append(f"kept the databases {', '.join(made)} on {_shown_url(server_url)}")
        notes += _notes(config, result.cpus, scoring)
        if config.keep:
            notes.append(f"kept {root} (data directories, inputs and every server's log)")
        return replace(
            result,
            warmup_instances=warmup_n,
            databases=made,
            ingest=tuple(ingest),
            scoring=tuple(scoring),
            notes=tuple(notes),
            problems=tuple(dict.fromkeys(problems)),
        )
    finally:
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)


def _notes(config: ScaleBenchConfig, cpus: int, scoring: Sequence[ScoringRun]) -> list[str]:
    notes = []
    if config.device == "cpu" or config.device == "auto":
        notes.append(
            f"this machine has {cpus} CPU cores and the workers score on the CPU: 2 workers share the "
            "cores 1 worker already uses, so the scoring ratio shows what coordinating through "
            "PostgreSQL costs (or saves, by overlapping one worker's I/O with the other's compute), "
            "not added capacity; workers on separate GPU hosts each bring their own"
        )
    notes.append(
        f"the listeners share the same {cpus} cores (and the sender runs beside them), so the ingest "
        "ratio shows whether two listeners on one database contend, not what a second host adds"
    )
    if len(scoring) == 2 and min(scoring[1].jobs_by_worker, default=0) == 0:
        notes.append("one of the 2 workers scored no study: the other claimed every job first")
    return notes


# -- PostgreSQL -----------------------------------------------------------------------------------
@contextmanager
def _postgres(config: ScaleBenchConfig, say: Progress) -> Iterator[tuple[str, str]]:
    """(the URL to connect to for creating databases, the server in words); a throw-away server if no --db."""
    if config.db is not None:
        yield config.db, f"PostgreSQL at {_shown_url(config.db)} (--db)"
        return
    from triage.bench.pgcluster import PostgresCluster

    say("starting a throw-away PostgreSQL server (fsync on)")
    cluster = PostgresCluster(fsync=True)
    try:
        cluster.start()
        version = cluster.bin_dir.parent.name
        yield cluster.url, f"throw-away PostgreSQL {version} on {HOST}:{cluster.port}, fsync on"
    finally:
        cluster.stop()


class _Databases:
    """The bench's own databases on one server: created empty or from a template, dropped at the end."""

    def __init__(self, server_url: str, prefix: str, keep: bool) -> None:
        self.server_url = server_url
        self.prefix = prefix
        self.keep = keep
        self.names: list[str] = []

    def url(self, name: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def create(self, tag: str, template: str | None = None) -> str:
        """A new database ``<prefix>_<tag>`` (with the schema, or a copy of ``template``); its name."""
        name = f"{self.prefix}_{tag}"
        from_template = f' TEMPLATE "{template}"' if template else ""
        self._execute(f'CREATE DATABASE "{name}"{from_template}')
        self.names.append(name)
        if template is None:
            # The schema, before any server starts: several servers creating it at
            # once on an empty database would race in CREATE TABLE.
            from triage.store.db import make_engine

            make_engine(self.url(name)).dispose()
        return name

    def drop_all(self) -> list[str]:
        """Drop every database made here (unless kept); the problems, as lines."""
        if self.keep:
            return []
        problems = []
        for name in reversed(self.names):
            try:
                self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except USER_ERRORS as exc:
                problems.append(str(exc))
        self.names = []
        return problems

    def _execute(self, sql: str) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError

        engine = create_engine(self.server_url, isolation_level="AUTOCOMMIT", pool_size=1)
        try:
            with engine.connect() as conn:
                conn.execute(text(sql))
        except SQLAlchemyError as exc:
            why = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise TriageError(f"PostgreSQL at {_shown_url(self.server_url)}: {sql.split(' WITH')[0]}: {why}") from None
        finally:
            engine.dispose()


def _engine(url: str) -> Engine:
    from triage.store.db import make_engine

    return make_engine(url, create=False)


# -- phase 1: ingest ------------------------------------------------------------------------------
def _ingest_phase(
    config: ScaleBenchConfig, root: Path, empty_toml: Path, dbs: _Databases, warmup_n: int, say: Progress, runs: list[IngestRun]
) -> None:
    from triage.bench.ingest import generate_inputs

    say(f"ingest: generating {config.n} + {warmup_n} warm-up CT slices {config.size}x{config.size}")
    inputs = generate_inputs(root / "inputs", config.n, warmup_n, config.size)
    for listeners in (1, 2):
        db = dbs.create(f"ingest{listeners}")
        workdir = root / f"ingest{listeners}"
        data = workdir / "data"
        env = _serve_env(role="listener", db_url=dbs.url(db), data_dir=data)
        say(f"ingest: {listeners} listener{'s' if listeners > 1 else ''}, {config.n} slices over {config.parallel} associations")
        with _served_many(listeners, "listener", workdir, empty_toml, env) as servers:
            ports = [s.port for s in servers]
            _send(inputs.warmup, ports, config.parallel, workdir / "warmup")
            os.sync()  # the warm-up's dirty pages are not the timed batch's cost
            started = time.perf_counter()
            _send(inputs.timed, ports, config.parallel, workdir / "timed")
            seconds = time.perf_counter() - started
            _stop_all(servers)
        total = len(inputs.warmup) + len(inputs.timed)
        files, rows = _count_stored(data, dbs.url(db))
        if files != total or rows != total:
            raise BenchFailure(f"{listeners} listener(s): {files} files stored and {rows} instances indexed, expected {total} of each")
        run = IngestRun(listeners, config.n, seconds, files, rows)
        say(f"ingest: {listeners} listener(s): {run.images_per_s:.0f} images/s")
        runs.append(run)


def _count_stored(data: Path, db_url: str) -> tuple[int, int]:
    """(instance files under <data>/studies, instance rows in the index)."""
    from sqlalchemy import func, select

    from triage.bench.ingest import count_files
    from triage.store.tables import INSTANCE

    engine = _engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(INSTANCE)).scalar_one()
    finally:
        engine.dispose()
    return count_files(data / "studies"), int(rows)


def _sender_name(parallel: int) -> str:
    from triage.bench.ingest import DCMTK_STORESCP, STORESCU, executable

    if executable(STORESCU) and executable(DCMTK_STORESCP):
        return f"dcmtk storescu x{parallel} processes (TCP_NODELAY=1)"
    return f"dicom_io.send.replay, {parallel} associations (dcmtk not installed)"


def _send(files: Sequence[Path], ports: Sequence[int], parallel: int, logs: Path) -> None:
    """``files`` over ``parallel`` associations, the i-th to ``ports[i % len(ports)]``; every one must succeed."""
    from triage.bench.ingest import STORESCU, executable, send_storescu

    chunks = [list(files[i * len(files) // parallel : (i + 1) * len(files) // parallel]) for i in range(parallel)]
    targets = [(chunk, ports[i % len(ports)]) for i, chunk in enumerate(chunks) if chunk]
    problems = send_storescu(targets, SERVE_AE, logs) if executable(STORESCU) else _send_replay(targets)
    if problems:
        raise BenchFailure(f"sending: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def _send_replay(targets: Sequence[tuple[list[Path], int]]) -> list[str]:
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from dicom_io.send import DicomFile, replay

    problems: list[str] = []

    def one(chunk: list[Path], port: int) -> None:
        files = [DicomFile(f, str(CTImageStorage), str(ExplicitVRLittleEndian)) for f in chunk]
        summary = replay(files, HOST, port, called_ae=SERVE_AE, calling_ae=CALLING_AE, parallel=1, timeout=60)
        if summary.failed:
            problems.append(f"{summary.failed} instances not acknowledged (first: {summary.failures[0][1]})")

    threads = [threading.Thread(target=one, args=target) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return problems


# -- phase 2: scoring -----------------------------------------------------------------------------
def _scoring_phase(config: ScaleBenchConfig, root: Path, empty_toml: Path, dbs: _Databases, say: Progress, runs: list[ScoringRun]) -> None:
    workdir = root / "scoring"
    data = workdir / "data"  # one store for every run: the workers only read it
    say(f"scoring: generating {config.studies} head CTs of {config.study_slices} slices {config.study_size}x{config.study_size}")
    files = _head_cts(config, root / "studies")
    received = dbs.create("received")
    say(f"scoring: 1 listener receives them (stable wait {config.stable_after:g} s) until every series has its job")
    env = _serve_env(role="listener", db_url=dbs.url(received), data_dir=data, stable_after=config.stable_after)
    with _served_many(1, "listener", workdir / "receive", empty_toml, env) as servers:
        _send(files, [servers[0].port], min(config.parallel, config.studies), workdir / "receive" / "send")
        _wait_jobs(dbs.url(received), config.studies, JOBS_TIMEOUT_S + config.stable_after, servers[0])
        _stop_all(servers)
    for workers in (1, 2):
        copy = dbs.create(f"score{workers}", template=received)
        url = dbs.url(copy)
        _hold_jobs(url)
        env = _serve_env(role="worker", db_url=url, data_dir=data, device=config.device)
        say(
            f"scoring: {workers} worker{'s' if workers > 1 else ''} on {config.device}: starting (jobs held "
            "until every worker has loaded its detectors)"
        )
        with _served_many(workers, "worker", workdir / f"workers{workers}", empty_toml, env) as servers:
            released = _release_jobs(url)
            timeout = JOBS_TIMEOUT_S + config.studies * PER_STUDY_TIMEOUT_S
            last_scored = _wait_scored(url, config.studies, timeout, servers)
            _stop_all(servers)
        run = ScoringRun(workers, config.studies, (last_scored - released).total_seconds(), *_check_scored(url, workers))
        if not run.scored_once:
            raise BenchFailure(f"{workers} worker(s): a series was scored more than once or not at all")
        say(
            f"scoring: {workers} worker(s): {run.studies_per_hour:,.0f} studies/hour "
            f"(jobs per worker: {', '.join(map(str, run.jobs_by_worker))})"
        )
        runs.append(run)


def _head_cts(config: ScaleBenchConfig, folder: Path) -> list[Path]:
    """``config.studies`` head CTs (CT Image Storage, Explicit VR Little Endian, body part HEAD), one series each."""
    from dicom_io.writer import StudyMeta, ct_datasets, simple_head_volume, write_datasets

    spacing = 256.0 / config.study_size  # a ~25 cm field of view at any matrix, as `bench triage`
    paths: list[Path] = []
    for i in range(config.studies):
        meta = StudyMeta(patient_id=f"SCALE{i:05d}", patient_name="BENCH^SCALE", accession_number=f"SCALE{i:05d}", body_part="HEAD")
        volume = simple_head_volume(config.study_slices, config.study_size, seed=i)  # (slices, rows, cols), HU
        datasets = ct_datasets(volume, meta=meta, pixel_spacing_mm=(spacing, spacing))
        paths.extend(write_datasets(datasets, folder / f"study{i:05d}"))
    return paths


def _wait_jobs(url: str, expected: int, timeout: float, server: ServedProcess) -> None:
    """Until the index has ``expected`` series, each complete with one pending job."""
    from sqlalchemy import func, select

    from triage.store.tables import JOB as job
    from triage.store.tables import SERIES as series

    engine = _engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                n_series = conn.execute(select(func.count()).select_from(series)).scalar_one()
                n_jobs = conn.execute(select(func.count()).select_from(job)).scalar_one()
                n_with = conn.execute(select(func.count(func.distinct(job.c.series_pk)))).scalar_one()
            if n_series > expected or n_jobs > n_with:
                raise BenchFailure(
                    f"the listener made {n_series} series and {n_jobs} jobs for {n_with} of them; "
                    f"expected {expected} series with one job each"
                )
            if n_series == expected and n_jobs == expected:
                return
            server.check_alive()
            if time.monotonic() > deadline:
                raise BenchFailure(f"{n_jobs} of {expected} series complete with a job within {timeout:.0f} s{server.tail()}")
            time.sleep(POLL_S)  # polling a condition (series complete?), not a guess at a duration
    finally:
        engine.dispose()


def _hold_jobs(url: str) -> None:
    """Make every pending job look leased far into the future, so no worker claims it yet."""
    from sqlalchemy import update

    from triage.clock import utcnow
    from triage.store.tables import JOB as job
    from triage.vocabulary import JobStatus

    engine = _engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(job)
                .where(job.c.status == JobStatus.PENDING.value)
                .values(status=JobStatus.RUNNING.value, worker=HOLDER, lease_until=utcnow() + HOLD)
            )
    finally:
        engine.dispose()


def _release_jobs(url: str) -> datetime:
    """Give the held jobs back to the queue; the time just before, which starts the clock."""
    from sqlalchemy import update

    from triage.clock import utcnow
    from triage.store.tables import JOB as job
    from triage.vocabulary import JobStatus

    engine = _engine(url)
    try:
        released = utcnow()
        with engine.begin() as conn:
            conn.execute(update(job).where(job.c.worker == HOLDER).values(status=JobStatus.PENDING.value, worker=None, lease_until=None))
        return released
    finally:
        engine.dispose()


def _wait_scored(url: str, expected: int, timeout: float, servers: Sequence[ServedProcess]) -> datetime:
    """Until every study has been scored; the last one's ``scored_at``. Any other AI status fails."""
    from sqlalchemy import func, select

    from triage.store.tables import STUDY as study
    from triage.vocabulary import AIStatus

    engine = _engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                done = conn.execute(
                    select(study.c.study_uid, study.c.ai_status, study.c.ai_reason, study.c.scored_at).where(
                        study.c.scored_at.is_not(None), study.c.ai_status != AIStatus.PENDING.value
                    )
                ).all()
                last = conn.execute(select(func.max(study.c.scored_at))).scalar_one()
            for row in done:
                if row.ai_status != AIStatus.SCORED.value:
                    raise BenchFailure(f"study {row.study_uid}: AI {row.ai_status}: {row.ai_reason or 'no reason given'}")
            if len(done) == expected:
                return as_utc(last)
            for server in servers:
                server.check_alive()
            if time.monotonic() > deadline:
                raise BenchFailure(f"{expected - len(done)} of {expected} studies not scored within {timeout:.0f} s{servers[0].tail()}")
            time.sleep(POLL_S)
    finally:
        engine.dispose()


def _check_scored(url: str, workers: int) -> tuple[tuple[int, ...], bool]:
    """(jobs done by each of ``workers``, most first, 0 for one that did none; whether every series was scored
    exactly once).

    Exactly once: every job done, one job per series, one result per series,
    and one inference audit event per series.
    """
    from sqlalchemy import func, select

    from triage.store.tables import EVENT as event
    from triage.store.tables import JOB as job
    from triage.store.tables import RESULT as result
    from triage.store.tables import SERIES as series
    from triage.vocabulary import JobStatus

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            n_series = conn.execute(select(func.count()).select_from(series)).scalar_one()
            statuses: dict[str, int] = dict(conn.execute(select(job.c.status, func.count()).group_by(job.c.status)).all())
            per_worker = conn.execute(
                select(job.c.worker, func.count()).where(job.c.status == JobStatus.DONE.value).group_by(job.c.worker)
            ).all()
            results = conn.execute(select(func.count(), func.count(func.distinct(result.c.series_pk)))).one()
            inferences = conn.execute(select(func.count()).select_from(event).where(event.c.action == "inference")).scalar_one()
    finally:
        engine.dispose()
    once = statuses == {JobStatus.DONE.value: n_series} and tuple(results) == (n_series, n_series) and inferences == n_series
    done = sorted((int(n) for _w, n in per_worker), reverse=True)
    return tuple(done + [0] * (workers - len(done))), once


# -- the served processes -------------------------------------------------------------------------
def _serve_env(*, role: str, db_url: str, data_dir: Path, stable_after: float | None = None, device: str | None = None) -> dict[str, str]:
    """The environment of a served process: ours, with its role, database and data directory.

    Other ``TRIAGE_*`` variables pass through, so settings can be compared
    (``TRIAGE_PIPELINE__CONCURRENT_JOBS=1 triage bench scale``). The database
    and data directory go by environment because ``--db`` and ``--data-dir``
    exclude each other on the command line.
    """
    env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
    env.update({"TRIAGE_ROLE": role, "TRIAGE_DB": db_url, "TRIAGE_DATA_DIR": str(data_dir)})
    if stable_after is not None:
        env["TRIAGE_COMPLETENESS__STABLE_AFTER"] = repr(float(stable_after))
        env["TRIAGE_COMPLETENESS__PER_MODALITY"] = "{}"  # CT waits exactly this
    if device is not None:
        env["TRIAGE_DETECTORS__DEVICE"] = device
    return env


def _served_settings(config_file: Path, env: dict[str, str] | None = None) -> Any:
    """The settings of a served process (a bad ``TRIAGE_*`` variable fails here, in one line)."""
    from triage.config import load_settings

    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
    return load_settings(config_file, environ=env)


@contextmanager
def _served_many(count: int, role: str, workdir: Path, config_file: Path, env: dict[str, str]) -> Iterator[list[ServedProcess]]:
    """``count`` servers of one role, started together and each waited for; all stopped on the way out."""
    processes = _served_settings(config_file, env).listener.process_count
    servers: list[ServedProcess] = []
    try:
        for i in range(count):
            servers.append(ServedProcess(workdir, config_file, env, name=f"{role}{i + 1}", role=role, processes=processes))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.terminate()  # all at once: their shutdowns overlap
        for server in servers:
            server.stop()


def _stop_all(servers: Sequence[ServedProcess]) -> None:
    """Stop them all (at once); a server that failed to stop cleanly fails the run."""
    for server in servers:
        server.terminate()
    problems = [p for p in (s.stop() for s in servers) if p]
    if problems:
        raise BenchFailure(problems[0])


# -- the machine ----------------------------------------------------------------------------------
def _check_space(root: Path, config: ScaleBenchConfig) -> None:
    slice_bytes = config.size * config.size * 2 + HEADER_BYTES
    study_bytes = config.study_slices * (config.study_size**2 * 2 + HEADER_BYTES)
    # The inputs, and the instances stored by each of the two ingest runs; the studies' inputs and store.
    needed = int(((config.n + 16) * slice_bytes * 3 + config.studies * study_bytes * 2) * 1.2)
    check_space(root, needed, "--n or --size")


# -- report -------------------------------------------------------------------------------------
def format_report(result: ScaleBenchResult) -> str:
    """The result as the lines the CLI prints."""
    r, c = result, result.config
    lines = [
        f"triage bench scale: 1 vs 2 listeners (ingest) and 1 vs 2 workers (scoring) on one PostgreSQL, "
        f"on one machine ({r.cpus} CPU cores, {r.machine})",
        f"database: {r.database}",
        "",
        f"ingest: {c.n} CT slices {c.size}x{c.size} over {c.parallel} parallel associations ({r.sender}), "
        f"{r.warmup_instances} untimed warm-up instances first; each listener runs {r.listener_processes} "
        "listener process(es); a fresh database and data directory per run",
    ]
    for run in r.ingest:
        per = c.parallel // run.listeners
        lines.append(
            f"  {run.listeners} listener{'s' if run.listeners > 1 else ' '}: {run.instances} images in "
            f"{run.seconds:.2f} s = {run.images_per_s:,.0f} images/s ({per} associations each; "
            f"{run.stored_files} files stored, {run.indexed_rows} indexed)"
        )
    lines.append(f"  2 listeners vs 1: {times(r.ingest_ratio)}")
    lines += [
        "",
        f"scoring: {c.studies} head CTs of {c.study_slices} slices {c.study_size}x{c.study_size} received by 1 "
        f"listener (stable wait {c.stable_after:g} s), then scored on {c.device}; each run on a fresh copy of the "
        "received database (CREATE DATABASE ... TEMPLATE), jobs released once every worker had loaded its detectors",
    ]
    for scoring in r.scoring:
        split = " + ".join(map(str, scoring.jobs_by_worker))
        lines.append(
            f"  {scoring.workers} worker{'s' if scoring.workers > 1 else ' '}: {scoring.studies} studies in "
            f"{scoring.seconds:.2f} s = {scoring.studies_per_hour:,.0f} studies/hour (jobs per worker: {split}; "
            f"{'each series scored exactly once' if scoring.scored_once else 'NOT scored exactly once'})"
        )
    lines.append(f"  2 workers vs 1: {times(r.scoring_ratio)}")
    lines.append("")
    lines += [f"note: {note}" for note in r.notes]
    return "\n".join(lines)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``triage bench scale``."""
    d = ScaleBenchConfig()
    parser.add_argument(
        "--db",
        metavar="URL",
        help="a PostgreSQL server to use (postgresql+psycopg://user@host/database; the bench creates "
        "and drops its own databases there, so the role needs CREATEDB); default: a "
        "throw-away server from Debian's binaries",
    )
    parser.add_argument("--n", type=int, default=d.n, help=f"ingest: CT slices sent per run (default {d.n})")
    parser.add_argument("--size", type=int, default=d.size, help=f"ingest: slice rows and columns (default {d.size})")
    parser.add_argument(
        "--parallel",
        type=int,
        default=d.parallel,
        help=f"ingest: associations in all, split evenly between the listeners (default {d.parallel})",
    )
    parser.add_argument("--studies", type=int, default=d.studies, help=f"scoring: head CTs (default {d.studies})")
    parser.add_argument("--study-slices", type=int, default=d.study_slices, help=f"scoring: slices per study (default {d.study_slices})")
    parser.add_argument("--study-size", type=int, default=d.study_size, help=f"scoring: slice rows and columns (default {d.study_size})")
    parser.add_argument(
        "--stable-after",
        type=float,
        default=d.stable_after,
        metavar="SECONDS",
        help=f"scoring: the receiving listener's series stability wait (default {d.stable_after:g})",
    )
    parser.add_argument("--device", default=d.device, help=f"the workers' detectors' device (default {d.device})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, inputs, logs) and, with --db, the databases")
    parser.add_argument("--json", action="store_true", help="JSON instead of the report")


def run(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments; 0 when every instance and study was handled exactly once."""
    config = ScaleBenchConfig(
        db=args.db,
        n=args.n,
        size=args.size,
        parallel=args.parallel,
        studies=args.studies,
        study_slices=args.study_slices,
        study_size=args.study_size,
        stable_after=args.stable_after,
        device=args.device,
        keep=args.keep,
    )
    result = run_scale_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.as_json(), indent=2) if args.json else "\n" + format_report(result))
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 0 if result.ok else 1
