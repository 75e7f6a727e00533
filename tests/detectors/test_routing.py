"""Routing from series headers to detectors: table-driven over realistic tags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from detectors.routing import FindingKind, Route, SeriesInfo, route

REPO_ROOT = Path(__file__).resolve().parents[2]
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")

BLEED = (FindingKind.BLEED,)
NODULE = (FindingKind.NODULE,)
FRACTURE = (FindingKind.FRACTURE,)
NONE: tuple[FindingKind, ...] = ()


def ct(**kw: Any) -> SeriesInfo:
    return SeriesInfo(**{"modality": "CT", "image_type": AXIAL, "sop_class_uid": CT_IMAGE, **kw})


def xr(modality: str = "DX", **kw: Any) -> SeriesInfo:
    sop = CR_IMAGE if modality == "CR" else DX_IMAGE
    return SeriesInfo(**{"modality": modality, "image_type": ("ORIGINAL", "PRIMARY"), "sop_class_uid": sop, **kw})


CASES = [
    # --- head CT -> bleed
    ("head body part", ct(body_part="HEAD"), BLEED, "head CT (body part HEAD)"),
    ("brain body part", ct(body_part="BRAIN"), BLEED, "head CT"),
    ("CT HEAD WO", ct(series_description="CT HEAD WO"), BLEED, "series description"),
    ("CTH abbreviation", ct(study_description="CTH"), BLEED, "study description 'CTH'"),
    ("NCCT HEAD", ct(series_description="NCCT HEAD 5mm"), BLEED, "head CT"),
    ("cranium lower case", ct(protocol_name="routine cranium"), BLEED, "protocol name"),
    ("skull", ct(series_description="Skull 2.5"), BLEED, "head CT"),
    ("HEADNECK body part", ct(body_part="HEADNECK", series_description="AXIAL 5MM"), BLEED, "head CT"),
    ("head and c-spine trauma: head wins", ct(study_description="CT HEAD + C-SPINE"), BLEED, "head CT"),
    ("head with bone word", ct(series_description="Head_Bone 1.0"), BLEED, "head CT"),
    # --- head CT angiography/perfusion -> skipped
    ("CTA head neck", ct(body_part="HEAD", series_description="CTA HEAD/NECK"), NONE, "angiography"),
    ("perfusion", ct(body_part="BRAIN", series_description="Perfusion 4D"), NONE, "angiography"),
    (
        "angio in study only",
        ct(body_part="HEAD", series_description="AXIAL 0.625", study_description="CODE STROKE CTA CTP"),
        NONE,
        "study description",
    ),
    (
        "non-contrast series of a stroke study",
        ct(body_part="HEAD", series_description="HEAD W/O 5MM", study_description="CODE STROKE CTA"),
        BLEED,
        "head CT",
    ),
    ("chest CTA is still chest", ct(series_description="CTA CHEST PE"), NODULE, "chest CT"),
    # --- chest CT -> nodule
    ("chest body part", ct(body_part="CHEST"), NODULE, "chest CT (body part CHEST)"),
    ("thorax", ct(series_description="Thorax 1.0 B70f"), NODULE, "chest CT"),
    ("lungs plural", ct(series_description="LUNGS HRCT"), NODULE, "chest CT"),
    ("low dose chest is screening, not a dose report", ct(study_description="LDCT LOW DOSE CHEST"), NODULE, "chest CT"),
    ("chest abdomen pelvis: chest wins", ct(study_description="CT CHEST ABDOMEN PELVIS W CONTRAST"), NODULE, "chest CT"),
    ("CHESTABDPELVIS body part", ct(body_part="CHESTABDPELVIS"), NODULE, "chest CT"),
    # --- chest radiograph -> nodule
    ("PA chest DX", xr(series_description="PA CHEST"), NODULE, "chest radiograph"),
    ("AP chest CR", xr("CR", study_description="AP Chest Portable"), NODULE, "chest radiograph"),
    ("CXR DR", xr("DR", study_description="CXR"), NODULE, "chest radiograph"),
    ("chest body part lower case modality", xr("dx", body_part="chest"), NODULE, "chest radiograph"),
    # --- skeletal -> fracture
    ("tib/fib", xr(series_description="TIB/FIB LAT"), FRACTURE, "skeletal radiograph"),
    ("wrist CR", xr("CR", body_part="WRIST"), FRACTURE, "skeletal radiograph (body part WRIST)"),
    ("L-spine DX", xr(study_description="L-SPINE 2 VIEWS"), FRACTURE, "skeletal radiograph"),
    ("hands plural", xr(series_description="Hands PA"), FRACTURE, "skeletal radiograph"),
    ("femoral head is a bone", xr(series_description="FEMORAL HEAD LT"), FRACTURE, "skeletal"),
    ("head of femur is a bone", xr(series_description="Head of femur"), FRACTURE, "skeletal"),
    ("pelvis CR", xr("CR", body_part="PELVIS"), FRACTURE, "skeletal radiograph"),
    ("extremity body part", xr(body_part="EXTREMITY"), FRACTURE, "skeletal radiograph"),
    ("CT ankle", ct(series_description="ANKLE BONE 0.6"), FRACTURE, "skeletal CT"),
    ("CT thoracic spine is not chest", ct(study_description="CT THORACIC SPINE"), FRACTURE, "skeletal CT"),
    # --- anatomy with no detector
    ("abdomen pelvis CT", ct(study_description="CT ABDOMEN PELVIS"), NONE, "no detector for CT of this anatomy"),
    ("DXA spine", xr(study_description="DXA LUMBAR SPINE HIP"), NONE, "this anatomy"),
    ("skull radiograph", xr(body_part="SKULL"), NONE, "no detector for radiograph of head"),
    # --- precedence and conflicts
    ("body part beats series description", ct(body_part="CHEST", series_description="HEAD"), NODULE, "body part CHEST"),
    ("series beats study", ct(series_description="LUNG 1mm", study_description="CT HEAD"), NODULE, "series description"),
    ("study beats protocol", xr(study_description="KNEE 3V", protocol_name="CHEST PA"), FRACTURE, "study description"),
    ("unknown body part falls through", ct(body_part="OTHER", series_description="Brain 5mm"), BLEED, "series description"),
    ("generic series, anatomy in protocol", ct(series_description="AXIAL 5MM", protocol_name="1.1 Head Routine"), BLEED, "protocol name"),
    # --- skips
    ("localizer image type", ct(body_part="HEAD", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), NONE, "localizer/scout"),
    ("scout description", ct(body_part="CHEST", series_description="Scout"), NONE, "localizer/scout"),
    ("topogram", ct(body_part="HEAD", series_description="Topogram  0.6  T20f"), NONE, "localizer/scout"),
    ("surview", ct(series_description="SURVIEW", study_description="CT HEAD"), NONE, "localizer/scout"),
    ("dose SR", SeriesInfo(modality="SR", sop_class_uid=DOSE_SR, study_description="CT HEAD"), NONE, "radiation dose report (SR)"),
    ("other SR", SeriesInfo(modality="SR", sop_class_uid=ENHANCED_SR), NONE, "structured report"),
    (
        "dose secondary capture",
        ct(sop_class_uid=SC_IMAGE, image_type=("DERIVED", "SECONDARY"), series_description="Dose Report", study_description="CT HEAD"),
        NONE,
        "radiation dose report",
    ),
    (
        "patient protocol page",
        ct(series_description="Patient Protocol", body_part="HEAD", image_type=("DERIVED", "SECONDARY", "OTHER")),
        NONE,
        "dose report",
    ),
    ("derived MPR", ct(body_part="CHEST", image_type=("DERIVED", "SECONDARY", "MPR")), NONE, "derived"),
    ("secondary in value 2", ct(body_part="HEAD", image_type=("ORIGINAL", "SECONDARY", "AXIAL")), NONE, "derived"),
    ("MIP by description", ct(body_part="CHEST", series_description="Cor MIP 10mm"), NONE, "derived"),
    ("MR", SeriesInfo(modality="MR", body_part="HEAD"), NONE, "no detector for MR"),
    ("US", SeriesInfo(modality="US", body_part="ABDOMEN"), NONE, "no detector for US"),
    ("MG", SeriesInfo(modality="MG", body_part="BREAST"), NONE, "no detector for MG"),
    ("no modality", SeriesInfo(body_part="CHEST"), NONE, "no detector for unknown modality"),
    (
        "VL photo with dose in text is not a secondary capture",
        SeriesInfo(modality="XC", sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.4", series_description="DOSE"),
        NONE,
        "no detector for XC",
    ),
    # --- anatomy unknown without a content check
    ("empty tags", ct(), NONE, "anatomy unknown (no body part or description; no content check)"),
    ("generic description", ct(series_description="AXIAL 5MM"), NONE, "series description 'AXIAL 5MM'"),
]


@pytest.mark.parametrize(("info", "detectors", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_route_table(info: SeriesInfo, detectors: tuple[FindingKind, ...], reason: str) -> None:
    result = route(info)
    assert result.detectors == detectors
    assert result.analysed is bool(detectors)
    assert reason in result.reason
    assert result.reason.startswith("not analysed: ") is not result.analysed


CONTENT_CASES = [
    ("skull ring found", ct(series_description="AXIAL 5MM"), "HEAD", BLEED, "content check HEAD"),
    ("chest found", ct(), "CHEST", NODULE, "chest CT"),
    ("extremity radiograph", xr(), "EXTREMITY", FRACTURE, "skeletal radiograph"),
    ("check finds nothing", ct(), None, NONE, "content check found nothing"),
    ("check says unknown word", ct(), "BLOB", NONE, "anatomy unknown"),
]


@pytest.mark.parametrize(("info", "found", "detectors", "reason"), [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES])
def test_content_check_when_tags_are_silent(info: SeriesInfo, found: str | None, detectors: tuple[FindingKind, ...], reason: str) -> None:
    calls: list[int] = []

    def check() -> str | None:
        calls.append(1)
        return found

    result = route(info, content_check=check)
    assert calls == [1]
    assert result.detectors == detectors
    assert reason in result.reason


@pytest.mark.parametrize(
    "info", [ct(body_part="HEAD"), ct(series_description="SCOUT"), SeriesInfo(modality="MR")], ids=["tags name anatomy", "skipped", "MR"]
)
def test_content_check_not_called_when_not_needed(info: SeriesInfo) -> None:
    def check() -> str | None:
        raise AssertionError("content check must not run")

    route(info, content_check=check)


def test_from_dataset_reads_tags() -> None:
    ds = Dataset()
    ds.Modality = "CT"
    ds.BodyPartExamined = "HEAD"
    ds.StudyDescription = "CT HEAD WO"
    ds.SeriesDescription = "Head 5mm"
    ds.ProtocolName = "Routine Head"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE
    ds.Rows = 512
    ds.Columns = 512
    info = SeriesInfo.from_dataset(ds, number_of_images=32)
    assert info == SeriesInfo("CT", "HEAD", "CT HEAD WO", "Head 5mm", "Routine Head", AXIAL, CT_IMAGE, 32, 512, 512)
    assert route(info) == Route(BLEED, "head CT (body part HEAD)", True)


def test_from_dataset_tolerates_missing_tags() -> None:
    info = SeriesInfo.from_dataset(Dataset())
    assert info == SeriesInfo()
    assert not route(info).analysed


def test_from_dataset_single_valued_image_type() -> None:
    ds = Dataset()
    ds.ImageType = "DERIVED"
    assert SeriesInfo.from_dataset(ds).image_type == ("DERIVED",)


def test_routing_does_not_import_torch() -> None:
    code = "import detectors.routing, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# --- real-world Image Types (issue 12): derived is not the same as a reformat ---------

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.4"

DERIVED_CASES = [
    # Analysed: processed radiographs for presentation and vendors' CT reconstructions.
    ("CR for presentation", xr("CR", body_part="CHEST", image_type=("DERIVED", "PRIMARY")), NODULE, "chest radiograph (body part CHEST)"),
    (
        "DX for presentation, post-processed",
        xr(body_part="KNEE", image_type=("DERIVED", "PRIMARY", "POST_PROCESSED")),
        FRACTURE,
        "skeletal radiograph",
    ),
    (
        "CT reconstruction DERIVED PRIMARY AXIAL",
        ct(body_part="HEAD", image_type=("DERIVED", "PRIMARY", "AXIAL", "CT_SOM5 SPI")),
        BLEED,
        "head CT (body part HEAD)",
    ),
    (
        "Enhanced CT original volume",
        ct(body_part="CHEST", sop_class_uid=ENHANCED_CT, image_type=("ORIGINAL", "PRIMARY", "VOLUME", "NONE")),
        NODULE,
        "chest CT",
    ),
    # Skipped, each with what it is and the evidence.
    (
        "GE reformat",
        ct(body_part="CHEST", image_type=("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE")),
        NONE,
        r"derived/secondary image (Image Type DERIVED\SECONDARY\REFORMATTED\AVERAGE",
    ),
    (
        "MPR labelled primary",
        ct(body_part="CHEST", image_type=("DERIVED", "PRIMARY", "MPR")),
        NONE,
        r"derived image: reformat (Image Type DERIVED\PRIMARY\MPR)",
    ),
    ("curved reformat", ct(body_part="CHEST", image_type=("DERIVED", "PRIMARY", "CURVED")), NONE, "derived image: reformat"),
    (
        "Siemens MIP",
        ct(body_part="CHEST", image_type=("DERIVED", "PRIMARY", "PROJECTION IMAGE")),
        NONE,
        "derived image: intensity projection (MIP/MinIP)",
    ),
    ("MinIP", ct(body_part="CHEST", image_type=("DERIVED", "PRIMARY", "MINIP")), NONE, "intensity projection"),
    (
        "derived volume",
        ct(body_part="HEAD", image_type=("DERIVED", "PRIMARY", "VOLUME")),
        NONE,
        "derived image: volume reformat or rendering",
    ),
    (
        "enhanced MIP by derived pixel contrast",
        ct(body_part="CHEST", sop_class_uid=ENHANCED_CT, image_type=("DERIVED", "PRIMARY", "VOLUME", "MAXIMUM")),
        NONE,
        "derived image: volume reformat or rendering",
    ),
    (
        "CT perfusion map (eCT_Supplemental)",
        ct(sop_class_uid=ENHANCED_CT, image_type=("DERIVED", "PRIMARY", "PERFUSION", "RCBF")),
        NONE,
        r"derived image: perfusion/parametric map (Image Type DERIVED\PRIMARY\PERFUSION\RCBF)",
    ),
    (
        "secondary capture, original",
        ct(sop_class_uid=SC_IMAGE, body_part="HEAD"),
        NONE,
        "secondary capture (a screen capture or scanned image, not an acquisition)",
    ),
    (
        "multi-frame SC with modality OT",
        SeriesInfo(modality="OT", sop_class_uid=MULTIFRAME_SC, body_part="CHEST"),
        NONE,
        "secondary capture",
    ),
    (
        "reformat by description",
        ct(body_part="CHEST", series_description="COR MPR 3mm", image_type=("DERIVED", "PRIMARY", "AXIAL")),
        NONE,
        "derived image: reformat or MIP (series description 'COR MPR 3mm')",
    ),
]


@pytest.mark.parametrize(("info", "detectors", "reason"), [c[1:] for c in DERIVED_CASES], ids=[c[0] for c in DERIVED_CASES])
def test_derived_images(info: SeriesInfo, detectors: tuple[FindingKind, ...], reason: str) -> None:
    result = route(info)
    assert result.detectors == detectors
    assert result.analysed is bool(detectors)
    assert reason in result.reason
    assert "derived" not in result.reason or not result.analysed
