"""``triage demo``: a newcomer's first run.

Starts the whole server (listener, completeness, scoring) on a throw-away data
directory and a free port, replays the sample studies into it over DICOM, and
opens the terminal worklist on it while the studies are scored and ranked
(live). Quitting the worklist stops everything.

Without a terminal (output piped, CI) or with ``--once``, it prints the
worklist in priority order each time the ranking changes until every study
has its AI result; ``--once`` then exits, otherwise it serves until Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from dicom_io.send import find_dicom_files, replay
from triage import clock
from triage.app.server import TriageServer
from triage.app.studies import format_table
from triage.config import load_settings
from triage.errors import TriageError
from triage.progress import progress_bar
from triage.reading import identity, signing
from triage.reading.service import WorklistService
from triage.reading.views import WorklistItem
from triage.vocabulary import AIStatus

RANKED_TIMEOUT_S = 300.0  # every sample study scored well within this on 2 CPU cores
# The demo's reader (the OS account: the demo has no [readers] table) signs with this password,
# set in the throw-away index; a real site sets each reader's with `triage readers passwd`.
DEMO_SIGNING_PASSWORD = "demo-signing"


def _signature(items: list[WorklistItem]) -> tuple[tuple[str, str, str], ...]:
    return tuple((i.study.study_uid, i.urgency.priority_class.value, i.study.ai_status) for i in items)


def run_demo(samples: Path, port: int = 0, log_level: str = "WARNING", once: bool = False, user: str | None = None) -> int:
    """Run the demo; returns the exit code (non-zero if a sample could not be sent or scored)."""
    files, _ = find_dicom_files([samples]) if samples.exists() else ([], [])
    if not files:
        raise TriageError(f"no DICOM files in {samples} to replay")
    with tempfile.TemporaryDirectory(prefix="triage-demo-") as tmp:
        settings = load_settings(
            overrides={
                "data_dir": tmp,
                "log_level": log_level,  # the listener processes log at this level too
                "listener.port": port,
                "listener.host": "127.0.0.1",
                "completeness.stable_after": 2.0,
                "completeness.per_modality": {},
                "completeness.check_interval": 0.5,
            }
        )
        print("triage demo: starting the listener and loading the detectors ...")
        server = TriageServer(settings)
        server.start()
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            print(f"listening as {settings.listener.ae_title} on 127.0.0.1:{server.port}, data in {tmp}")
            print(f"replaying {len(files)} instances from {samples} ...")
            with progress_bar(len(files), "replay") as advance:
                summary = replay(files, "127.0.0.1", server.port, called_ae=settings.listener.ae_title, on_result=lambda *_: advance())
            print(f"sent {summary.sent}, failed {summary.failed} ({summary.images_per_s:.0f} images/s)")
            if not once and sys.stdin.isatty() and sys.stdout.isatty():
                reader = _demo_reader(server, user)
                print(f"reading as {reader.name}; signing asks for the demo's signing password: {DEMO_SIGNING_PASSWORD}")
                time.sleep(2.0)  # long enough to read it before the worklist takes the screen
                _open_worklist(server, reader.name)
                return 0 if summary.failed == 0 else 1
            failed = _watch(WorklistService(server.engine, settings), stop)
            print(
                "Not a medical device: AI findings are suggestions for ordering the worklist; a radiologist reads "
                "every study and signs every report."
            )
            print(f"Send more with: triage replay PATH --to 127.0.0.1:{server.port}")
            if not once:
                print("Ctrl-C to stop.")
                while not stop.wait(0.5):
                    pass
        finally:
            signal.signal(signal.SIGINT, previous)
            server.stop()
    return 0 if summary.failed == 0 and not failed else 1


def _demo_reader(server: TriageServer, user: str | None) -> identity.Reader:
    """The OS account's reader (``--user`` may only name it), with the demo's signing password set."""
    account = identity.os_account()
    reader = identity.acting_reader(server.settings, user, account)
    signing.set_password(server.engine, reader, DEMO_SIGNING_PASSWORD, by=reader, by_account=account)
    return reader


def _open_worklist(server: TriageServer, user: str) -> None:
    """The terminal worklist on the demo's index, live while the server scores; returns when the reader quits."""
    import logging

    from triage.app.plugins import worklist_runner

    run_worklist = worklist_runner()
    # The server's log lines would tear the screen: only errors, and to a file.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.FileHandler(server.settings.data_dir / "demo.log", encoding="utf-8"))
    root.setLevel(logging.WARNING)
    run_worklist(server.settings, user)


def _watch(worklist: WorklistService, stop: threading.Event) -> bool:
    """Print the ranked worklist whenever it changes, until every study has its AI result.

    Returns True if some study's scoring failed or the wait ran out.
    """
    deadline = time.monotonic() + RANKED_TIMEOUT_S
    shown: tuple[tuple[str, str, str], ...] = ()
    while not stop.is_set():
        items = worklist.items()
        pending = [i for i in items if i.study.ai_status == AIStatus.PENDING.value]
        if _signature(items) != shown and (not pending or time.monotonic() > deadline - RANKED_TIMEOUT_S + 5):
            shown = _signature(items)
            print()
            at = clock.shown(clock.utcnow(), worklist.settings.site.zone, seconds=True)
            print(f"-- worklist at {at}: {len(items) - len(pending)} of {len(items)} studies scored --")
            print(format_table(items))
        if items and not pending:
            return any(i.study.ai_status == AIStatus.FAILED.value for i in items)
        if time.monotonic() > deadline:
            print(f"{len(pending)} studies still without an AI result after {RANKED_TIMEOUT_S:.0f} s")
            return True
        stop.wait(1.0)
    return False
