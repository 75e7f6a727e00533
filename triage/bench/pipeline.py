"""``triage bench triage``: time to triage, sustained studies/hour and memory of a running ``triage serve``.

One run, one machine, in this order so that nothing competes for the CPUs:

1. Baseline: the same head CT (a ``--slices`` x ``--size`` x ``--size`` CT,
   body part HEAD, so it routes to the bleed detector) scored offline in this
   process from its DICOM files, with the engine settings ``triage serve``
   will use (:func:`triage.flow.scoring.score_series`, as the scoring worker calls
   it); the median of a few runs after a warm-up. The engine is closed before
   the server starts.
2. ``triage serve`` as a subprocess on a throw-away data directory, with the
   completeness stability wait set to ``--stable-after``; ready once it
   answers C-ECHO and has ranked one untimed warm-up study (which also loads
   and warms its detectors).
3. Latency: ``--latency-studies`` studies one at a time, each sent on one
   association and waited for until it is ranked. Time to triage is read from
   the server's own DB timestamps: ``Study.scored_at`` minus the last
   instance's arrival (``Series.last_received``) minus the stability wait. It
   still includes the completeness check's polling (``completeness.
   check_interval``), the job claim, reading the files, scoring and recording.
4. Throughput and memory: ``--studies`` studies back to back (one association
   each, one after another), then a wait until all are ranked. Sustained
   studies/hour is N over first instance received to last study ranked. The
   resident memory of the server and its listener processes (summed RSS) is
   sampled after each study and twice a second while waiting.

Every replayed study is the same pixels under fresh Study/Series/SOP Instance
UIDs, so each is new to the server and costs the same work. Every study must be
ranked with ``ai_status`` scored; anything else is reported and the command
exits 1. Targets are printed with their verdicts; they decide nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.bench.common import HOST, BenchFailure, check_space, load_average, machine, ratio, times
from triage.bench.served import CALLING_AE, SERVE_AE, ServedProcess
from triage.clock import as_utc
from triage.config import available_cores
from triage.errors import TriageError

# pydicom, pynetdicom, NumPy and torch are imported where they are used:
# `triage` builds every subcommand's parser on each start (see bench.infer).
if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from triage.config import Settings


MIN_SIZE, MAX_SIZE = 32, 1024
MAX_SLICES = 400
HEADER_BYTES = 2048  # rough size of file meta + CT header per instance

TARGET_BEYOND_STABLE_S = 2.0  # the issue: p95 at most 2 s beyond the stability wait...
TARGET_SLICES = 40  # ...for a 40-slice head CT...
TARGET_CPUS = 2  # ...on this 2-core machine
FLAT_GROWTH = 1.10  # "memory flat": the last tenth's median within 10% of the first tenth's
TARGET_MEMORY_STUDIES = 500  # "memory flat over 500 studies"
SEND_BOUND = 0.8  # sending took at least this share of the throughput time: sending and receiving bound it

WARMUP_TIMEOUT_S = 300.0  # the first study waits for torch and the detectors to load
STUDY_TIMEOUT_S = 120.0  # beyond the stability wait, for one study to be ranked when idle
PER_STUDY_BACKLOG_S = 10.0  # throughput wait: this much per study (or 10x offline scoring, if more)
NETWORK_TIMEOUT_S = 60
POLL_S = 0.05  # reading the index for one study's rank
SAMPLE_S = 0.5  # memory samples (and index reads) while waiting for a backlog

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

Progress = Callable[[str], None]


# -- what is run ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineBenchConfig:
    """What to measure (the CLI's flags)."""

    studies: int = 40  # throughput + memory phase
    latency_studies: int = 20  # one at a time
    size: int = 512  # rows = cols
    slices: int = 40
    stable_after: float = 2.0  # seconds: completeness.stable_after for the served listener
    device: str = "cpu"  # for both the baseline and the server
    baseline_runs: int = 3
    keep: bool = False

    def check(self) -> None:
        """Raise :class:`TriageError` naming the first bad option."""
        if self.studies < 1:
            raise TriageError(f"--studies must be at least 1, got {self.studies}")
        if self.latency_studies < 1:
            raise TriageError(f"--latency-studies must be at least 1, got {self.latency_studies}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise TriageError(f"--size must be between {MIN_SIZE} and {MAX_SIZE}, got {self.size}")
        if not 1 <= self.slices <= MAX_SLICES:
            raise TriageError(f"--slices must be between 1 and {MAX_SLICES}, got {self.slices}")
        if not self.stable_after > 0:  # also refuses NaN
            raise TriageError(f"--stable-after must be a positive number of seconds, got {self.stable_after}")
        if not _DEVICE.match(self.device):
            raise TriageError(f'--device must be "auto", "cpu", "cuda", "cuda:N" or "mps", got {self.device!r}')
        if self.baseline_runs < 1:
            raise TriageError(f"--baseline-runs must be at least 1, got {self.baseline_runs}")


@dataclass(frozen=True)
class StudyRow:
    """One study as the server's index has it (``scored_at`` is None until it is ranked)."""

    study_uid: str
    ai_status: str
    ai_reason: str | None
    first_received: datetime
    last_received: datetime  # the last instance of any of its series
    scored_at: datetime | None

    @property
    def ranked(self) -> bool:
        return self.scored_at is not None and self.ai_status != "pending"


@dataclass(frozen=True)
class Memory:
    """Summed RSS of the server and its children, in bytes, in the order sampled."""

    samples: tuple[int, ...]

    @property
    def peak(self) -> int:
        return max(self.samples)

    @property
    def start(self) -> float:
        """Median of the first tenth of the samples (at least one)."""
        return _median(self.samples[: _tenth(len(self.samples))])

    @property
    def end(self) -> float:
        """Median of the last tenth of the samples (at least one)."""
        return _median(self.samples[-_tenth(len(self.samples)) :])

    @property
    def growth(self) -> float:
        return self.end / self.start if self.start > 0 else 0.0

    @property
    def flat(self) -> bool:
        return 0 < self.growth <= FLAT_GROWTH


@dataclass(frozen=True)
class PipelineBenchResult:
    """Every figure of one run; ratios are computed from the measurements, never stored."""

    config: PipelineBenchConfig
    cpus: int
    machine: str
    check_interval: float  # completeness.check_interval the server ran with
    offline_runs_s: tuple[float, ...] = ()
    latency_s: tuple[float, ...] = ()  # time to triage, one study at a time
    throughput_studies: int = 0
    throughput_s: float | None = None  # first instance received to last study ranked
    send_s: float | None = None  # sending the throughput studies, back to back
    loaded_latency_s: tuple[float, ...] = ()  # time to triage of the throughput studies
    memory: Memory | None = None
    serve_exit_code: int | None = None
    notes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def offline_s(self) -> float | None:
        return _median(self.offline_runs_s) if self.offline_runs_s else None

    @property
    def offline_per_hour(self) -> float | None:
        return 3600.0 / self.offline_s if self.offline_s else None

    @property
    def p50_s(self) -> float | None:
        return percentile(self.latency_s, 50)

    @property
    def p95_s(self) -> float | None:
        return percentile(self.latency_s, 95)

    @property
    def p95_vs_target(self) -> float | None:
        return self.p95_s / TARGET_BEYOND_STABLE_S if self.p95_s is not None else None

    @property
    def p50_vs_offline(self) -> float | None:
        return ratio(self.p50_s, self.offline_s)

    @property
    def studies_per_hour(self) -> float | None:
        if not self.throughput_s or self.throughput_s <= 0:
            return None
        return self.throughput_studies / self.throughput_s * 3600.0

    @property
    def throughput_vs_offline(self) -> float | None:
        return ratio(self.studies_per_hour, self.offline_per_hour)

    @property
    def latency_met(self) -> bool | None:
        return None if self.p95_s is None else self.p95_s <= TARGET_BEYOND_STABLE_S

    @property
    def memory_met(self) -> bool | None:
        return None if self.memory is None else self.memory.flat

    def as_json(self) -> dict[str, Any]:
        c = self.config
        mem = self.memory
        mib = 2**20
        return {
            "machine": {"cpus": self.cpus, "platform": self.machine},
            "config": {**{k: v for k, v in asdict(c).items() if k != "keep"}, "check_interval_s": self.check_interval},
            "baseline": {
                "what": "the same study scored offline from its files in this process (triage.flow.scoring.score_series)",
                "runs_s": list(self.offline_runs_s),
                "median_s": self.offline_s,
                "studies_per_hour": self.offline_per_hour,
            },
            "latency": {
                "studies": len(self.latency_s),
                "time_to_triage_s": list(self.latency_s),
                "p50_s": self.p50_s,
                "p95_s": self.p95_s,
                "target_s": TARGET_BEYOND_STABLE_S,
                "p95_vs_target": self.p95_vs_target,
                "p50_vs_offline": self.p50_vs_offline,
            },
            "throughput": {
                "studies": self.throughput_studies,
                "seconds": self.throughput_s,
                "send_s": self.send_s,
                "studies_per_hour": self.studies_per_hour,
                "vs_offline": self.throughput_vs_offline,
                "time_to_triage_p50_s": percentile(self.loaded_latency_s, 50),
                "time_to_triage_p95_s": percentile(self.loaded_latency_s, 95),
            },
            "memory": None
            if mem is None
            else {
                "samples": len(mem.samples),
                "peak_mib": mem.peak / mib,
                "start_mib": mem.start / mib,
                "end_mib": mem.end / mib,
                "growth": mem.growth,
                "flat_limit": FLAT_GROWTH,
                "flat": mem.flat,
            },
            "targets": {
                "p95_beyond_stable_s": {"limit_s": TARGET_BEYOND_STABLE_S, "met": self.latency_met},
                "memory_flat": {
                    "limit_growth": FLAT_GROWTH,
                    "studies": self.throughput_studies,
                    "target_studies": TARGET_MEMORY_STUDIES,
                    "met": self.memory_met,
                },
            },
            "serve_exit_code": self.serve_exit_code,
            "ok": self.ok,
            "notes": list(self.notes),
            "problems": list(self.problems),
        }


# -- small pure pieces --------------------------------------------------------------------------
def parse_db_time(value: str | datetime) -> datetime:
    """A timestamp as SQLite holds it ('YYYY-MM-DD HH:MM:SS[.ffffff]', UTC, no zone) -> aware UTC.

    An aware value (PostgreSQL, or a text with an offset) is converted to UTC.
    """
    return as_utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def time_to_triage(last_received: datetime, scored_at: datetime, stable_after: float) -> float:
    """Seconds from the last instance received to the study ranked, minus the stability wait."""
    return (scored_at - last_received).total_seconds() - stable_after


def percentile(values: Sequence[float], q: float) -> float | None:
    """NumPy's (linear) percentile, or None for no values."""
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _tenth(n: int) -> int:
    return max(1, n // 10)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, summed (shared pages count in each).

    Read from ``/proc`` (Linux); processes that exit while being read count 0.
    """
    total, seen, stack = 0, set(), [pid]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _vmrss(p)
        stack.extend(_children(p))
    return total


def _vmrss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kids
    for task in tasks:
        try:
            kids.extend(int(k) for k in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return kids


# -- the bench ----------------------------------------------------------------------------------
def run_pipeline_bench(config: PipelineBenchConfig, progress: Progress | None = None) -> PipelineBenchResult:
    """Measure time to triage, sustained studies/hour and memory of ``triage serve``; see the module docstring.

    Parameters
    ----------
    config
        What to run.
    progress
        Called with a line before each stage (the CLI prints them on stderr).

    Returns
    -------
    PipelineBenchResult
        The figures; ``problems`` is non-empty when a study was not ranked as
        scored or the server failed (the figures measured until then stand).

    Raises
    ------
    TriageError
        Bad options, bad ``TRIAGE_*`` settings, or too little free disk space.
    """
    config.check()
    say = progress or (lambda _line: None)
    notes: list[str] = []
    load = load_average()
    if load > 0.5:  # read before we start: other processes' load, not ours
        notes.append(f"other work on the CPUs: load average {load:.1f} before the run ({available_cores()} CPUs); figures are noisy")
    root = Path(tempfile.mkdtemp(prefix="triage-bench-pipeline-"))
    try:
        _check_space(root, config)
        env = _serve_env(config)
        empty_toml = root / "empty.toml"  # so that a triage.toml where we run does not change the server
        empty_toml.write_text("")
        settings = _serve_settings(empty_toml, env, root / "serve" / "data")
        say(f"generating a {config.slices}-slice {config.size}x{config.size} head CT")
        datasets = _head_ct(config)
        result = PipelineBenchResult(
            config=config, cpus=available_cores(), machine=machine(), check_interval=settings.completeness.check_interval
        )
        fields: dict[str, Any] = {}
        problems: list[str] = []
        try:
            fields["offline_runs_s"] = _offline_baseline(datasets, root / "baseline", config, settings, say)
            with _served(root / "serve", empty_toml, env, settings, say) as server:
                try:
                    _measure(server, datasets, config, fields, say)
                finally:
                    stop_problem = server.stop()
                    fields["serve_exit_code"] = server.returncode
                    if stop_problem:
                        problems.append(stop_problem)
        except BenchFailure as exc:
            problems.insert(0, str(exc))
        send_s, throughput_s = fields.get("send_s"), fields.get("throughput_s")
        if send_s and throughput_s and send_s >= SEND_BOUND * throughput_s:
            notes.append(
                f"sending took {send_s / throughput_s:.0%} of the throughput time: with one association "
                "at a time, sending and receiving, not scoring, bound studies/hour"
            )
        if config.keep:
            notes.append(f"kept {root} (the server's data, index and log are in {root / 'serve'})")
        if available_cores() != TARGET_CPUS:
            notes.append(
                f"the targets are for {TARGET_CPUS} CPU cores; this run had {available_cores()} "
                f"(`taskset -c 0,1 triage bench triage` measures the target's setting)"
            )
        # A server that died is reported by the wait that noticed and again by stop(): once is enough.
        return replace(result, **fields, notes=tuple(notes), problems=tuple(dict.fromkeys(problems)))
    finally:
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)


def _measure(server: _Server, datasets: list[Dataset], config: PipelineBenchConfig, fields: dict[str, Any], say: Progress) -> None:
    """The warm-up, latency and throughput phases; fills ``fields`` as each phase ends."""
    stable = config.stable_after
    with _Index(server.db_path) as index:
        sender = _StudySender(server.port)
        say("warm-up study (loads the server's detectors; not counted)")
        uid = _restamp(datasets, "W000000")
        sender.send(datasets)
        server.wait_ranked(index, [uid], WARMUP_TIMEOUT_S + stable)

        say(f"latency: {config.latency_studies} studies one at a time (stable wait {stable:g} s)")
        latency: list[float] = []
        for i in range(config.latency_studies):
            uid = _restamp(datasets, f"L{i:06d}")
            sender.send(datasets)
            (row,) = server.wait_ranked(index, [uid], STUDY_TIMEOUT_S + stable)
            assert row.scored_at is not None  # wait_ranked returns ranked rows only
            latency.append(time_to_triage(row.last_received, row.scored_at, stable))
            fields["latency_s"] = tuple(latency)

        n = config.studies
        say(f"throughput: {n} studies back to back, then until all are ranked")
        uids: list[str] = []
        samples: list[int] = []
        started = time.perf_counter()
        for i in range(n):
            uids.append(_restamp(datasets, f"T{i:06d}"))
            sender.send(datasets)
            samples.append(tree_rss_bytes(server.pid))
            server.check_alive()
        fields["send_s"] = time.perf_counter() - started
        offline = _median(fields["offline_runs_s"])
        timeout = STUDY_TIMEOUT_S + stable + n * max(PER_STUDY_BACKLOG_S, 10 * offline)
        try:
            rows = server.wait_ranked(index, uids, timeout, on_wait=lambda: samples.append(tree_rss_bytes(server.pid)))
        finally:
            samples.append(tree_rss_bytes(server.pid))
            if any(samples):
                fields["memory"] = Memory(tuple(s for s in samples if s > 0))
        fields["throughput_studies"] = n
        last_ranked = max(r.scored_at for r in rows if r.scored_at is not None)
        fields["throughput_s"] = (last_ranked - min(r.first_received for r in rows)).total_seconds()
        fields["loaded_latency_s"] = tuple(time_to_triage(r.last_received, r.scored_at, stable) for r in rows if r.scored_at is not None)


# -- inputs -----------------------------------------------------------------------------------
def _head_ct(config: PipelineBenchConfig) -> list[Dataset]:
    """The study replayed throughout: CT Image Storage, Explicit VR Little Endian, body part HEAD."""
    from dicom_io.writer import StudyMeta, ct_datasets, simple_head_volume

    meta = StudyMeta(patient_id="BENCHPIPE", patient_name="BENCH^PIPELINE", accession_number="BENCH", body_part="HEAD")
    # 0.5 mm pixels at 512, as scanners do for a head; the field of view stays ~25 cm at other sizes.
    spacing = 256.0 / config.size
    volume = simple_head_volume(config.slices, config.size, seed=0)  # (slices, rows, cols), HU
    return list(ct_datasets(volume, meta=meta, pixel_spacing_mm=(spacing, spacing)))


def _restamp(datasets: list[Dataset], tag: str) -> str:
    """Give the study fresh Study/Series/SOP Instance UIDs (and an accession); returns the Study UID.

    In place rather than on a copy: studies are sent one after another and
    pynetdicom has encoded a dataset by the time ``send_c_store`` returns, so
    nothing holds the previous UIDs; a copy would duplicate every slice's pixels.
    """
    from pydicom.uid import generate_uid

    from dicom_io.writer import UID_ROOT

    study_uid, series_uid = generate_uid(UID_ROOT), generate_uid(UID_ROOT)
    for ds in datasets:
        sop_uid = generate_uid(UID_ROOT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.AccessionNumber = f"B{tag}"  # at most 16 characters (SH)
    return study_uid


def _check_space(root: Path, config: PipelineBenchConfig) -> None:
    studies = config.studies + config.latency_studies + 2  # + warm-up + the baseline's files
    needed = int(studies * config.slices * (config.size * config.size * 2 + HEADER_BYTES) * 1.2)
    check_space(root, needed, "--studies or --size")


# -- baseline ---------------------------------------------------------------------------------
def _offline_baseline(
    datasets: list[Dataset], folder: Path, config: PipelineBenchConfig, settings: Settings, say: Progress
) -> tuple[float, ...]:
    """Seconds to score the study from its files in this process, ``config.baseline_runs`` times after a warm-up.

    The engine has the server's settings (``[detectors]`` and ``TRIAGE_DETECTORS__*``)
    and is closed before returning, so it does not compete with the server.
    """
    from detectors.engine import InferenceEngine
    from detectors.registry import load_detectors
    from detectors.spec import CardError
    from dicom_io.writer import write_datasets
    from triage.flow.scoring import score_series

    paths = write_datasets(iter(datasets), folder)
    series_uid = str(datasets[0].SeriesInstanceUID)
    cfg = settings.detectors
    say(f"offline baseline: scoring the study from its files {config.baseline_runs} times after a warm-up")
    try:
        engine = InferenceEngine(cfg.device, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, workers=cfg.workers)
    except ValueError as exc:
        raise TriageError(f"--device: {exc}") from None
    try:
        try:
            detectors = load_detectors(cfg.external, device=str(engine.device))
        except CardError as exc:
            raise TriageError(f"detectors: {exc}") from None
        runs: list[float] = []
        for i in range(config.baseline_runs + 1):
            started = time.perf_counter()
            score = score_series(series_uid, paths, detectors, engine)
            seconds = time.perf_counter() - started
            if score.failures or not score.findings:
                why = "; ".join(score.failures) or score.reason
                raise BenchFailure(f"offline baseline: the head CT was not scored ({why})")
            if i:  # the first run is the warm-up
                runs.append(seconds)
    finally:
        engine.close()  # its threads and torch's pool idle from here; the weights go with this frame
    shutil.rmtree(folder, ignore_errors=True)
    return tuple(runs)


# -- the server -------------------------------------------------------------------------------
def _serve_env(config: PipelineBenchConfig) -> dict[str, str]:
    """The environment of the served process: ours, with the stability wait and device set.

    Other ``TRIAGE_*`` variables pass through (except the DB and config file),
    so settings can be compared: ``TRIAGE_PIPELINE__CONCURRENT_JOBS=1 triage bench triage``.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("TRIAGE_DB", "TRIAGE_CONFIG")}
    env["TRIAGE_COMPLETENESS__STABLE_AFTER"] = repr(float(config.stable_after))
    env["TRIAGE_COMPLETENESS__PER_MODALITY"] = "{}"  # CT must wait exactly stable_after, which is subtracted
    env["TRIAGE_DETECTORS__DEVICE"] = config.device
    return env


def _serve_settings(config_file: Path, env: dict[str, str], data_dir: Path) -> Settings:
    """The settings the served process will run with (a bad ``TRIAGE_*`` variable fails here, in one line)."""
    from triage.config import load_settings

    return load_settings(config_file, overrides={"data_dir": str(data_dir)}, environ=env)


class _Server(ServedProcess):
    """The bench's ``triage serve``, and the wait that reads its index."""

    def __init__(self, workdir: Path, config_file: Path, env: dict[str, str], data_dir: Path, stable_after: float) -> None:
        super().__init__(workdir, config_file, env, data_dir=data_dir)
        self.db_path = data_dir / "triage.db"
        self.stable_after = stable_after

    def wait_ranked(self, index: _Index, uids: Sequence[str], timeout: float, on_wait: Callable[[], None] | None = None) -> list[StudyRow]:
        """Wait until every study in ``uids`` is ranked; its rows, in the order of ``uids``.

        Raises :class:`BenchFailure` when one is ranked with an AI status other
        than scored, the server exits, or ``timeout`` seconds pass. With
        ``on_wait`` (memory sampling) the index is read every
        :data:`SAMPLE_S`, otherwise every :data:`POLL_S` (a study's rank time
        comes from the index, so the polling rate does not change it).
        """
        deadline = time.monotonic() + timeout
        wanted = set(uids)
        while True:
            rows = index.rows(uids if len(uids) == 1 else None)
            rows = {uid: r for uid, r in rows.items() if uid in wanted}
            for r in rows.values():
                if r.ranked and r.ai_status != "scored":
                    raise BenchFailure(f"study {r.study_uid}: AI {r.ai_status}: {r.ai_reason or 'no reason given'}")
            if len(rows) == len(wanted) and all(r.ranked for r in rows.values()):
                return [rows[uid] for uid in uids]
            self.check_alive()
            if time.monotonic() > deadline:
                waiting = len(wanted) - sum(1 for r in rows.values() if r.ranked)
                raise BenchFailure(f"{waiting} of {len(wanted)} studies not ranked within {timeout:.0f} s{self.tail()}")
            if on_wait is not None:
                on_wait()
            time.sleep(SAMPLE_S if on_wait is not None else POLL_S)


@contextmanager
def _served(workdir: Path, config_file: Path, env: dict[str, str], settings: Settings, say: Progress) -> Iterator[_Server]:
    """Start ``triage serve`` on a throw-away data directory; stopped (SIGKILL if need be) on the way out."""
    server = _Server(workdir, config_file, env, settings.data_dir, settings.completeness.stable_after)
    say(f"started triage serve on {HOST}:{server.port} (stable wait {settings.completeness.stable_after:g} s)")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()  # a no-op when the caller already stopped it


class _Index:
    """Read-only access to the server's SQLite index (WAL: reading never blocks its writer)."""

    _QUERY = (
        "SELECT st.study_uid, st.ai_status, st.ai_reason, st.first_received, MAX(se.last_received), st.scored_at "
        "FROM study st JOIN series se ON se.study_pk = st.id"
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def __enter__(self) -> _Index:
        if not self.path.exists():
            raise BenchFailure(f"triage serve has no index at {self.path}")
        self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.conn is not None:
            self.conn.close()

    def rows(self, uids: Collection[str] | None = None) -> dict[str, StudyRow]:
        """Every study (or those of ``uids``) with its latest arrival and rank time."""
        assert self.conn is not None
        sql, params = self._QUERY, tuple[str, ...]()
        if uids is not None:
            sql += f" WHERE st.study_uid IN ({','.join('?' * len(uids))})"
            params = tuple(uids)
        try:
            found = self.conn.execute(sql + " GROUP BY st.id", params).fetchall()
        except sqlite3.Error as exc:
            raise BenchFailure(f"cannot read the server's index {self.path}: {exc}") from None
        out = {}
        for uid, status, reason, first, last, scored in found:
            out[uid] = StudyRow(
                uid, status, reason, parse_db_time(first), parse_db_time(last), parse_db_time(scored) if scored is not None else None
            )
        return out


class _StudySender:
    """C-STOREs a study's datasets on one association; every status must be success (0x0000)."""

    def __init__(self, port: int) -> None:
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
        from pynetdicom import AE

        self.port = port
        self.ae = AE(ae_title=CALLING_AE)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = NETWORK_TIMEOUT_S
        self.ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)

    def send(self, datasets: Sequence[Dataset]) -> None:
        assoc = self.ae.associate(HOST, self.port, ae_title=SERVE_AE)
        if not assoc.is_established:
            raise BenchFailure(f"no association with triage serve on {HOST}:{self.port}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if not status or "Status" not in status:
                    raise BenchFailure(f"C-STORE of instance {ds.InstanceNumber}: no response (association lost)")
                if status.Status != 0x0000:
                    raise BenchFailure(f"C-STORE of instance {ds.InstanceNumber}: status 0x{status.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()


# -- report -------------------------------------------------------------------------------------
def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "MISSED")


def format_report(result: PipelineBenchResult) -> str:
    """The result as the lines the CLI prints."""
    r, c = result, result.config
    stable = f"{c.stable_after:g} s"
    lines = [
        f"triage bench: a head CT of {c.slices} slices {c.size}x{c.size} replayed into triage serve: 1 warm-up, "
        f"{c.latency_studies} one at a time, {c.studies} back to back",
        f"machine: {r.cpus} CPU cores, {r.machine}; device {c.device}; stable wait {stable} "
        f"(completeness checked every {r.check_interval:g} s)",
        "",
    ]
    runs = ", ".join(f"{s:.2f}" for s in r.offline_runs_s)
    per_hour = f"{r.offline_per_hour:,.0f} studies/hour" if r.offline_per_hour else "-"
    lines.append(
        f"baseline, the study scored offline from its files in this process: {_s(r.offline_s)} median ({runs or '-'} s) = {per_hour}"
    )
    lines.append(f"time to triage (last instance received -> ranked, minus the {stable} wait), {len(r.latency_s)} studies one at a time:")
    lines.append(f"  p50 {_s(r.p50_s)} = {times(r.p50_vs_offline)} offline scoring")
    lines.append(f"  p95 {_s(r.p95_s)} = {times(r.p95_vs_target)} the {TARGET_BEYOND_STABLE_S:g} s target")
    if r.studies_per_hour is not None:
        lines.append(
            f"throughput, {r.throughput_studies} studies back to back (sent in {_s(r.send_s, 1)}): "
            f"{_s(r.throughput_s, 1)} from the first instance received to the last study ranked "
            f"= {r.studies_per_hour:,.0f} studies/hour = {times(r.throughput_vs_offline)} offline scoring"
        )
        lines.append(
            f"  time to triage under that load: p50 {_s(percentile(r.loaded_latency_s, 50))}, p95 {_s(percentile(r.loaded_latency_s, 95))}"
        )
    else:
        lines.append("throughput: not measured")
    mem = r.memory
    if mem is not None and mem.samples:
        mib = 2**20
        lines.append(
            f"memory, triage serve + its listener processes (RSS summed, {len(mem.samples)} samples): "
            f"peak {mem.peak / mib:.0f} MiB; first tenth {mem.start / mib:.0f} MiB, last tenth "
            f"{mem.end / mib:.0f} MiB: growth {times(mem.growth)} ({'flat' if mem.flat else 'GROWING'})"
        )
    else:
        lines.append("memory: not measured")
    lines.append("")
    setting = []
    if c.slices != TARGET_SLICES:
        setting.append(f"the target is for {TARGET_SLICES} slices, this run had {c.slices}")
    if r.cpus != TARGET_CPUS:
        setting.append(f"the target is for {TARGET_CPUS} cores, this run had {r.cpus}")
    lines.append(
        f"target: p95 time to triage <= {TARGET_BEYOND_STABLE_S:g} s beyond the stable wait: "
        f"{_verdict(r.latency_met)} ({_s(r.p95_s)}{'; ' + '; '.join(setting) if setting else ''})"
    )
    over = "" if r.throughput_studies >= TARGET_MEMORY_STUDIES else f"; the target is over {TARGET_MEMORY_STUDIES}"
    lines.append(
        f"target: memory flat (growth <= {FLAT_GROWTH:.2f}x) over {TARGET_MEMORY_STUDIES} studies: "
        f"{_verdict(r.memory_met)} ({times(mem.growth if mem else None)} over {r.throughput_studies} "
        f"studies{over})"
    )
    lines += [f"note: {note}" for note in r.notes]
    return "\n".join(lines)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``triage bench triage``."""
    d = PipelineBenchConfig()
    parser.add_argument(
        "--studies", type=int, default=d.studies, help=f"studies sent back to back for throughput and memory (default {d.studies})"
    )
    parser.add_argument(
        "--latency-studies",
        type=int,
        default=d.latency_studies,
        help=f"studies sent one at a time for time to triage (default {d.latency_studies})",
    )
    parser.add_argument("--size", type=int, default=d.size, help=f"CT rows and columns (default {d.size})")
    parser.add_argument("--slices", type=int, default=d.slices, help=f"slices per study (default {d.slices})")
    parser.add_argument(
        "--stable-after",
        type=float,
        default=d.stable_after,
        metavar="SECONDS",
        help=f"the server's series stability wait (default {d.stable_after:g})",
    )
    parser.add_argument("--device", default=d.device, help=f"the detectors' device, for the baseline and the server (default {d.device})")
    parser.add_argument(
        "--baseline-runs", type=int, default=d.baseline_runs, help=f"timed offline scorings of the study (default {d.baseline_runs})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server data, index, log)")
    parser.add_argument("--json", action="store_true", help="JSON instead of the report")


def run(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments; 0 when every study was ranked as scored and the server stopped cleanly."""
    config = PipelineBenchConfig(
        studies=args.studies,
        latency_studies=args.latency_studies,
        size=args.size,
        slices=args.slices,
        stable_after=args.stable_after,
        device=args.device,
        baseline_runs=args.baseline_runs,
        keep=args.keep,
    )
    result = run_pipeline_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.as_json(), indent=2) if args.json else "\n" + format_report(result))
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 0 if result.ok else 1
