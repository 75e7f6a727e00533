"""The radiologist's side: the read state machine (``states``), the worklist service (claim,
feedback, sign, amend: ``service``), what the worklist shows (``views``) and a series' pixels for
the preview (``pixels``). The tui talks to this package and the kernel, never to the database.

May import: the kernel, ``store``, ``flow``, ``outbox``, ``dicom_io``.
"""
