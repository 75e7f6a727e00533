"""The content check on phantoms: heads, chests, and things it must not guess."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.content_check import ct_region
from detectors.phantoms.chest_ct import chest_ct
from detectors.phantoms.head_ct import head_ct
from detectors.routing import SeriesInfo, route


@pytest.mark.parametrize("seed", range(4))
def test_head_and_chest_are_told_apart(seed: int) -> None:
    assert ct_region(head_ct(seed, matrix=256, slices=12).hu) == "HEAD"
    assert ct_region(chest_ct(seed, matrix=256, slices=12).hu) == "CHEST"


def test_no_guess_for_other_content() -> None:
    rng = np.random.default_rng(0)
    assert ct_region(np.full((6, 64, 64), -1000.0)) is None  # air only
    assert ct_region(rng.normal(40, 10, (6, 64, 64))) is None  # soft tissue, no skull, no lungs


def test_routing_uses_it_when_tags_say_nothing() -> None:
    hu = head_ct(1, matrix=256, slices=12).hu
    info = SeriesInfo(modality="CT", series_description="AXIAL 5MM", image_type=("ORIGINAL", "PRIMARY", "AXIAL"))
    decided = route(info, content_check=lambda: ct_region(hu))
    assert decided.analysed and [d.value for d in decided.detectors] == ["bleed"]
