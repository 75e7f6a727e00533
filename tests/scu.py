"""A minimal C-STORE sender for tests: real associations, per-file statuses."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

import dicom_io.send  # noqa: F401  (sets pynetdicom to send files as their bytes on disk)


def store(port: int, items: list[Path | Dataset], calling_ae: str = "TESTSCU") -> list[int]:
    """C-STORE each item to 127.0.0.1:port; returns the statuses (-1: no response).

    Files are sent as they are on disk (no decode), which is how malformed bytes reach the listener.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    pairs = set()
    for item in items:
        meta = item.file_meta if isinstance(item, Dataset) else dcmread(item, stop_before_pixels=True).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, ts in sorted(pairs):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established, "association was not established"
    statuses = []
    try:
        for item in items:
            rsp = assoc.send_c_store(item)
            statuses.append(int(rsp.Status) if rsp else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
