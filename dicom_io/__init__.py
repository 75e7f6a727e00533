"""DICOM in and out: the listener, the durable instance store, header reading
and the SCU used by ``triage echo``/``triage replay``.

Knows nothing of urgency, jobs or the UI: the index it writes to is passed in
as an object with the :class:`dicom_io.ingest.Index` shape.
"""
