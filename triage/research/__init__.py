"""For researchers and sites: evaluating detectors on sample folders (``evaluate``), local
validation on a site's labelled studies, the site's operating points, and training.

May import: the kernel, ``flow``, ``monitor``, ``samples``, ``detectors``, ``dicom_io``.
"""
