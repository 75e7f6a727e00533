"""Real headers reach the reader (issue 12, item 6): spacing notes and skip reasons in every output.

A real CR without usable Pixel Spacing is scored with throw-away detectors
(untrained tiny networks): the estimate it was read with must be stated in
``triage score`` text and JSON, in the reason the server stores with the
series result (and writes to the audit trail), and in the findings the
worklist reads back. A perfusion map's skip reason must reach the same places
as the existing skip reasons.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlmodel import Session

from detectors import realdata
from detectors.engine import InferenceEngine
from detectors.registry import DetectorSet, load_detectors
from dicom_io.writer import StudyMeta, ct_datasets, write_datasets
from tests.triage.detector_cards import write_card
from triage.app.score_report import format_scores
from triage.flow.cases import NOTE_SEPARATOR, current_findings, reason_notes
from triage.flow.pipeline import study_ai_state
from triage.flow.scoring import SeriesScore, score_paths
from triage.store.db import make_engine
from triage.store.models import AIFinding, Series, SeriesResult, Study
from triage.vocabulary import AIStatus


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> DetectorSet:
    out = tmp_path_factory.mktemp("cards")
    return load_detectors([write_card(name, out) for name in ("fracture-xr", "nodule-xr")], device="cpu", shipped=False)


@pytest.fixture
def engine() -> Iterator[InferenceEngine]:
    with InferenceEngine("cpu", max_batch=4, workers=1) as eng:
        yield eng


@pytest.fixture(scope="module")
def leg_cr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("leg")
    shutil.copy(realdata.path("RG3_UNCR.dcm"), folder / "RG3_UNCR.dcm")
    return folder


@pytest.fixture(scope="module")
def scored_leg(leg_cr: Path, detectors: DetectorSet) -> SeriesScore:
    with InferenceEngine("cpu", max_batch=4, workers=1) as eng:
        report = score_paths([leg_cr], detectors, eng)
    [study] = report.studies
    [series] = study.series
    return series


def test_estimated_spacing_is_stated_in_the_series_score(scored_leg: SeriesScore) -> None:
    assert scored_leg.analysed and not scored_leg.failures
    [note] = scored_leg.notes
    assert note.startswith("pixel spacing estimated as 0.244 mm") and "Pixel Spacing missing" in note
    assert scored_leg.reason == f"skeletal radiograph (body part EXTREMITY){NOTE_SEPARATOR}{note}"
    [finding] = scored_leg.findings
    assert finding.detector == "fracture-xr" and finding.notes == (note,)


def test_estimated_spacing_is_in_score_json_and_text(leg_cr: Path, scored_leg: SeriesScore) -> None:
    out = scored_leg.as_json()
    assert out["notes"] == list(scored_leg.notes)
    assert out["findings"][0]["notes"] == list(scored_leg.notes)
    json.dumps(out)  # serialisable as --json prints it
    lines = format_scores(
        SimpleNamespace(
            studies=[SimpleNamespace(study_uid="1", folder=leg_cr, patient_id="", accession="", description="", series=(scored_leg,))],
            unreadable=[],
            skipped=0,
            failures=[],
        )
    ).splitlines()
    assert "    route: skeletal radiograph (body part EXTREMITY)" in lines
    assert f"    note: {scored_leg.notes[0]}" in lines


def test_notes_survive_the_stored_result_and_reach_the_worklist_findings(tmp_path: Path, scored_leg: SeriesScore) -> None:
    """What the server stores (the reason column, no schema change) is what the worklist reads back."""
    db = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        with Session(db) as s:
            study = Study(study_uid="2.25.1", modalities="CR")
            s.add(study)
            s.flush()
            series = Series(series_uid=scored_leg.series_uid, study_pk=study.id, modality="CR")
            s.add(series)
            s.flush()
            result = SeriesResult(
                series_pk=series.id, study_pk=study.id, generation=0, analysed=True, reason=scored_leg.reason
            )  # as triage.flow.pipeline.record_result stores it
            s.add(result)
            s.flush()
            [f] = scored_leg.findings
            s.add(
                AIFinding(
                    result_pk=result.id,
                    study_pk=study.id,
                    series_pk=series.id,
                    kind=f.kind.value,
                    probability=f.probability,
                    operating_point=f.operating_point,
                    urgent=f.urgent,
                    model_name=f.model.name,
                    model_version=f.model.version,
                    weights_sha256=f.model.sha256,
                    regions="[]",
                )
            )
            s.commit()
            study_pk = study.id
        with db.connect() as conn:
            [row] = current_findings(conn)[study_pk]
        assert row.notes == scored_leg.notes
        assert row.as_json()["notes"] == list(scored_leg.notes)  # what `triage studies --json` prints
    finally:
        db.dispose()


def test_reason_notes_reads_back_what_scoring_writes() -> None:
    assert reason_notes("head CT (body part HEAD)") == ()
    assert reason_notes(None) == ()
    assert reason_notes(f"chest radiograph{NOTE_SEPARATOR}a{NOTE_SEPARATOR}b") == ("a", "b")


def test_perfusion_map_skip_reason_reaches_score_output_and_study_state(
    tmp_path: Path, detectors: DetectorSet, engine: InferenceEngine
) -> None:
    meta = StudyMeta(series_description="CBF", body_part="HEAD")
    datasets = list(ct_datasets(np.zeros((2, 32, 32)), pixel_spacing_mm=(1.0, 1.0), meta=meta))
    for ds in datasets:
        ds.ImageType = ["DERIVED", "PRIMARY", "PERFUSION", "RCBF"]
    write_datasets(datasets, tmp_path / "perfusion")
    report = score_paths([tmp_path / "perfusion"], detectors, engine)
    [series] = report.studies[0].series
    why = r"derived image: perfusion/parametric map (Image Type DERIVED\PRIMARY\PERFUSION\RCBF)"
    assert (series.reason, series.analysed, series.notes) == (f"not analysed: {why}", False, ())
    assert f"    route: not analysed: {why}" in format_scores(report).splitlines()
    assert report.as_json()["studies"][0]["series"][0]["route"] == f"not analysed: {why}"
    # The worklist's study result: the server's study state from the stored result.
    stored = SimpleNamespace(analysed=series.analysed, reason=series.reason, failures="[]", has_findings=False)
    assert study_ai_state([stored], 0) == (AIStatus.NOT_ANALYSED, why)


def test_processed_chest_cr_is_scored_not_refused(tmp_path: Path, detectors: DetectorSet, engine: InferenceEngine) -> None:
    shutil.copy(realdata.path("RG1_UNCR.dcm"), tmp_path / "RG1_UNCR.dcm")
    report = score_paths([tmp_path], detectors, engine)
    [series] = report.studies[0].series
    assert series.analysed and not series.failures, series.reason
    assert series.reason.startswith("chest radiograph (body part CHEST); note: pixel spacing estimated as 0.22 mm")
    assert [f.detector for f in series.findings] == ["nodule-xr"]
