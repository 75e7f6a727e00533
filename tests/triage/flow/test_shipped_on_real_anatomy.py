"""The shipped detectors on the real scans: normal anatomy is not flagged, and no region leaves its anatomy.

Behaviour of the shipped cards and weights, on the real images that
``detectors.realdata`` fetches (the calibration used them, so this guards
against regressions; the figures on held-out insertions are in the cards).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from detectors import realdata
from detectors.anatomy import mask_for
from detectors.base import Family, SeriesArrays
from detectors.insertion.acquisition import Variant, apply_variant
from detectors.registry import load_detectors
from dicom_io.pixels import load_radiograph


@pytest.fixture(scope="module")
def detectors() -> Iterator:
    yield load_detectors(device="cpu")


def _inside(finding, series: SeriesArrays, anatomy: str) -> bool:
    """Every region's box centre lies in (or within a few pixels of) the anatomy on its slice."""
    mask = mask_for(anatomy, series.pixels, series.spacing_mm, series.family.value)
    for region in finding.regions:
        r0, c0, r1, c1 = region.box
        plane = mask[region.slice_index]
        if not plane[max(r0, 0) : r1, max(c0, 0) : c1].any():
            return False
    return True


@pytest.mark.parametrize(
    "variant",
    [Variant(), Variant(thickness_mm=5.0, tilt_deg=18.5, noise_hu=4.0), Variant(thickness_mm=7.0, matrix=512, sharpness=0.6)],
    ids=["as-scanned", "5mm-tilt18.5", "7mm-512-sharp"],
)
def test_bleed_ct_leaves_the_real_normal_head_alone(detectors, variant: Variant) -> None:
    head = realdata.head_ct()
    hu, spacing = apply_variant(head.pixels, head.spacing_mm, variant, np.random.default_rng(0))
    series = SeriesArrays("2.25.77", Family.CT, hu, spacing, tuple(f"2.25.77.{i}" for i in range(hu.shape[0])))
    finding = detectors.for_route("bleed", "CT").detect(series)
    assert not finding.urgent, f"p={finding.probability:.3f} >= {finding.operating_point:.3f}"
    assert _inside(finding, series, "intracranial")
    assert all(r.probability < finding.operating_point for r in finding.regions)


def test_fracture_xr_leaves_the_real_leg_radiograph_alone(detectors) -> None:
    radiograph = load_radiograph(realdata.path("RG3_UNCR.dcm"))
    series = SeriesArrays.from_radiograph(radiograph, "2.25.78")
    finding = detectors.for_route("fracture", "radiograph").detect(series)
    assert not finding.urgent, f"p={finding.probability:.3f} >= {finding.operating_point:.3f}"
    assert _inside(finding, series, "bone")


def test_nodule_xr_shows_nothing_on_the_real_chest_radiographs_normal_anatomy(detectors) -> None:
    """RG1 has masses of its own (marked by eye): a region may sit on one of them, never elsewhere."""
    from detectors.real_cases import own_findings

    radiograph = load_radiograph(realdata.path("RG1_UNCR.dcm"))
    series = SeriesArrays.from_radiograph(radiograph, "2.25.78")
    finding = detectors.for_route("nodule", "radiograph").detect(series)
    assert _inside(finding, series, "lungs")
    masses = own_findings("RG1_UNCR.dcm", series.pixels.shape[1:])
    for region in finding.regions:
        r0, c0, r1, c1 = region.box
        assert masses[r0:r1, c0:c1].any(), f"a region at {region.box} off the marked masses"


@pytest.mark.parametrize("kind", ["intraparenchymal", "subdural"])
def test_bleed_ct_finds_a_haemorrhage_inserted_into_the_real_head(detectors, kind: str) -> None:
    from detectors.anatomy.intracranial import intracranial_mask
    from detectors.insertion.hemorrhage import insert_hemorrhage
    from detectors.metrics import region_hits_lesion
    from detectors.phantoms.truth import box_of

    head = realdata.head_ct()
    inserted = insert_hemorrhage(
        head.pixels,
        head.spacing_mm,
        intracranial_mask(head.pixels, head.spacing_mm),
        kind,
        8.0,
        np.random.default_rng(2026),
        density_hu=70.0,
    )
    series = SeriesArrays("2.25.79", Family.CT, inserted.hu, head.spacing_mm, head.sop_instance_uids)
    finding = detectors.for_route("bleed", "CT").detect(series)
    assert finding.urgent, f"p={finding.probability:.3f} below {finding.operating_point:.3f}"
    slices, box = box_of(inserted.mask)
    top = finding.regions[0]
    assert region_hits_lesion(top.box, top.slices, box, slices)
