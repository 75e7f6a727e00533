"""A minimal C-STORE sender for tests: real associations, per-file statuses."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context

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


def raw_c_store(assoc: Any, context_id: int, sop_class: str, sop_instance: str, dataset: bytes, message_id: int = 1) -> int:
    """One C-STORE with whatever command and dataset bytes the test wants (pynetdicom checks neither); returns the status."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = BytesIO(dataset)
    # As pynetdicom's own send_c_store does: pause its reactor, or it takes the response as unsolicited.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return int(rsp.Status) if rsp is not None else -1


def associate_rq(called_ae: str = "TRIAGE", calling_ae: str = "RAWSCU", abstract: str = "1.2.840.10008.1.1") -> bytes:
    """The bytes of an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``abstract`` in implicit VR little endian."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    context = build_context(abstract, ["1.2.840.10008.1.2"])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.8.498.99"
    primitive.user_information = [max_length, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
