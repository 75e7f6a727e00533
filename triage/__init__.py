"""Domain core and wiring of the radiology triage worklist.

``triage.models``/``triage.db`` hold the study index, ``triage.config`` the one
settings object, ``triage.server`` wires the listener to the index, and
``triage.cli`` is the ``triage`` command.
"""

__version__ = "0.1.0"
