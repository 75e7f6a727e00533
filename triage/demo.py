"""``triage demo``: a newcomer's first run.

Starts the server on a throw-away data directory, replays the sample studies
into it, prints the study index as series complete, and keeps serving until
Ctrl-C. Scoring and the terminal worklist are not built yet, so the demo shows
ingest only; it says so.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path

from dicom_io.send import find_dicom_files, replay
from triage.config import load_settings
from triage.errors import TriageError
from triage.progress import progress_bar
from triage.server import TriageServer
from triage.studies import format_table, list_studies


def run_demo(samples: Path, port: int = 0, log_level: str = "WARNING") -> int:
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
        server = TriageServer(settings)
        server.start()
        stop = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            print(f"triage demo: listening as {settings.listener.ae_title} on 127.0.0.1:{server.port}, data in {tmp}")
            print(f"replaying {len(files)} instances from {samples} ...")
            with progress_bar(len(files), "replay") as advance:
                summary = replay(files, "127.0.0.1", server.port, called_ae=settings.listener.ae_title,
                                 on_result=lambda *_: advance())  # fmt: skip
            print(f"sent {summary.sent}, failed {summary.failed} ({summary.images_per_s:.0f} images/s)")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not stop.is_set():
                rows = list_studies(server.engine)
                if rows and all(r.status == "complete" for r in rows):
                    break
                time.sleep(0.5)
            print()
            print(format_table(list_studies(server.engine)))
            print()
            print("Scoring and the terminal worklist are not built yet: this demo shows ingest only.")
            print(f"Send more with: triage replay PATH --to 127.0.0.1:{server.port}")
            print("Ctrl-C to stop.")
            while not stop.wait(0.5):
                pass
        finally:
            signal.signal(signal.SIGINT, previous)
            server.stop()
    return 0 if summary.failed == 0 else 1
