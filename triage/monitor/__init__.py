"""What the AI did, measured from the index: statistics (``stats``), text and plots of the report.

May import: the kernel, ``store``.
"""
