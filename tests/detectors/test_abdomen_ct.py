"""The abdomen phantom: a normal study of a body part no detector covers."""

from __future__ import annotations

import numpy as np

from detectors.content_check import ct_region
from detectors.phantoms.abdomen_ct import abdomen_ct
from detectors.routing import SeriesInfo, route


def test_deterministic_plausible_and_not_analysed() -> None:
    a, b = abdomen_ct(3), abdomen_ct(3)
    assert np.array_equal(a.hu, b.hu) and not np.array_equal(a.hu, abdomen_ct(4).hu)
    middle = a.hu[a.hu.shape[0] // 2]
    assert (middle > 300).any() and 30 < np.median(middle[(middle > 20) & (middle < 80)]) < 70
    assert a.lesions == [] and ct_region(a.hu) is None  # neither head nor chest
    assert a.mask is not None and a.mask.shape == a.hu.shape and a.mask.dtype == bool and not a.mask.any()
    decided = route(SeriesInfo(modality="CT", body_part="ABDOMEN", study_description="CT ABDOMEN PELVIS WO CONTRAST"))
    assert not decided.analysed and decided.detectors == ()
