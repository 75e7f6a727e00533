"""Ground-truth boxes from masks."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.phantoms.truth import box_of


def test_box_of_is_half_open_union_over_slices() -> None:
    mask = np.zeros((5, 10, 12), dtype=bool)
    mask[1, 2:4, 3:5] = True
    mask[3, 5, 8] = True
    assert box_of(mask) == ((1, 3), (2, 3, 6, 9))


def test_box_of_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError, match='"mask"'):
        box_of(np.zeros((2, 2, 2), dtype=bool))
