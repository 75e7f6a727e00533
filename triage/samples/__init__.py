"""Sample studies written as DICOM folders with a ground-truth manifest.

``phantom_studies``: the detectors' phantoms (``triage samples generate``, the
committed ``sample_studies/``); ``real_studies``: lesions inserted into the real
scans (``triage samples real``). The only place where detectors' arrays become
DICOM files.

May import: the kernel, ``detectors`` (phantoms, insertion), ``dicom_io``.
"""
