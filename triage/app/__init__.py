"""The processes and the command line: ``cli`` (the ``triage`` command), ``cli_case``, ``server``
(listener -> index -> jobs -> scoring -> outbox), ``listener_process``, ``demo``, and the plug-ins
found by entry point (``plugins``: the terminal worklist).

May import: all of triage, ``dicom_io``, ``detectors``; never ``tui`` (it plugs in).
"""
