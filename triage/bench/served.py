"""``triage serve`` as a subprocess: the one harness of the benches that measure a running server.

``triage bench triage`` runs one, ``triage bench scale`` several (listeners and
workers). Each runs in its own session (its listener processes go with it),
logs to a file, is ready once it answers C-ECHO with all its listener
processes up (a listener) or says its detectors are loaded (a worker), and is
stopped with one SIGTERM, then SIGKILL of its session past a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from triage.bench.common import HOST, BenchFailure, free_port, quiet_pynetdicom

SERVE_AE = "TRIAGE"  # triage serve's default AE title
CALLING_AE = "BENCHSCU"
READY_TIMEOUT_S = 60.0  # a listener answers C-ECHO
WORKER_READY_TIMEOUT_S = 300.0  # a worker has imported torch and loaded its detectors
STOP_TIMEOUT_S = 90.0  # serve's own shutdown waits for its listener processes and the series in flight
READY_POLL_S = 0.05

# ScoringWorker.start logs this once torch and the detectors are loaded (triage.flow.pipeline).
WORKER_READY = re.compile(r"scoring worker \S+: \d+ detectors on ")
# TriageServer.start logs this once every listener process has started (triage.app.server); the first one
# answers C-ECHO before the others are up.
LISTENERS_UP = re.compile(r"listening as \S+ on \S+ with \d+ listener processes")


class ServedProcess:
    """One ``triage serve`` subprocess.

    ``role`` "listener" listens on a free loopback port; "worker" only scores.
    ``processes`` is its ``listener.processes`` (readiness waits for all of
    them). ``data_dir``, when given, is passed as ``--data-dir``; the log is
    ``workdir/<name>.log``.
    """

    def __init__(
        self,
        workdir: Path,
        config_file: Path,
        env: dict[str, str],
        *,
        name: str = "serve",
        role: str = "listener",
        processes: int = 1,
        data_dir: Path | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name, self.role, self.processes = name, role, processes
        self.label = "triage serve" if name == "serve" else f"triage serve ({name})"
        self.log_path = workdir / f"{name}.log"
        self.port = free_port() if role == "listener" else 0
        argv = [sys.executable, "-m", "triage", "serve", "--config", str(config_file), "--log-level", "INFO"]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        if role == "listener":
            argv += ["--host", HOST, "--port", str(self.port)]
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._terminated = False
        self._stopped = False
        self._stop_problem: str | None = None  # what stop() found, once stopped

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def tail(self, lines: int = 5) -> str:
        """The log's last lines, for a failure message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return (": " + " | ".join(text[-lines:])) if text else ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchFailure(f"{self.label} exited with code {self.proc.returncode}{self.tail()}")

    def wait_ready(self) -> None:
        """A listener: until it answers C-ECHO with all its listener processes up. A worker: until it says its
        detectors are loaded. :class:`BenchFailure` if it exits or the deadline passes."""
        from dicom_io.errors import DicomNetworkError
        from dicom_io.send import echo

        timeout = READY_TIMEOUT_S if self.role == "listener" else WORKER_READY_TIMEOUT_S
        deadline = time.monotonic() + timeout
        with quiet_pynetdicom():  # "connection refused" until it listens is expected
            while True:
                self.check_alive()
                if self.role == "listener":
                    try:
                        echo(HOST, self.port, called_ae=SERVE_AE, calling_ae=CALLING_AE, timeout=5)
                        if self.processes == 1 or LISTENERS_UP.search(self.log_path.read_text(errors="replace")):
                            return
                    except DicomNetworkError:
                        pass
                elif WORKER_READY.search(self.log_path.read_text(errors="replace")):
                    return
                if time.monotonic() > deadline:
                    what = "no C-ECHO answer" if self.role == "listener" else "detectors not loaded"
                    raise BenchFailure(f"{self.label}: {what} within {timeout:.0f} s{self.tail()}")
                time.sleep(READY_POLL_S)  # polling a condition (ready yet?), not a guess at a duration

    def terminate(self) -> None:
        """SIGTERM, once: a second one could reach serve after it has put back the default handler, and kill it."""
        if not self._terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self._terminated = True

    def stop(self) -> str | None:
        """SIGTERM and wait (SIGKILL of its session after :data:`STOP_TIMEOUT_S`); the problem, or None.

        A second call returns what the first found.
        """
        if self._stopped:
            return self._stop_problem
        problem = None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the listener processes too
                self.proc.wait()
                problem = f"{self.label} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; killed"
        if problem is None and self.proc.returncode != 0:
            problem = f"{self.label} exited with code {self.proc.returncode}{self.tail()}"
        self._stopped, self._stop_problem = True, problem
        return problem
