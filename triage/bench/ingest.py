"""``triage bench ingest``: images/s into ``triage serve`` against pynetdicom's
and dcmtk's storescp, measured in one run on one machine.

The same N generated CT slices are sent over K parallel associations to each
receiver in turn:

- ``triage serve`` (a subprocess on a throw-away data directory): it answers a
  C-STORE only after the file is fsynced and its index row committed, so its
  figure includes indexing;
- pynetdicom's ``storescp`` app, writing files to a folder (decode, re-encode,
  no fsync, no index);
- dcmtk's ``storescp --fork`` when installed (writes files, no fsync, no index).

The sender must outpace every receiver, so it is dcmtk's ``storescu`` as K
processes with ``TCP_NODELAY=1`` (Debian's dcmtk otherwise keeps Nagle on and
stalls about 40 ms per message). Without dcmtk the project's own
:func:`dicom_io.send.replay` sends, and the output says so.

Every receiver must really have stored every instance (files counted on disk,
and for triage rows in its index); if one lost any, the bench reports an error
and exits non-zero. ``TRIAGE_*`` environment variables (except ``TRIAGE_DB`` and
``TRIAGE_CONFIG``) reach the served listener, so listener settings can be
compared: ``TRIAGE_LISTENER__MAX_PDU=16384 triage bench ingest``. Scoring is
off in the served process (``TRIAGE_PIPELINE__ENABLED=false`` unless set):
this bench measures ingest; ``triage bench triage`` measures the pipeline.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicom_io.send import DicomFile, echo, replay
from dicom_io.writer import StudyMeta, ct_datasets, simple_head_volume, write_datasets
from triage.bench.common import HOST, check_space, free_port, quiet_pynetdicom, ratio, times
from triage.config import ListenerSettings
from triage.errors import USER_ERRORS, DicomNetworkError, TriageError
from triage.progress import progress_bar

log = logging.getLogger(__name__)

T = TypeVar("T")

STORESCU = Path("/usr/bin/storescu")  # full path: pynetdicom installs a `storescu` of its own
DCMTK_STORESCP = Path("/usr/bin/storescp")
CALLING_AE = "BENCHSCU"
TRIAGE, PYNETDICOM, DCMTK = "triage serve", "pynetdicom storescp", "dcmtk storescp --fork"

MAX_SERIES_SLICES = 100
GENERATION_BUDGET_BYTES = 256 * 2**20  # float64 noise of one generated series volume
MIN_SIZE, MAX_SIZE = 16, 2048
MAX_PARALLEL = 64
HEADER_BYTES = 2048  # rough size of file meta + CT header per instance

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
NETWORK_TIMEOUT_S = 60

# Targets reported (not asserted): triage vs pynetdicom's storescp, and a stretch vs dcmtk.
TARGET_VS_PYNETDICOM = 2.0
STRETCH_VS_DCMTK = 0.5


# -- what is run ------------------------------------------------------------
@dataclass(frozen=True)
class Receiver:
    """One storage SCP to benchmark, as a command to start and where it stores."""

    name: str
    ae_title: str
    port: int
    argv: list[str]
    env: dict[str, str]
    workdir: Path  # cwd and log file
    files_dir: Path  # where its stored instances are counted
    note: str
    index_db: Path | None = None  # triage only: the SQLite index whose rows are counted

    @property
    def log_path(self) -> Path:
        return self.workdir / "receiver.log"


@dataclass
class RunResult:
    """What one receiver did with the timed batch."""

    receiver: Receiver
    expected: int
    seconds: float = 0.0
    stored_files: int = 0
    indexed_rows: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def images_per_s(self) -> float:
        return self.expected / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Inputs:
    """The generated instances: a small untimed warm-up batch and the timed one."""

    warmup: list[Path]
    timed: list[Path]


# A sender sends files to HOST:port (called AE) over K associations and
# returns the problems it saw (empty when every sender said success).
Sender = Callable[[list[Path], int, str, Path], list[str]]


# -- entry point ------------------------------------------------------------
def run_ingest_bench(n: int, parallel: int, size: int, keep: bool) -> int:
    """Run the ingest benchmark and print images/s and ratios per receiver.

    Parameters
    ----------
    n
        Instances sent (timed) to each receiver.
    parallel
        Parallel associations, one sender process each.
    size
        Rows and columns of each CT slice.
    keep
        Keep the temporary folder (inputs, receivers' data and logs).

    Returns
    -------
    int
        0 when every receiver stored every instance, 1 otherwise.

    Raises
    ------
    TriageError
        On bad arguments or too little free disk space.
    """
    _check_args(n, parallel, size)
    have_dcmtk = executable(STORESCU) and executable(DCMTK_STORESCP)
    root = Path(tempfile.mkdtemp(prefix="triage-bench-ingest-"))
    try:
        warmup_n = min(parallel, 8) * 2
        receivers_n = 3 if have_dcmtk else 2
        check_space(root, (n + warmup_n) * (size * size * 2 + HEADER_BYTES) * (receivers_n + 1), "--n or --size")
        sender, sender_text = _pick_sender(parallel, have_dcmtk)
        _print_header(n, parallel, size, warmup_n, root, sender_text)
        inputs = generate_inputs(root / "inputs", n, warmup_n, size)
        results = [_run_receiver(r, inputs, sender) for r in _receivers(root, have_dcmtk)]
        print()
        _print_table(results, have_dcmtk)
        return _verdict(results)
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _check_args(n: int, parallel: int, size: int) -> None:
    if n < 1:
        raise TriageError(f"--n must be at least 1, got {n}")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise TriageError(f"--parallel must be between 1 and {MAX_PARALLEL}, got {parallel}")
    if parallel > n:
        raise TriageError(f"--parallel ({parallel}) must not exceed --n ({n})")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise TriageError(f"--size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# -- inputs -----------------------------------------------------------------
def generate_inputs(folder: Path, n: int, warmup_n: int, size: int) -> Inputs:
    """Write ``warmup_n + n`` CT slices as series of up to 100; unique UIDs throughout."""
    per_series = _slices_per_series(size)
    with progress_bar(n + warmup_n, f"generating {n + warmup_n} CT slices {size}x{size}") as advance:
        warmup = _write_series(folder / "warmup", warmup_n, size, per_series, advance, first_seed=10_000)
        timed = _write_series(folder / "timed", n, size, per_series, advance, first_seed=0)
    os.sync()  # so writing the inputs back does not land in the first receiver's timing
    return Inputs(warmup, timed)


def _slices_per_series(size: int) -> int:
    return max(1, min(MAX_SERIES_SLICES, GENERATION_BUDGET_BYTES // (size * size * 8)))


def _write_series(folder: Path, count: int, size: int, per_series: int, advance: Callable[[], None], first_seed: int) -> list[Path]:
    paths: list[Path] = []
    for i, start in enumerate(range(0, count, per_series)):
        slices = min(per_series, count - start)
        seed = first_seed + i
        meta = StudyMeta(patient_id=f"BENCH{seed:05d}", accession_number=f"BENCH{seed:05d}")
        volume = simple_head_volume(slices, size, seed=seed)  # (slices, rows, cols), HU
        datasets = _advancing(ct_datasets(volume, meta=meta), advance)
        paths.extend(write_datasets(datasets, folder / f"series{i:04d}"))
    return paths


def _advancing(items: Iterable[T], advance: Callable[[], None]) -> Iterator[T]:
    for item in items:
        yield item
        advance()


# -- receivers --------------------------------------------------------------
def _receivers(root: Path, have_dcmtk: bool) -> list[Receiver]:
    receivers = [_triage_receiver(root / "triage"), _pynetdicom_receiver(root / "pynetdicom")]
    if have_dcmtk:
        receivers.append(_dcmtk_receiver(root / "dcmtk"))
    return receivers


def _triage_receiver(workdir: Path) -> Receiver:
    data = workdir / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TRIAGE_DB", "TRIAGE_CONFIG")}
    env["TRIAGE_LOG_LEVEL"] = "WARNING"
    # Ingest alone, as a listener-only host runs it: loading torch and the
    # detectors while the images arrive would measure the model load, not ingest
    # (`triage bench triage` measures the whole pipeline).
    env.setdefault("TRIAGE_PIPELINE__ENABLED", "false")
    argv = [sys.executable, "-m", "triage", "serve", "--data-dir", str(data), "--port", str(port), "--host", HOST]
    pdu = env.get("TRIAGE_LISTENER__MAX_PDU") or ListenerSettings.model_fields["max_pdu"].default
    note = f"dataset walked to its end, fsync file + dir, SQLite index commit; max PDU {pdu}"
    return Receiver(TRIAGE, "TRIAGE", port, argv, env, workdir, data / "studies", note, data / "triage.db")


def _pynetdicom_receiver(workdir: Path) -> Receiver:
    out = workdir / "out"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "pynetdicom",
        "storescp",
        str(port),
        "--output-directory",
        str(out),
        "--ae-title",
        "PYNETDICOM",
        "--bind-address",
        HOST,
    ]
    note = "decode + re-encode to a file, no fsync; max PDU 16382 (its default)"
    return Receiver(PYNETDICOM, "PYNETDICOM", port, argv, dict(os.environ), workdir, out, note)


def _dcmtk_receiver(workdir: Path) -> Receiver:
    out = workdir / "out"
    port = free_port()
    argv = [str(DCMTK_STORESCP), "--fork", "-od", str(out), "-aet", "DCMTK", str(port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    note = "file, no fsync, a process per association; max PDU 16384 (its default)"
    return Receiver(DCMTK, "DCMTK", port, argv, env, workdir, out, note)


def _run_receiver(receiver: Receiver, inputs: Inputs, sender: Sender) -> RunResult:
    """Start ``receiver``, warm it up, time the batch, stop it, check what it stored."""
    result = RunResult(receiver, expected=len(inputs.timed))
    receiver.workdir.mkdir(parents=True)
    receiver.files_dir.mkdir(parents=True, exist_ok=True)
    port = receiver.port
    print(f"{receiver.name}: starting on port {port} ...", flush=True)
    with open(receiver.log_path, "wb") as log_file:
        proc = subprocess.Popen(
            receiver.argv,
            env=receiver.env,
            cwd=receiver.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sent = ready = False
    try:
        _wait_ready(proc, receiver, port)
        ready = True
        problems = sender(inputs.warmup, port, receiver.ae_title, receiver.workdir / "warmup")
        result.problems += [f"warm-up: {p}" for p in problems]
        os.sync()  # the warm-up's dirty pages are not the timed batch's cost
        start = time.perf_counter()
        result.problems += sender(inputs.timed, port, receiver.ae_title, receiver.workdir / "timed")
        result.seconds = time.perf_counter() - start
        sent = True
    except USER_ERRORS as exc:
        result.problems.append(str(exc))
    finally:
        stop_problems = _stop(proc, receiver)
        if ready:  # a start failure already said how it exited
            result.problems += stop_problems
    if sent:
        _check_stored(result, len(inputs.warmup) + len(inputs.timed))
    if result.ok:
        print(f"{receiver.name}: {result.expected} images in {result.seconds:.2f} s, {result.images_per_s:.0f} images/s", flush=True)
    else:
        print(f"{receiver.name}: FAILED: {result.problems[0]}", flush=True)
    return result


def _wait_ready(proc: subprocess.Popen[bytes], receiver: Receiver, port: int) -> None:
    """Return once the receiver answers C-ECHO; raise if it exits or never does."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with quiet_pynetdicom():  # "connection refused" until it listens is expected
        while True:
            if proc.poll() is not None:
                raise TriageError(f"exited with code {proc.returncode} before answering C-ECHO{_tail(receiver)}")
            try:
                echo(HOST, port, called_ae=receiver.ae_title, calling_ae=CALLING_AE, timeout=5)
                return
            except DicomNetworkError:
                if time.monotonic() > deadline:
                    raise TriageError(f"no C-ECHO answer within {READY_TIMEOUT_S:.0f} s{_tail(receiver)}") from None
                time.sleep(0.05)  # polling a condition (listening yet?), not a guess at a duration


def _stop(proc: subprocess.Popen[bytes], receiver: Receiver) -> list[str]:
    """SIGTERM the receiver's process group (dcmtk --fork has children) and wait."""
    if proc.poll() is not None:
        return [] if proc.returncode == 0 else [f"exited early with code {proc.returncode}{_tail(receiver)}"]
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return [f"did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; killed"]
    return []


def _tail(receiver: Receiver, lines: int = 5) -> str:
    try:
        text = receiver.log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return (": " + " | ".join(text[-lines:])) if text else ""


def _check_stored(result: RunResult, total: int) -> None:
    """Files on disk (and triage's index rows) must number warm-up + timed."""
    receiver = result.receiver
    result.stored_files = count_files(receiver.files_dir)
    if result.stored_files != total:
        result.problems.append(f"{result.stored_files} files stored, expected {total}")
    if receiver.index_db is not None:
        result.indexed_rows = _count_index_rows(receiver.index_db)
        if result.indexed_rows != total:
            result.problems.append(f"{result.indexed_rows} rows in the index, expected {total}")


def count_files(folder: Path) -> int:
    """Regular files under ``folder``, leaving out hidden (temporary) ones."""
    count = 0
    for _dirpath, _dirs, files in os.walk(folder):
        count += sum(1 for name in files if not name.startswith("."))
    return count


def _count_index_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM instance").fetchone()[0])
    except sqlite3.Error as exc:
        log.error("cannot count rows in %s: %s", db, exc)
        return 0
    finally:
        conn.close()


# -- senders ----------------------------------------------------------------
def _pick_sender(parallel: int, have_dcmtk: bool) -> tuple[Sender, str]:
    if have_dcmtk:
        text = f"dcmtk storescu x{parallel} processes (TCP_NODELAY=1)"
        return (lambda files, port, ae, logs: _send_storescu(files, port, ae, parallel, logs)), text
    text = (
        f"dicom_io.send.replay, {parallel} associations (dcmtk not installed: "
        "the sender shares this process and may limit the fastest receiver)"
    )
    return (lambda files, port, ae, _logs: _send_replay(files, port, ae, parallel)), text


def _send_storescu(files: list[Path], port: int, called_ae: str, parallel: int, logs: Path) -> list[str]:
    """K storescu processes, each with a contiguous 1/K of ``files``; wait for all."""
    chunks = [files[i * len(files) // parallel : (i + 1) * len(files) // parallel] for i in range(parallel)]
    return send_storescu([(chunk, port) for chunk in chunks if chunk], called_ae, logs)


def send_storescu(targets: Sequence[tuple[list[Path], int]], called_ae: str, logs: Path) -> list[str]:
    """One dcmtk storescu process per ``(files, port)`` target, all at once; wait for all; their problems."""
    logs.mkdir(parents=True, exist_ok=True)
    # Debian's dcmtk leaves Nagle on unless told: ~40 ms per message otherwise.
    env = {**os.environ, "TCP_NODELAY": "1"}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, (chunk, port) in enumerate(targets):
            log_path = logs / f"storescu{i}.log"
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    _storescu_argv(chunk, port, called_ae), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            procs.append((proc, log_path))
        return [p for p in (_storescu_problem(proc, log_path) for proc, log_path in procs) if p]
    finally:
        for proc, _ in procs:  # only left running when we are interrupted
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _storescu_argv(files: list[Path], port: int, called_ae: str) -> list[str]:
    # -R: propose only the contexts the files need; -nh: go on after a failed store.
    timeouts = ["-to", str(NETWORK_TIMEOUT_S), "-ts", str(NETWORK_TIMEOUT_S)]
    return [str(STORESCU), "-R", "-nh", "-aet", CALLING_AE, "-aec", called_ae, *timeouts, HOST, str(port), *map(str, files)]


def _storescu_problem(proc: subprocess.Popen[bytes], log_path: Path) -> str | None:
    if proc.wait() == 0:
        return None
    last = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return f"storescu exited with code {proc.returncode}: {last[0]}"


def _send_replay(files: list[Path], port: int, called_ae: str, parallel: int) -> list[str]:
    # The inputs are ours (CT Image Storage, Explicit VR Little Endian): no need to read their meta.
    dicom_files = [DicomFile(f, str(CTImageStorage), str(ExplicitVRLittleEndian)) for f in files]
    summary = replay(dicom_files, HOST, port, called_ae=called_ae, calling_ae=CALLING_AE, parallel=parallel, timeout=NETWORK_TIMEOUT_S)
    if summary.failed:
        return [f"{summary.failed} instances not acknowledged (first: {summary.failures[0][1]})"]
    return []


# -- report -----------------------------------------------------------------
def _print_header(n: int, parallel: int, size: int, warmup_n: int, root: Path, sender: str) -> None:
    slice_kib = (size * size * 2 + HEADER_BYTES) / 1024
    print(
        f"ingest bench: {n} CT slices {size}x{size} (~{slice_kib:.0f} KiB each), "
        f"{parallel} parallel associations, {warmup_n} untimed warm-up instances first"
    )
    print(
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, temp on {_filesystem(root)} ({root})"
    )
    print(f"sender: {sender}")
    print()


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or 'unknown'."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown filesystem"
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")), key=lambda m: len(m[0]), default=None
    )
    return best[1] if best else "unknown filesystem"


def _versus(result: RunResult, baseline: RunResult | None) -> str:
    """``1.83x`` of the baseline's images/s, or ``-`` when either run failed."""
    if baseline is None or not (result.ok and baseline.ok) or baseline.images_per_s <= 0:
        return "-"
    return times(ratio(result.images_per_s, baseline.images_per_s))


def _print_table(results: list[RunResult], have_dcmtk: bool) -> None:
    by_name = {r.receiver.name: r for r in results}
    pyn, dcmtk = by_name.get(PYNETDICOM), by_name.get(DCMTK)
    rows = [("receiver", "images/s", "seconds", "vs pynetdicom", "vs dcmtk", "per instance")]
    for r in results:
        rate = f"{r.images_per_s:.0f}" if r.ok else "FAILED"
        seconds = f"{r.seconds:.2f}" if r.seconds else "-"
        rows.append((r.receiver.name, rate, seconds, _versus(r, pyn), _versus(r, dcmtk), r.receiver.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:5], widths[1:5], strict=False)] + [row[5]]
        print("  ".join(cells))
    if not have_dcmtk:
        print("dcmtk storescp: not installed (apt-get install dcmtk), skipped")
    triage = by_name[TRIAGE]
    print()
    print(_target_line(triage, pyn, TARGET_VS_PYNETDICOM, "target", "pynetdicom storescp"))
    if dcmtk is not None:
        print(_target_line(triage, dcmtk, STRETCH_VS_DCMTK, "stretch", "dcmtk storescp"))


def _target_line(triage: RunResult, baseline: RunResult | None, goal: float, kind: str, name: str) -> str:
    if baseline is None or not (triage.ok and baseline.ok):
        return f"{kind}: triage >= {goal:g}x {name}: not measured"
    ratio = triage.images_per_s / baseline.images_per_s
    return f"{kind}: triage >= {goal:g}x {name}: {'met' if ratio >= goal else 'NOT met'} ({ratio:.2f}x)"


def _verdict(results: list[RunResult]) -> int:
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"error: {r.receiver.name}: {'; '.join(r.problems)}", file=sys.stderr)
    return 1 if failed else 0
