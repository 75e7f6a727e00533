"""From a complete series to a ranked study: completeness (``completeness``), scoring jobs and the
worker (``pipeline``), running detectors on stored series (``scoring``), the cases the policy sees
(``cases``) and the pure urgency policy (``policy``).

May import: the kernel, ``store``, ``dicom_io``, ``detectors``.
"""
