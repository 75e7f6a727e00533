"""The study index: tables (``models``), the database (``db``), the index writer (``index``, and
``index_rpc`` for listener processes), crash recovery, and the hash-chained audit trail.

May import: the kernel, ``dicom_io``.
"""
