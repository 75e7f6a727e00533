"""Offline scoring on real DICOM files with throw-away detectors (untrained tiny networks).

The networks are untrained, so what is checked is the plumbing: routing
reasons, which detector scored what, model identity, regions mapped back into
the image, and that damaged files and series are reported, never raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from detectors.engine import InferenceEngine
from detectors.registry import DetectorSet, load_detectors
from detectors.spec import load_card
from dicom_io.writer import StudyMeta, ct_datasets, simple_head_volume, write_datasets
from tests.support import REPO_ROOT
from tests.triage.detector_cards import write_card
from triage.flow.scoring import ScoreReport, SeriesScore, score_paths

SAMPLES = REPO_ROOT / "sample_studies"


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cards")
    return {name: write_card(name, out) for name in ("bleed-ct", "fracture-xr")}


@pytest.fixture(scope="module")
def detectors(cards: dict[str, Path]) -> DetectorSet:
    return load_detectors(cards.values(), device="cpu", shipped=False)


@pytest.fixture
def engine() -> Iterator[InferenceEngine]:
    with InferenceEngine("cpu", max_batch=4, workers=1) as eng:
        yield eng


def write_head_ct(out: Path, meta: StudyMeta | None = None, slices: int = 8) -> list[Path]:
    """A small head CT (skull ring around brain), 128 x 128 at 1 mm."""
    volume = simple_head_volume(slices, 128, seed=slices)
    return write_datasets(ct_datasets(volume, pixel_spacing_mm=(1.0, 1.0), meta=meta or StudyMeta()), out)


def only_series(report: ScoreReport, index: int) -> SeriesScore:
    [series] = report.studies[index].series
    return series


def test_routes_and_scores_head_ct_extremity_and_abdomen(
    tmp_path: Path, cards: dict[str, Path], detectors: DetectorSet, engine: InferenceEngine
) -> None:
    head = tmp_path / "head"
    files = write_head_ct(head)
    seen = []
    report = score_paths([head, SAMPLES / "03_extremity_xr", SAMPLES / "04_abdomen_ct"], detectors, engine, on_study=seen.append)

    assert [s.folder for s in report.studies] == [head, SAMPLES / "03_extremity_xr", SAMPLES / "04_abdomen_ct"]
    assert seen == report.studies and not report.unreadable and not report.failures
    assert report.studies[0].patient_id == "PHANTOM001" and report.studies[0].description == "CT HEAD WO CONTRAST"

    ct = only_series(report, 0)
    assert (ct.reason, ct.analysed, ct.instances, ct.modality) == ("head CT (body part HEAD)", True, 8, "CT")
    [bleed] = ct.findings
    spec = load_card(cards["bleed-ct"])
    assert (bleed.detector, bleed.kind.value, bleed.series_uid) == ("bleed-ct", "bleed", ct.series_uid)
    assert (bleed.model.name, bleed.model.version, bleed.model.sha256) == ("bleed-ct", "0.0.1", spec.sha256)
    assert 0.0 <= bleed.probability <= 1.0 and bleed.regions
    from pydicom import dcmread

    sops = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    for region in bleed.regions:
        r0, c0, r1, c1 = region.box
        assert 0 <= r0 < r1 <= 128 and 0 <= c0 < c1 <= 128
        assert 0 <= region.slices[0] <= region.slice_index <= region.slices[1] < 8
        assert region.sop_instance_uid == sops[region.slice_index]  # written in slice order

    xr = only_series(report, 1)
    assert xr.reason == "skeletal radiograph (study description 'XR FOREARM 2V')" and xr.analysed
    [fracture] = xr.findings
    assert fracture.detector == "fracture-xr" and fracture.regions
    rows, cols = 768, int(dcmread(next((SAMPLES / "03_extremity_xr").glob("*.dcm"))).Columns)
    for region in fracture.regions:
        r0, c0, r1, c1 = region.box
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols and region.slice_index == 0

    abdomen = only_series(report, 2)
    assert abdomen.reason == "not analysed: no detector for CT of this anatomy (body part ABDOMEN)"
    assert not abdomen.analysed and not abdomen.findings and not abdomen.failures


def test_routed_kind_without_a_loaded_detector_says_so(detectors: DetectorSet, engine: InferenceEngine) -> None:
    report = score_paths([SAMPLES / "02_chest_xr"], detectors, engine)
    series = only_series(report, 0)
    assert series.reason == "chest radiograph (body part CHEST); no nodule detector loaded for radiograph"
    assert (series.analysed, series.findings, series.missing_detectors) == (False, (), ("nodule",))


def test_ct_without_anatomy_tags_is_routed_by_its_content(tmp_path: Path, detectors: DetectorSet, engine: InferenceEngine) -> None:
    meta = StudyMeta(body_part=None, study_description="CT", series_description="AXIAL 5MM")
    write_head_ct(tmp_path / "untagged", meta)
    series = only_series(score_paths([tmp_path / "untagged"], detectors, engine), 0)
    assert series.reason == "head CT (content check HEAD)"
    assert [f.detector for f in series.findings] == ["bleed-ct"]


def test_damaged_files_are_listed_and_a_corrupt_series_fails_alone(tmp_path: Path, detectors: DetectorSet, engine: InferenceEngine) -> None:
    good = write_head_ct(tmp_path / "in" / "good")
    bad_meta = StudyMeta(patient_id="BAD")
    datasets = list(ct_datasets(simple_head_volume(6, 128), pixel_spacing_mm=(1.0, 1.0), meta=bad_meta))
    datasets[2].PixelData = datasets[2].PixelData[:100]  # a slice cut short: its pixels cannot be decoded
    write_datasets(iter(datasets), tmp_path / "in" / "bad")
    damaged = tmp_path / "in" / "damaged"
    damaged.mkdir()
    raw = good[0].read_bytes()
    (damaged / "truncated.dcm").write_bytes(raw[: raw.index(b"\x20\x00\x0e\x00UI")])  # ends before the Series UID
    at = raw.index(b"\x08\x00\x16\x00UI")  # SOP Class UID with a VR no reader knows
    (damaged / "bad-vr.dcm").write_bytes(raw[:at] + b"\x08\x00\x16\x00ZZ\xff\xff" + raw[at + 8 : at + 60])
    (damaged / "bad-meta.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00garbage")
    (damaged / "notes.txt").write_text("not DICOM")

    report = score_paths([tmp_path / "in"], detectors, engine)

    reasons = {u.path.name: u.reason for u in report.unreadable}
    assert set(reasons) == {"truncated.dcm", "bad-vr.dcm", "bad-meta.dcm"}
    assert "Unknown Value Representation 'ZZ'" in reasons["bad-vr.dcm"]
    assert "Study or Series Instance UID" in reasons["truncated.dcm"]
    assert all("\n" not in r and "Traceback" not in r for r in reasons.values())
    assert report.skipped == 1

    by_patient = {s.patient_id: s for s in report.studies}
    [bad_series] = by_patient["BAD"].series
    [failure] = bad_series.failures
    assert failure.startswith("bleed-ct: loading failed:") and "0003.dcm" in failure and not bad_series.findings
    [good_series] = by_patient["PHANTOM001"].series
    assert not good_series.failures and [f.detector for f in good_series.findings] == ["bleed-ct"]
    assert report.failures == [failure]
