"""Lesion insertion into real anatomy, with exact ground truth, and acquisition variation.

The detectors learn from geometric phantoms, which have no real anatomy, and
we have real normal scans but no labelled real lesions. This package inserts
lesions into real normal images so that every inserted voxel is known:

- :mod:`detectors.insertion.hemorrhage`: the five intracranial bleeds
  (intraparenchymal, subdural, epidural, subarachnoid, intraventricular) into a
  real head CT, inside a given intracranial mask;
- :mod:`detectors.insertion.nodule`: solid and part-solid nodules into lungs on
  CT, and projected nodules added in the log domain of a chest radiograph;
- :mod:`detectors.insertion.fracture`: a lucent cortical break across a long
  bone on a radiograph, with or without displacement;
- :mod:`detectors.insertion.acquisition`: the scanner variation the real
  background lacks (slice thickness, gantry tilt, matrix, kernel, noise) and
  the storage variants a DICOM writer applies (rescale, photometric).

Everything is pure NumPy/SciPy and seeded by a ``numpy.random.Generator``:
the same generator state gives the same arrays. Insertions keep the
background's own noise (the local mean is replaced, the texture kept) and
have partial-volume edges computed from a sub-voxel shape; the truth mask is
where a lesion fills at least half a voxel. The anatomical masks are inputs:
this package never guesses where the brain or the lungs are.
"""

from detectors.insertion.common import Inserted, Inserted2D

__all__ = ["Inserted", "Inserted2D"]
