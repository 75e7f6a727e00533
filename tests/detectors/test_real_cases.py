"""Real-anatomy training cases: the real scan's own findings are kept apart from the inserted lesion."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import realdata
from detectors.real_cases import OWN_FINDING_MARGIN, fracture_xr_case, nodule_xr_case, own_findings


def test_the_chest_radiograph_is_not_a_normal() -> None:
    rg1 = realdata.case("RG1_UNCR.dcm")
    assert rg1.role == "background" and rg1.finding == "nodule" and len(rg1.regions) >= 5
    mask = own_findings("RG1_UNCR.dcm", (1955, 1841))
    assert mask is not None
    r, c, radius = rg1.regions[0]
    assert mask[int(r), int(c)] and mask[int(r), int(c + OWN_FINDING_MARGIN * radius * 0.95)]
    assert not mask[int(r), int(c + OWN_FINDING_MARGIN * radius * 1.1)]


@pytest.mark.parametrize("index", range(4))
def test_chest_cases_are_positive_and_their_masses_follow_the_mirror(index: int) -> None:
    case = nodule_xr_case("validation", index)
    assert case.positive and case.own_findings is not None
    expected = own_findings("RG1_UNCR.dcm", case.series.pixels.shape[1:])
    if case.tags["mirrored"]:
        expected = expected[:, ::-1]
    assert np.array_equal(case.own_findings[0], expected)
    if case.lesion.any():  # the inserted nodule is a new finding, off the marked masses
        assert not (case.lesion & case.own_findings).any()


def test_leg_cases_have_no_findings_of_their_own() -> None:
    case = fracture_xr_case("validation", 0, positive_fraction=0.0)
    assert case.own_findings is None and not case.positive
