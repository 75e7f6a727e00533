"""Helpers of the end-to-end tests: ports, waiting, running `triage` and `triage serve`, reading what a server stored."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from dicom_io.writer import StudyMeta, ct_datasets, simple_head_volume, write_datasets
from tests.support import REPO_ROOT
from triage.bench.common import free_port

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
# Generous for a slow 2-core CI runner: a cold `python -m triage serve` imports
# sqlmodel, pydicom and pynetdicom before it listens.
SERVE_START_TIMEOUT = 60.0
SERVE_STOP_TIMEOUT = 20.0


# -- small utilities -----------------------------------------------------------


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Parameters
    ----------
    timeout
        Seconds before giving up with :class:`TimeoutError` naming ``what``.
    ignore
        Exceptions that mean "not yet" (e.g. connection refused).
    abort
        Called between attempts; a returned message fails at once (e.g. the
        server process died, so waiting longer is pointless).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except ignore as exc:
            last_error = exc
        else:
            if result:
                return result
        if abort is not None and (message := abort()):
            raise AssertionError(f"gave up waiting for {what}: {message}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def require_binary(path: str) -> str:
    """Return ``path`` if it is an executable; else skip, or fail when ``$CI`` is
    set (CI installs dcmtk and Orthanc with ``scripts/install-test-deps``)."""
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    reason = f"{path} not found (install it with scripts/install-test-deps)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without ``TRIAGE_*`` settings, plus ``extra``,
    so a developer's own settings cannot leak into a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(extra or {})
    return env


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after the file meta."""
    meta = read_file_meta_info(path)
    # 128-byte preamble + "DICM" + the (0002,0000) element (12 bytes) + the group it counts.
    offset = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    return path.read_bytes()[offset:]


def sop_uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def pydicom_test_file(name: str) -> Path:
    """A file bundled with pydicom (never downloaded: the tests run offline)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    assert found is not None, f"pydicom's bundled test file {name} is missing"
    return Path(str(found))


def write_ct_series(out_dir: Path, *, slices: int, size: int = 64, seed: int = 0, **meta: object) -> dict[str, Path]:
    """Write a generated CT series; returns ``{SOP Instance UID: path}``.

    ``meta`` overrides :class:`dicom_io.writer.StudyMeta` fields (e.g. a shared
    ``study_uid`` to put several series in one study).
    """
    volume = simple_head_volume(slices=slices, size=size, seed=seed)
    # A head-sized field of view (about 190 mm whatever the matrix): the bleed detector assesses a
    # series only where it finds a skull enclosing an intracranial space, and a 32 mm "head" has none.
    spacing = 192.0 / size
    paths = write_datasets(ct_datasets(volume, pixel_spacing_mm=(spacing, spacing), meta=StudyMeta(**meta)), out_dir)
    return {sop_uid_of(p): p for p in paths}


def _strip_encoding_details(ds: Dataset) -> Dataset:
    """Drop what a re-encoding sender may legitimately change (group lengths,
    PS3.5 7.2; trailing Data Set Trailing Padding, PS3.10 7.2), recursively."""
    for elem in list(ds):
        if elem.tag.element == 0x0000 or elem.tag == 0xFFFCFFFC:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _strip_encoding_details(item)
    return ds


def assert_same_instance(stored: Path, source: Path) -> None:
    """``stored`` holds the same dataset as ``source``, in the same transfer syntax,
    with the pixel data bytes (compressed fragments included) unchanged.

    For senders that re-encode the dataset (dcmtk, Orthanc) but do not transcode.
    """
    a, b = dcmread(source), dcmread(stored)
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID, stored
    assert b.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID, stored
    assert a.PixelData == b.PixelData, f"pixel data of {stored.name} differs from {source.name}"
    a, b = _strip_encoding_details(a), _strip_encoding_details(b)
    only_in_one = {e.tag for e in a} ^ {e.tag for e in b}
    changed = {e.tag for e in a if e.tag in b and e != b[e.tag]}
    differing = sorted(only_in_one | changed)
    assert not differing, f"{stored.name}: elements differ from {source.name}: {differing}"


# -- reading back what the product stored ------------------------------------------


def run_triage(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m triage ARGS`` from the repository root; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "triage", *args],
        cwd=REPO_ROOT,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def studies_json(data_dir: Path) -> dict[str, dict[str, object]]:
    """``triage studies --data-dir DIR --json``, keyed by Study Instance UID."""
    done = run_triage("studies", "--data-dir", str(data_dir), "--json")
    assert done.returncode == 0, f"triage studies failed ({done.returncode}): {done.stderr}"
    return {row["study_uid"]: row for row in json.loads(done.stdout)}


@dataclass(frozen=True)
class IndexedInstance:
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    path: str  # relative to the data directory
    size_bytes: int
    sha256: str
    transfer_syntax: str
    calling_ae: str | None
    conflicts: int


def _connect(data_dir: Path) -> sqlite3.Connection:
    # A plain reader beside the server's writer (the index is in WAL mode).
    return sqlite3.connect(data_dir / "triage.db", timeout=30)


def count_indexed(data_dir: Path) -> int:
    """Rows in the instance table (0 while the database does not exist yet)."""
    if not (data_dir / "triage.db").exists():
        return 0
    conn = _connect(data_dir)
    try:
        return int(conn.execute("SELECT count(*) FROM instance").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    finally:
        conn.close()


def indexed_instances(data_dir: Path) -> list[IndexedInstance]:
    """Every row of the instance table, joined to its series and study UIDs."""
    conn = _connect(data_dir)
    try:
        rows = conn.execute(
            "SELECT i.sop_instance_uid, se.series_uid, st.study_uid, i.path, i.size_bytes, i.sha256,"
            " i.transfer_syntax, i.calling_ae, i.conflicts"
            " FROM instance i JOIN series se ON se.id = i.series_pk JOIN study st ON st.id = se.study_pk"
        ).fetchall()
    finally:
        conn.close()
    return [IndexedInstance(*row) for row in rows]


def assert_counters_match(data_dir: Path) -> None:
    """Study and series counters (``num_instances``, ``num_series``) equal the rows they count."""
    conn = _connect(data_dir)
    try:
        bad_series = conn.execute(
            "SELECT se.series_uid, se.num_instances, count(i.id) FROM series se"
            " LEFT JOIN instance i ON i.series_pk = se.id GROUP BY se.id HAVING se.num_instances != count(i.id)"
        ).fetchall()
        bad_studies = conn.execute(
            "SELECT st.study_uid, st.num_instances, st.num_series,"
            " (SELECT count(*) FROM instance i JOIN series se ON se.id = i.series_pk WHERE se.study_pk = st.id),"
            " (SELECT count(*) FROM series se WHERE se.study_pk = st.id)"
            " FROM study st"
        ).fetchall()
    finally:
        conn.close()
    assert not bad_series, f"series num_instances != instance rows: {bad_series}"
    bad_studies = [r for r in bad_studies if (r[1], r[2]) != (r[3], r[4])]
    assert not bad_studies, f"study (num_instances, num_series) != real counts: {bad_studies}"


def assert_stored(data_dir: Path, expected: Mapping[str, Path], *, calling_ae: str | None = None) -> dict[str, IndexedInstance]:
    """Exactly the instances of ``expected`` ({SOP UID: source file}) are indexed,
    each once, each with one file on disk at its indexed path whose size and
    SHA-256 are the indexed ones, in the source's transfer syntax. Returns the
    index rows by SOP UID."""
    rows = indexed_instances(data_dir)
    by_sop = {r.sop_instance_uid: r for r in rows}
    assert len(by_sop) == len(rows), "an SOP Instance UID is indexed twice"
    assert set(by_sop) == set(expected), f"missing {sorted(set(expected) - set(by_sop))}, unexpected {sorted(set(by_sop) - set(expected))}"
    on_disk = sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "studies").rglob("*.dcm"))
    assert on_disk == sorted(r.path for r in rows), "files under studies/ are not exactly the indexed ones"
    for sop, row in by_sop.items():
        f = data_dir / row.path
        assert row.path == f"studies/{row.study_uid}/{row.series_uid}/{sop}.dcm"
        assert f.stat().st_size == row.size_bytes, row.path
        assert sha256_file(f) == row.sha256, f"{row.path}: sha256 differs from the index"
        assert row.transfer_syntax == str(read_file_meta_info(expected[sop]).TransferSyntaxUID), row.path
        assert row.conflicts == 0, row.path
        if calling_ae is not None:
            assert row.calling_ae == calling_ae, row.path
    assert not list(data_dir.rglob("*.tmp")), "temporary files left in the data directory"
    assert_counters_match(data_dir)
    return by_sop


# -- triage serve as a subprocess --------------------------------------------------


@dataclass
class ServeProcess:
    """One ``python -m triage serve`` subprocess on a loopback port."""

    data_dir: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    calling_ae: str = "TRIAGESCU"  # for the readiness C-ECHO (mind listener.allowed_ae_titles)
    expect_clean_exit: bool = True  # False once the test has killed it on purpose

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def died(self) -> str | None:
        if self.running:
            return None
        return f"triage serve exited with {self.proc.returncode}; log:\n{self.log_text()[-4000:]}"

    def wait_ready(self, timeout: float = SERVE_START_TIMEOUT) -> None:
        """Wait until a C-ECHO succeeds (recovery has run and the listener is up)."""
        from dicom_io.send import echo
        from triage.errors import DicomNetworkError

        wait_for(
            lambda: echo(LOCALHOST, self.port, calling_ae=self.calling_ae, timeout=5) >= 0,
            timeout=timeout,
            what=f"C-ECHO to triage serve on {self.address}",
            interval=0.2,
            ignore=(DicomNetworkError, OSError),
            abort=self.died,
        )

    def stop(self, timeout: float = SERVE_STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` s, and return the exit code; a server
        that does not stop in time is killed and the test fails."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"triage serve did not stop within {timeout:.0f} s of SIGTERM; log:\n{self.log_text()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs."""
        self.expect_clean_exit = False
        self.proc.kill()
        self.proc.wait(timeout=SERVE_STOP_TIMEOUT)


@dataclass
class ServeFactory:
    """Starts ``triage serve`` processes; the fixture stops them all at teardown."""

    tmp_path: Path
    started: list[ServeProcess] = field(default_factory=list)

    def start(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        calling_ae: str = "TRIAGESCU",
        wait: bool = True,
        args: Sequence[str] = (),
    ) -> ServeProcess:
        """Start ``triage serve --data-dir DATA_DIR`` on a free loopback port.

        ``env`` adds ``TRIAGE_*`` settings; series complete after 1 s unless
        it says otherwise. An empty ``--config`` file keeps a developer's
        ``./triage.toml`` out of the test. ``args`` are more flags (e.g.
        ``--db URL --role worker``). With ``wait``, returns once a C-ECHO
        from ``calling_ae`` succeeds (a worker-role server does not listen:
        start it with ``wait=False``).
        """
        config = self.tmp_path / "empty-triage.toml"
        config.touch()
        for attempt in range(3):
            port = free_port()
            log_path = self.tmp_path / f"serve-{len(self.started)}.log"
            cmd = [
                sys.executable,
                "-m",
                "triage",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--host",
                LOCALHOST,
                "--config",
                str(config),
                *args,
            ]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=clean_env({"TRIAGE_COMPLETENESS__STABLE_AFTER": "1", **(env or {})}),
                )
            server = ServeProcess(data_dir, port, log_path, proc, calling_ae)
            self.started.append(server)
            if not wait:
                return server
            try:
                server.wait_ready()
                return server
            except AssertionError:
                # Another process took the free port between our probe and its bind.
                if attempt == 2 or "Address already in use" not in server.log_text():
                    raise
                server.expect_clean_exit = False
        raise AssertionError("unreachable")

    def stop_all(self) -> list[str]:
        """Stop every process still running; returns the problems found."""
        problems = []
        for server in self.started:
            if not server.running and not server.expect_clean_exit:
                continue
            try:
                code = server.stop()
            except AssertionError as exc:
                problems.append(str(exc))
                continue
            if server.expect_clean_exit and code != 0:
                problems.append(f"triage serve on {server.address} exited with {code}; log:\n{server.log_text()[-4000:]}")
            elif server.expect_clean_exit and "Traceback" in server.log_text():
                problems.append(f"triage serve on {server.address} logged a traceback:\n{server.log_text()[-4000:]}")
        return problems
