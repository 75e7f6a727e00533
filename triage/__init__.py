"""The application: domain core and wiring of the radiology triage worklist.

Read the tree as the flow (``docs/layout.md``):

- the kernel, modules here: ``errors``, ``clock``, ``config``, ``logs``,
  ``progress``, ``vocabulary``; they import no subpackage;
- ``store``: the study index (models, database, index writer, recovery, audit trail);
- ``flow``: from a complete series to a ranked study (completeness, scoring jobs, policy);
- ``reading``: the radiologist's side (states, worklist service, views, pixels);
- ``outbox``: results back to the PACS;
- ``monitor``: what the AI did, measured;
- ``research``: evaluation, local validation, training;
- ``samples``: sample studies written as DICOM;
- ``app``: the ``triage`` command and the server processes; ``bench``: the benchmarks.

triage imports ``dicom_io`` and ``detectors``, never ``tui``.
"""

__version__ = "0.1.0"
