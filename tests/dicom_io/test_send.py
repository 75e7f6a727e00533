"""The replay sender against peers that misbehave."""

from __future__ import annotations

import threading
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from dicom_io.send import find_dicom_files, replay


def test_replay_resends_after_the_peer_aborts(make_ct_series) -> None:
    paths = make_ct_series(slices=6, size=32)
    received: list[str] = []
    aborted = threading.Event()

    def handle_store(event) -> int:  # type: ignore[no-untyped-def]
        received.append(str(event.request.AffectedSOPInstanceUID))
        if not aborted.is_set():  # answer, then drop the first association once
            aborted.set()
            threading.Timer(0.2, event.assoc.abort).start()
        return 0x0000

    ae = AE("ABORTER")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        files, _ = find_dicom_files([paths[0].parent])
        results: list[tuple[Path, bool]] = []
        summary = replay(files, "127.0.0.1", server.server_address[1], parallel=2, rate=4, timeout=5,
                         on_result=lambda f, ok: results.append((f.path, ok)))  # fmt: skip
    finally:
        server.shutdown()
    assert (summary.sent, summary.failed) == (6, 0)
    assert sorted(p for p, _ in results) == sorted(paths)  # every file reported exactly once
    assert len(set(received)) == 6


def test_replay_counts_unreachable_peer_as_failures(make_ct_series) -> None:
    paths = make_ct_series(slices=3, size=32)
    files, _ = find_dicom_files(paths)
    summary = replay(files, "127.0.0.1", 1, parallel=2, timeout=2)
    assert (summary.sent, summary.failed) == (0, 3)
    assert all("not sent" in reason for _, reason in summary.failures)
