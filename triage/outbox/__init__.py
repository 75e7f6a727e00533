"""Results back to the PACS: the queue of AI and report results per destination, and the sender.

May import: the kernel, ``store``, ``flow``, ``dicom_io``.
"""
