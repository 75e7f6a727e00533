"""The senders against real peers on loopback: replay when peers misbehave, results with per-file answers."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from dicom_io.send import Peer, find_dicom_files, replay, store_files
from triage.bench.common import free_port


def test_replay_resends_after_the_peer_aborts(make_ct_series) -> None:
    paths = make_ct_series(slices=6, size=32)
    received: list[str] = []
    aborted = threading.Event()

    def handle_store(event) -> int:
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
        summary = replay(
            files,
            "127.0.0.1",
            server.server_address[1],
            parallel=2,
            rate=4,
            timeout=5,
            on_result=lambda f, ok: results.append((f.path, ok)),
        )
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


def test_store_files_sends_the_bytes_on_disk_and_says_what_each_peer_answered(make_ct_series) -> None:
    paths = make_ct_series(slices=3, size=32)
    sop_class = str(dcmread(paths[0], stop_before_pixels=True).SOPClassUID)
    received: dict[str, bytes] = {}
    refused = str(dcmread(paths[2], stop_before_pixels=True).SOPInstanceUID)

    def handle_store(event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        received[uid] = event.encoded_dataset(include_meta=False)
        return 0xA700 if uid == refused else (0xB007 if len(received) == 2 else 0x0000)

    ae = AE("PACS")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        peer = Peer("127.0.0.1", server.server_address[1], "PACS")
        outcomes = store_files(peer, "TRIAGE_AI", [(p, sop_class) for p in paths], timeout=5)
    finally:
        server.shutdown()
    where = f"PACS@127.0.0.1:{peer.port}"
    assert outcomes == [(True, ""), (True, ""), (False, f"{where} answered status 0xA700")]  # a warning is acknowledged
    first = dcmread(paths[0])
    # The dataset arrives as the file holds it.
    assert received[str(first.SOPInstanceUID)] == paths[0].read_bytes()[-len(received[str(first.SOPInstanceUID)]) :]


def test_store_files_to_nobody_says_why_for_every_file(make_ct_series) -> None:
    paths = make_ct_series(slices=2, size=32)
    sop_class = str(dcmread(paths[0], stop_before_pixels=True).SOPClassUID)
    outcomes = store_files(Peer("127.0.0.1", free_port(), "PACS"), "TRIAGE_AI", [(p, sop_class) for p in paths], timeout=2)
    assert [ok for ok, _ in outcomes] == [False, False]
    assert all(reason.startswith("connection refused") for _, reason in outcomes), outcomes
