"""The AI SR (TID 1500), key images and the report SR, built from a sample study and read back."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage

from dicom_io.results.ai_sr import build_ai_sr, parse_ai_sr
from dicom_io.results.common import (
    AI_LABEL,
    AI_SR_SERIES_DESCRIPTION,
    FINDING_CODES,
    KEY_IMAGE_TEXT,
    ResultBuildError,
    SourceImage,
    object_uid,
)
from dicom_io.results.key_image import build_key_image, burn_in, key_image_source, text_mask
from dicom_io.results.report_sr import build_report_sr, report_text
from triage.flow.cases import FindingRow

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_studies" / "05_head_ct"
TRUTH = next(s for s in json.loads((REPO / "sample_studies" / "manifest.json").read_text())["studies"] if s["folder"] == "05_head_ct")


@pytest.fixture(scope="module")
def sample() -> tuple[dict[str, Any], dict[str, SourceImage], dict[str, Path], Dataset]:
    """The sample head CT: study attributes as the index keeps them, its images, its first header."""
    images: dict[str, SourceImage] = {}
    paths: dict[str, Path] = {}
    header = None
    for path in sorted(SAMPLE.glob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        header = header or ds
        images[ds.SOPInstanceUID] = SourceImage(ds.SOPClassUID, ds.SeriesInstanceUID)
        paths[ds.SOPInstanceUID] = path
    assert header is not None
    study = {
        "study_uid": header.StudyInstanceUID,
        "patient_id": header.PatientID,
        "patient_name": str(header.PatientName),
        "patient_sex": header.PatientSex,
        "patient_birth_date": header.get("PatientBirthDate"),
        "patient_age": header.get("PatientAge"),
        "accession_number": header.AccessionNumber,
        "study_id": header.StudyID,
        "study_date": header.StudyDate,
        "study_time": header.StudyTime,
        "referring_physician": None,
        "study_description": header.StudyDescription,
    }
    return study, images, paths, header


def _bleed(series_uid: str) -> FindingRow:
    finding = TRUTH["findings"][0]
    sop = finding["sop_instance_uids"][1]
    return FindingRow(
        id=11,
        study_pk=1,
        series_uid=series_uid,
        kind="bleed",
        probability=0.93,
        operating_point=0.35,
        urgent=True,
        model_name="bleed-ct",
        model_version="1.2.0",
        weights_sha256="a" * 64,
        regions=(
            {
                "series_uid": series_uid,
                "sop_instance_uid": sop,
                "slice_index": 15,
                "slices": [14, 17],
                "box": finding["box"],
                "probability": 0.91,
                "diameter_mm": None,
            },
        ),
    )


def _others(series_uid: str, sop_uids: list[str]) -> list[FindingRow]:
    nodule = FindingRow(
        id=12,
        study_pk=1,
        series_uid=series_uid,
        kind="nodule",
        probability=0.2,
        operating_point=0.4,
        urgent=False,
        model_name="nodule-ct",
        model_version="0.9",
        weights_sha256="b" * 64,
        regions=(
            {
                "series_uid": series_uid,
                "sop_instance_uid": sop_uids[3],
                "slice_index": 3,
                "slices": [3, 3],
                "box": [10, 20, 18, 30],
                "probability": 0.2,
                "diameter_mm": 6.5,
            },
            {
                "series_uid": series_uid,
                "sop_instance_uid": sop_uids[5],
                "slice_index": 5,
                "slices": [5, 6],
                "box": [40, 40, 50, 52],
                "probability": 0.1,
                "diameter_mm": 4.0,
            },
        ),
    )
    fracture = FindingRow(
        id=13,
        study_pk=1,
        series_uid=series_uid,
        kind="fracture",
        probability=0.05,
        operating_point=0.5,
        urgent=False,
        model_name="fracture-ct",
        model_version="0.1",
        weights_sha256="c" * 64,
        regions=(),
    )
    return [nodule, fracture]


def _round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _dsrdump(ds: Dataset, tmp_path: Path) -> str:
    """dcmtk's SR reader on the object: it fails (non-zero, "E:" lines) on a malformed document tree."""
    tool = shutil.which("dsrdump")
    if tool is None:
        pytest.skip("dcmtk's dsrdump is not installed (scripts/install-test-deps)")
    path = tmp_path / "sr.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("E:")]
    assert done.returncode == 0 and not errors, done.stdout + done.stderr
    return done.stdout


def test_the_ai_sr_reads_back_to_the_same_findings(sample, tmp_path: Path) -> None:
    study, images, _, header = sample
    sop_uids = sorted(images)
    findings = [_bleed(header.SeriesInstanceUID), *_others(header.SeriesInstanceUID, sop_uids)]
    sr_uid, series_uid = object_uid("test", "sr"), object_uid("test", "series")
    ds = build_ai_sr(study, findings, images, sop_instance_uid=sr_uid, series_instance_uid=series_uid, software_version="0.1.0")
    back = _round_trip(ds)

    assert (back.SOPClassUID, back.SOPInstanceUID, back.SeriesInstanceUID) == (ComprehensiveSRStorage, sr_uid, series_uid)
    assert back.Modality == "SR" and back.SeriesDescription == AI_SR_SERIES_DESCRIPTION
    assert back.SeriesInstanceUID != header.SeriesInstanceUID
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    parsed = {f["kind"]: f for f in parse_ai_sr(back)}
    assert set(parsed) == {"bleed", "nodule", "fracture"}
    bleed, nodule, fracture = parsed["bleed"], parsed["nodule"], parsed["fracture"]
    assert (bleed["probability"], bleed["operating_point"], bleed["at_or_above"]) == (0.93, 0.35, True)
    assert bleed["referenced_sop_instance_uids"] == [TRUTH["findings"][0]["sop_instance_uids"][1]]
    assert bleed["boxes"] == [tuple(float(v) for v in TRUTH["findings"][0]["box"])]
    assert bleed["algorithm"] == ("bleed-ct", "1.2.0")
    # Two regions of one finding: two groups sharing its tracking UID, read back as one finding.
    assert nodule["referenced_sop_instance_uids"] == [sop_uids[3], sop_uids[5]]
    assert nodule["diameters_mm"] == [6.5, 4.0] and nodule["at_or_above"] is False
    assert (fracture["probability"], fracture["referenced_sop_instance_uids"]) == (0.05, [])
    # Finding types are SNOMED CT.
    for kind, finding in parsed.items():
        assert finding["finding_code"] == (FINDING_CODES[kind].value, "SCT")
    assert parsed["bleed"]["finding_code"] == ("1386000", "SCT")

    # The SR joins the study: the patient and study attributes are the images'.
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientSex",
        "PatientAge",
        "StudyInstanceUID",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
    ):
        assert back.get(keyword) == header.get(keyword), keyword
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in back.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }
    assert evidence == set(images)

    # The observer is the AI, a device, and the report calls itself a suggestion.
    dump = _dsrdump(back, tmp_path)
    assert '(121007,DCM,"Device")' in dump
    assert "bleed-ct 1.2.0" in dump
    assert AI_LABEL in json.dumps(back.to_json_dict())


def test_sr_uids_and_errors(sample) -> None:
    study, images, _, header = sample
    assert object_uid("a", 1) == object_uid("a", 1) != object_uid("a", 2)
    kwargs = {"sop_instance_uid": object_uid("x"), "series_instance_uid": object_uid("y")}
    with pytest.raises(ResultBuildError, match="no AI findings"):
        build_ai_sr(study, [], images, **kwargs)
    bad = _bleed(header.SeriesInstanceUID)
    with pytest.raises(ResultBuildError, match="not one of the source images"):
        build_ai_sr(study, [bad], {k: v for k, v in images.items() if k != bad.regions[0]["sop_instance_uid"]}, **kwargs)
    with pytest.raises(ResultBuildError, match='kind "edema" has no code'):
        build_ai_sr(study, [FindingRow(**{**bad.__dict__, "kind": "edema"})], images, **kwargs)


def test_a_key_image_has_the_box_and_the_label_burned_in(sample) -> None:
    study, _, paths, header = sample
    finding = _bleed(header.SeriesInstanceUID)
    region = finding.regions[0]
    source = key_image_source(paths[region["sop_instance_uid"]], "bleed", region["slice_index"])
    ds = _round_trip(build_key_image(study, finding, source, sop_instance_uid=object_uid("k"), series_instance_uid=object_uid("ks")))

    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.BurnedInAnnotation == "YES"
    assert (ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber) == (header.StudyInstanceUID, header.PatientID, header.AccessionNumber)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == region["sop_instance_uid"]
    assert AI_LABEL in ds.ImageComments
    pixels = ds.pixel_array
    assert pixels.shape == (header.Rows, header.Columns) and pixels.dtype == np.uint8
    row0, col0, row1, col1 = region["box"]
    # The box: a white line just outside each edge; inside, the image as windowed.
    assert (pixels[row0 - 1, col0 - 1 : col1 + 1] == 255).all() and (pixels[row1, col0 - 1 : col1 + 1] == 255).all()
    assert (pixels[row0 - 1 : row1 + 1, col0 - 1] == 255).all() and (pixels[row0 - 1 : row1 + 1, col1] == 255).all()
    assert np.array_equal(pixels[row0:row1, col0:col1], source.pixels[row0:row1, col0:col1])
    # The label: "AI SUGGESTION" in white, top left (scale 1 on a 256-pixel image, 2-pixel margin).
    mask = text_mask(KEY_IMAGE_TEXT)
    h, w = mask.shape
    shown = pixels[2 : 2 + h, 2 : 2 + w]
    assert (shown[mask] == 255).all() and (shown[~mask] == 0).all()


def test_burn_in_clips_at_the_edges_and_leaves_the_input_alone() -> None:
    image = np.full((64, 64), 100, dtype=np.uint8)
    out = burn_in(image, (50, 50, 70, 70), ["AI"])
    assert (image == 100).all()
    assert (out[49, 49:64] == 255).all() and (out[49:64, 49] == 255).all()
    assert out[60, 60] == 100  # inside the box
    assert text_mask("AI").shape == (7, 11) and text_mask("AI", 2).shape == (14, 22)
    with pytest.raises(ValueError, match='"image"'):
        burn_in(image.astype(np.float32), None, [])


def test_the_report_sr_has_the_signer_as_author_and_only_the_signed_text(sample, tmp_path: Path) -> None:
    study, images, _, header = sample
    text = "CT head: acute intraparenchymal haemorrhage, right.\nImpression: bleed."
    signed_at = datetime(2026, 1, 5, 4, 10, 30, tzinfo=UTC)
    first = object_uid("report", 1)
    ds = _round_trip(
        build_report_sr(
            study,
            text,
            "dr.jones",
            signed_at,
            2,
            images,
            sop_instance_uid=object_uid("report", 2),
            series_instance_uid=object_uid("rs"),
            amends=first,
        )
    )

    assert ds.SOPClassUID == BasicTextSRStorage and ds.Modality == "SR"
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    verifier = ds.VerifyingObserverSequence[0]
    assert str(verifier.VerifyingObserverName) == "dr.jones^"
    assert verifier.VerificationDateTime.startswith("20260105041030")
    assert str(ds.AuthorObserverSequence[0].PersonName) == "dr.jones^"
    assert report_text(ds) == text  # the signed text, nothing else
    assert ds.InstanceNumber == 2
    assert ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first
    assert (ds.StudyInstanceUID, ds.PatientID) == (header.StudyInstanceUID, header.PatientID)
    dump = _dsrdump(ds, tmp_path)
    assert 'PNAME:(,,"Person Observer Name")="dr.jones^"' in dump
    with pytest.raises(ResultBuildError, match="text is empty"):
        build_report_sr(study, "  ", "dr.jones", signed_at, 1, images, sop_instance_uid="1.2.3", series_instance_uid="1.2.4")


def test_a_radiograph_key_image_keeps_its_orientation_and_an_unknown_one_is_left_empty() -> None:
    xr = next(s for s in json.loads((REPO / "sample_studies" / "manifest.json").read_text())["studies"] if s["folder"] == "08_extremity_xr")
    path = REPO / "sample_studies" / "08_extremity_xr" / "0001.dcm"
    header = dcmread(path, stop_before_pixels=True)
    box = xr["findings"][0]["box"]
    finding = FindingRow(
        id=5,
        study_pk=1,
        series_uid=header.SeriesInstanceUID,
        kind="fracture",
        probability=0.8,
        operating_point=0.3,
        urgent=True,
        model_name="fracture-xr",
        model_version="1.0",
        weights_sha256="d" * 64,
        regions=(
            {
                "series_uid": header.SeriesInstanceUID,
                "sop_instance_uid": header.SOPInstanceUID,
                "slice_index": 0,
                "slices": [0, 0],
                "box": box,
                "probability": 0.8,
                "diameter_mm": None,
            },
        ),
    )
    study = {"study_uid": header.StudyInstanceUID, "patient_id": header.PatientID}
    source = key_image_source(path, "fracture")
    assert source.pixels.shape == (header.Rows, header.Columns)
    ds = build_key_image(study, finding, source, sop_instance_uid=object_uid("xr"), series_instance_uid=object_uid("s"))
    assert list(ds.PatientOrientation) == ["L", "F"]
    assert (ds.pixel_array[box[0] - 1, box[1] : box[3]] == 255).all()
    unknown = dataclasses.replace(source, patient_orientation=None)
    ds = build_key_image(study, finding, unknown, sop_instance_uid=object_uid("xr2"), series_instance_uid=object_uid("s"))
    assert ds.PatientOrientation == ""
    with pytest.raises(ResultBuildError, match="not on the image given"):
        build_key_image(
            study,
            finding,
            dataclasses.replace(source, sop_instance_uid="1.2.3"),
            sop_instance_uid=object_uid("xr3"),
            series_instance_uid=object_uid("s"),
        )


# --- time zones: the objects' own times on the site's clock, with its offset ------------------------


def _instant(date: str, time: str, offset: str) -> datetime:
    """DA + TM + TimezoneOffsetFromUTC -> the UTC instant they name (PS3.3 C.12.1.1.8)."""
    naive = datetime.strptime(date + time.split(".")[0], "%Y%m%d%H%M%S")
    sign = -1 if offset[0] == "-" else 1
    return (naive - sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "made", "offset", "local"),
    [
        ("Europe/Berlin", datetime(2026, 1, 15, 11, 0, 5, tzinfo=UTC), "+0100", ("20260115", "120005")),  # CET
        ("Europe/Berlin", datetime(2026, 7, 15, 11, 0, 5, tzinfo=UTC), "+0200", ("20260715", "130005")),  # CEST
        ("America/New_York", datetime(2026, 1, 15, 3, 30, tzinfo=UTC), "-0500", ("20260114", "223000")),  # the day before
        ("America/New_York", datetime(2026, 7, 15, 3, 30, tzinfo=UTC), "-0400", ("20260714", "233000")),
    ],
)
def test_the_sr_writes_its_own_times_in_the_site_zone_with_that_offset(sample, zone: str, made: datetime, offset: str, local) -> None:
    study, images, _, header = sample
    findings = [_bleed(header.SeriesInstanceUID)]
    kwargs = {"sop_instance_uid": object_uid("tz", zone, made), "series_instance_uid": object_uid("tzs")}
    back = _round_trip(build_ai_sr(study, findings, images, content_time=made, zone=ZoneInfo(zone), **kwargs))

    assert back.TimezoneOffsetFromUTC == offset
    assert (back.ContentDate, back.ContentTime) == local
    # Every date and time of our own is on the same clock: the offset applies to all (PS3.3 C.12.1).
    assert (back.SeriesDate, back.SeriesTime) == (back.InstanceCreationDate, back.InstanceCreationTime) == local
    assert _instant(back.ContentDate, back.ContentTime, back.TimezoneOffsetFromUTC) == made
    # The study's local date and time are copied untouched: the offset is what they always meant.
    assert (back.StudyDate, back.StudyTime) == (header.StudyDate, header.StudyTime)


def test_without_a_zone_the_offset_is_left_out_and_a_naive_time_is_refused(sample) -> None:
    study, images, _, header = sample
    kwargs = {"sop_instance_uid": object_uid("nz"), "series_instance_uid": object_uid("nzs")}
    back = _round_trip(build_ai_sr(study, [_bleed(header.SeriesInstanceUID)], images, **kwargs))
    assert "TimezoneOffsetFromUTC" not in back  # unknown: not declared (our times are the host's)
    assert back.InstanceCreationDate == back.ContentDate
    with pytest.raises(ResultBuildError, match='"content_time" must be timezone-aware'):
        build_ai_sr(study, [_bleed(header.SeriesInstanceUID)], images, content_time=datetime(2026, 1, 1, 12, 0), **kwargs)


def test_the_report_sr_and_key_image_use_the_site_zone(sample) -> None:
    study, images, paths, header = sample
    berlin = ZoneInfo("Europe/Berlin")
    signed_at = datetime(2026, 1, 5, 4, 10, 30, tzinfo=UTC)
    report = _round_trip(
        build_report_sr(
            study,
            "Impression: bleed.",
            "dr.jones",
            signed_at,
            1,
            images,
            sop_instance_uid="1.2.3",
            series_instance_uid="1.2.4",
            zone=berlin,
        )
    )
    assert (report.ContentDate, report.ContentTime, report.TimezoneOffsetFromUTC) == ("20260105", "051030", "+0100")
    # A DT carries its own offset, so it names the same instant whatever the instance's offset.
    assert report.VerifyingObserverSequence[0].VerificationDateTime == "20260105051030+0100"
    assert (report.StudyDate, report.StudyTime) == (header.StudyDate, header.StudyTime)

    finding = _bleed(header.SeriesInstanceUID)
    region = finding.regions[0]
    source = key_image_source(paths[region["sop_instance_uid"]], "bleed", region["slice_index"])
    made = datetime(2026, 7, 1, 22, 15, tzinfo=UTC)
    key = _round_trip(
        build_key_image(
            study, finding, source, sop_instance_uid=object_uid("kz"), series_instance_uid=object_uid("kzs"), content_time=made, zone=berlin
        )
    )
    assert (key.ContentDate, key.ContentTime, key.TimezoneOffsetFromUTC) == ("20260702", "001500", "+0200")
    assert _instant(key.InstanceCreationDate, key.InstanceCreationTime, key.TimezoneOffsetFromUTC) == made
    assert (key.StudyDate, key.StudyTime) == (header.StudyDate, header.StudyTime)
