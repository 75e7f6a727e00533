"""The shipped weights on the committed sample studies: behaviour, not plumbing.

Every study with a finding must be flagged urgent by its detector with a
region that overlaps the truth; every study without one must stay below the
operating point. The sample studies were generated with seeds the training
never used (see ``detectors.tasks.SEED_BASES``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from detectors.engine import InferenceEngine
from detectors.metrics import region_hits_lesion
from detectors.registry import load_detectors, shipped_cards
from tests.support import REPO_ROOT
from triage.research.evaluate import ManifestScore, score_manifest

SAMPLES = REPO_ROOT / "sample_studies"


def test_every_shipped_detector_has_its_card_weights_and_model_card() -> None:
    names = sorted(p.stem for p in shipped_cards())
    assert names == ["bleed-ct", "fracture-xr", "nodule-ct", "nodule-xr"]
    for card in shipped_cards():
        assert card.with_suffix(".pt").is_file() and card.with_suffix(".md").is_file()
    total = sum(card.with_suffix(".pt").stat().st_size for card in shipped_cards())
    assert total < 20 * 2**20  # the budget for all weights together


@pytest.fixture(scope="module")
def scored() -> Iterator[ManifestScore]:
    detectors = load_detectors(device="cpu")  # the shipped cards, SHA-256 checked
    with InferenceEngine("cpu", max_batch=8, workers=2) as engine:
        yield score_manifest(SAMPLES, detectors, engine)


def test_every_sample_study_is_scored_without_failures(scored: ManifestScore) -> None:
    assert scored.failures == []
    # 13 studies: 2 abdomen CTs go to no detector, the other 11 to exactly one.
    assert len(scored.outcomes) == 11
    assert sum(scored.not_routed.values()) == 2


# The chest CT nodule detector misses its targets (see the README's "Measured"
# table): it flags normal chest CTs and misses a 4 mm nodule. strict: when it
# starts passing, this list must be updated.
_KNOWN_MISSES = {"nodule-ct": "nodule-ct misses its targets on the phantoms (FROC at 1 FP/scan well below 0.90)"}
DETECTORS = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=_KNOWN_MISSES[name])) if name in _KNOWN_MISSES else name
    for name in ("bleed-ct", "fracture-xr", "nodule-ct", "nodule-xr")
]


@pytest.mark.parametrize("detector", DETECTORS)
def test_positives_are_urgent_with_a_region_on_the_truth_and_negatives_are_not(scored: ManifestScore, detector: str) -> None:
    outcomes = [o for o in scored.outcomes if o.kind == detector]
    assert any(o.label for o in outcomes) and any(not o.label for o in outcomes)
    for o in outcomes:
        if not o.label:
            assert not o.urgent, f"{o.study_folder}: {o.kind} p={o.probability:.3f} >= {o.operating_point:.3f}"
            continue
        assert o.urgent, f"{o.study_folder}: {o.kind} p={o.probability:.3f} below {o.operating_point:.3f}"
        hits = [region for region in o.regions if any(region_hits_lesion(region[0], region[1], box, slices) for box, slices in o.truth)]
        assert hits, f"{o.study_folder}: no region of {o.regions} overlaps the truth {o.truth}"
