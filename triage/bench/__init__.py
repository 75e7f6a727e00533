"""``triage bench ...``: each benchmark runs its baselines in the same run and
prints ratios, so figures compare like with like on whatever machine runs it.

May import: all of triage but ``app`` (benches run ``triage serve`` as a
subprocess), ``dicom_io``, ``detectors``. ``pgcluster`` is the throw-away
PostgreSQL of the benches and tests.
"""
