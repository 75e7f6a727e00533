"""The AI's results and the signed report as DICOM objects, built with highdicom.

- :func:`build_ai_sr`: a Comprehensive SR following TID 1500 (Measurement
  Report): the triage AI as the device observer, one measurement group per
  AI finding region (TID 1410, a rectangle on the source image) or per
  finding without a region (TID 1501), each with its coded finding type
  (SNOMED CT), the probability, the detector's operating point and whether
  the probability reaches it, the algorithm (name, version, weights) and,
  for nodules, the diameter. Patient and study attributes are copied from the
  study so that the SR joins it in the PACS.
- :func:`build_key_image`: a Secondary Capture of a finding's strongest region
  with its box and "AI SUGGESTION" burned into the pixels.
- :func:`build_report_sr`: the signed report as a Basic Text SR, the
  radiologist its author and verifying observer.
- :func:`parse_ai_sr`: the AI SR read back (with highdicom) to kinds,
  probabilities and referenced images.

No database and no network: values in, ``pydicom`` datasets out. The AI's
output is labelled a suggestion in every object.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, BasicTextSRStorage, Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage, generate_uid
from pydicom.valuerep import DA, DT, TM

from dicom_io.errors import DicomIOError

log = logging.getLogger(__name__)

AI_LABEL = "AI suggestion, not a diagnosis"
AI_SR_SERIES_DESCRIPTION = "AI triage results (suggestion)"
KEY_IMAGE_SERIES_DESCRIPTION = "AI key images (suggestion)"
REPORT_SERIES_DESCRIPTION = "Signed radiology report"
KEY_IMAGE_TEXT = "AI SUGGESTION"
# Series numbers of our objects: high, so that PACS viewers list them after the acquired series.
AI_SR_SERIES_NUMBER = 9901
KEY_IMAGE_SERIES_NUMBER = 9902
REPORT_SERIES_NUMBER = 9903

# The finding types, SNOMED CT (scheme designator SCT, PS3.16 8.1):
# - 1386000 "Intracranial hemorrhage (disorder)": in DICOM's own code tables
#   (pydicom.sr.codedict codes.SCT.IntracranialHemorrhage, from PS3.16).
# - 125605004 "Fracture of bone (disorder)": the SNOMED CT concept that
#   SNOMED International's authoring tools and ECL examples use as the root
#   of bone fractures (e.g. "<<125605004 |Fracture of bone (disorder)|").
# - 786838002 "Nodule of lung (disorder)", preferred term "Pulmonary nodule",
#   as HL7 FHIR imaging examples code lung nodules. Chosen over 427359005
#   "Solitary nodule of lung": the detector marks any lung nodule, not only a
#   solitary one.
FINDING_CODES: Mapping[str, Code] = {
    "bleed": Code("1386000", "SCT", "Intracranial hemorrhage"),
    "fracture": Code("125605004", "SCT", "Fracture of bone"),
    "nodule": Code("786838002", "SCT", "Nodule of lung"),
}
_KIND_BY_CODE = {(c.value, c.scheme_designator): kind for kind, c in FINDING_CODES.items()}

# DCM 122157 "Probability" (PS3.16 Annex D); UCUM "1" "no units" (CID 7181).
PROBABILITY = codes.DCM.Probability
# DCM 122411 "Threshold Value": the detector's operating point, in probability.
OPERATING_POINT = codes.DCM.ThresholdValue
NO_UNITS = Code("1", "UCUM", "no units")
DIAMETER = codes.SCT.Diameter  # SCT 81827009
MILLIMETER = Code("mm", "UCUM", "millimeter")
# Whether the probability reaches the operating point, coded as CAD SR does
# (DCM 111056 "Rendering Intent", values of CID 6034 "Intended Use of CAD
# Output"): at or above, presentation required; below, optional.
DECISION = codes.DCM.RenderingIntent
AT_OR_ABOVE = codes.DCM.PresentationRequiredRenderingDeviceIsExpectedToPresent
BELOW = codes.DCM.PresentationOptionalRenderingDeviceMayPresent
# SCT 363679005 "Imaging procedure" (CID 100): what the report is about.
PROCEDURE = codes.SCT.ImagingProcedure


class ResultBuildError(DicomIOError):
    """A result object cannot be built from what was given; the message names why."""


class FindingLike(Protocol):
    """What the builders read of an AI finding (``triage.flow.cases.FindingRow`` has it).

    Read-only members, so that a frozen dataclass such as ``FindingRow`` matches.
    """

    @property
    def id(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def series_uid(self) -> str: ...

    @property
    def probability(self) -> float: ...

    @property
    def operating_point(self) -> float: ...

    @property
    def urgent(self) -> bool: ...

    @property
    def model_name(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def weights_sha256(self) -> str: ...

    @property
    def regions(self) -> Sequence[Mapping[str, Any]]: ...


@dataclass(frozen=True)
class SourceImage:
    """A referenced image: its SOP class and series."""

    sop_class_uid: str
    series_uid: str


# --- small helpers --------------------------------------------------------------------------


def object_uid(*parts: object) -> UID:
    """A UID that is the same every time for the same parts (PS3.5 B.2: derived from a hash).

    A result object keeps its SOP Instance UID when it is built again (after a
    crash, or by a second worker), so a PACS sees the same instance, not two.
    """
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _get(study: Mapping[str, Any], key: str) -> str:
    value = study.get(key)
    return "" if value is None else str(value)


def _sex(value: str) -> str:
    # PS3.3 C.7.1.1: M, F or O; anything else is left empty (Type 2).
    return value if value in ("M", "F", "O") else ""


def _check_study(study: Mapping[str, Any]) -> str:
    uid = _get(study, "study_uid")
    if not uid:
        raise ResultBuildError('Argument "study" has no study_uid')
    return uid


def _stub(study: Mapping[str, Any], sop_uid: str, source: SourceImage) -> Dataset:
    """The header highdicom reads from an evidence instance: patient, study and identity."""
    ds = Dataset()
    ds.PatientID = _get(study, "patient_id")
    ds.PatientName = _get(study, "patient_name")
    ds.PatientBirthDate = _get(study, "patient_birth_date")
    ds.PatientSex = _sex(_get(study, "patient_sex"))
    if study.get("patient_age"):
        ds.PatientAge = _get(study, "patient_age")
    ds.StudyInstanceUID = _check_study(study)
    ds.AccessionNumber = _get(study, "accession_number")
    ds.StudyID = _get(study, "study_id")
    ds.StudyDate = _get(study, "study_date")
    ds.StudyTime = _get(study, "study_time")
    ds.ReferringPhysicianName = _get(study, "referring_physician")
    if study.get("study_description"):
        ds.StudyDescription = _get(study, "study_description")
    ds.SeriesInstanceUID = source.series_uid
    ds.SOPClassUID = source.sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names as received, whatever their script
    return ds


@contextmanager
def _names_as_received() -> Iterator[None]:
    """Patient and physician names are copied as the study has them, so the result matches it;
    highdicom warns about single-component names (valid PN, PS3.5 6.2.1.1), which is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def _finish(ds: Dataset, series_description: str, when: datetime) -> Dataset:
    ds.SeriesDescription = series_description
    local = when.astimezone(UTC)
    ds.ContentDate = DA(local.date())
    ds.ContentTime = TM(local.time())
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    ds.TimezoneOffsetFromUTC = "+0000"  # our dates and times are UTC (PS3.3 C.12.1.1.8)
    return ds


def _rectangle(box: Sequence[float]) -> np.ndarray:
    """``(row0, col0, row1, col1)``, half-open pixel indices -> a closed (column, row) polyline.

    SCOORD coordinates are (column, row) with (0, 0) the top left corner of the
    top left pixel (PS3.3 C.18.6.1.2), so the half-open box's edges are its bounds.
    """
    row0, col0, row1, col1 = (float(v) for v in box)
    if not (row1 > row0 and col1 > col0):
        raise ResultBuildError(f"region box {tuple(box)} is empty (needs row0 < row1 and col0 < col1)")
    return np.array([[col0, row0], [col1, row0], [col1, row1], [col0, row1], [col0, row0]], dtype=np.float32)


# --- the AI's findings: TID 1500 ----------------------------------------------------------------


def build_ai_sr(
    study: Mapping[str, Any],
    findings: Sequence[FindingLike],
    source_images: Mapping[str, SourceImage | tuple[str, str]],
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    manufacturer: str = "triage",
    device_name: str = "triage-ai",
    software_version: str = "",
    institution_name: str | None = None,
    content_time: datetime | None = None,
) -> Dataset:
    """The AI's findings for a study as a Comprehensive SR with a TID 1500 Measurement Report.

    Parameters
    ----------
    study
        Study attributes: ``study_uid`` (required), ``patient_id``,
        ``patient_name``, ``patient_sex``, ``patient_birth_date``,
        ``patient_age``, ``accession_number``, ``study_id``, ``study_date``,
        ``study_time``, ``referring_physician``, ``study_description``.
    findings
        The AI findings (``triage.flow.cases.FindingRow``-like), at least one.
    source_images
        SOP Instance UID -> (SOP Class UID, Series Instance UID) of every image
        a region references, and of the series scored (the report's evidence).
    sop_instance_uid, series_instance_uid
        The SR's own identity (a new series of modality SR).
    manufacturer, device_name, software_version
        The observer device and the Manufacturer attribute.

    Returns
    -------
    pydicom.dataset.Dataset
        A ``highdicom.sr.ComprehensiveSR`` (complete, preliminary, unverified:
        a machine's suggestion, never a signed result).

    Raises
    ------
    ResultBuildError
        If there are no findings, a finding kind has no code, or a region
        references an image not in ``source_images``.
    """
    study_uid = _check_study(study)
    if not findings:
        raise ResultBuildError(f"study {study_uid}: no AI findings to report")
    images = {uid: SourceImage(*s) if isinstance(s, tuple) else s for uid, s in source_images.items()}
    if not images:
        raise ResultBuildError(f"study {study_uid}: no source images (the SR's evidence)")
    groups: list[Any] = []
    for finding in findings:
        groups.extend(_finding_groups(finding, images, sop_instance_uid))
    models = sorted({f"{f.model_name} {f.model_version}" for f in findings})
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=object_uid("device", manufacturer, device_name),
        name=f"{device_name} ({AI_LABEL})",
        manufacturer_name=manufacturer,
        model_name="; ".join(models),
        serial_number=software_version or None,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence = [_stub(study, uid, src) for uid, src in sorted(images.items())]
    with _names_as_received():
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=AI_SR_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=manufacturer,
            is_complete=True,
            is_final=False,  # PRELIMINARY: a suggestion for the reader, not a final report
            is_verified=False,
            institution_name=institution_name,
            software_versions=software_version or None,
        )
    return _finish(sr, AI_SR_SERIES_DESCRIPTION, content_time or datetime.now(UTC))


def _finding_groups(finding: FindingLike, images: Mapping[str, SourceImage], sr_uid: str) -> list[Any]:
    code = FINDING_CODES.get(finding.kind)
    if code is None:
        raise ResultBuildError(f'finding {finding.id}: kind "{finding.kind}" has no code ({", ".join(FINDING_CODES)})')
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model_name,
        version=finding.model_version,
        parameters=[f"weights sha256 {finding.weights_sha256}", AI_LABEL],
    )
    at_or_above = finding.probability >= finding.operating_point

    def common(extra: Sequence[Any] = ()) -> dict[str, Any]:
        measurements = [
            hd.sr.Measurement(name=PROBABILITY, value=float(finding.probability), unit=NO_UNITS),
            hd.sr.Measurement(name=OPERATING_POINT, value=float(finding.operating_point), unit=NO_UNITS),
            *extra,
        ]
        return {
            "finding_type": code,
            "algorithm_id": algorithm,
            "measurements": measurements,
            "qualitative_evaluations": [
                hd.sr.QualitativeEvaluation(name=DECISION, value=AT_OR_ABOVE if at_or_above else BELOW)
            ],
        }

    # One tracking UID per finding: its regions are groups that share it (TID 4108).
    tracking_uid = object_uid(sr_uid, "finding", finding.id)
    label = f"AI {finding.kind} finding {finding.id}"
    if not finding.regions:
        series_images = [uid for uid, s in sorted(images.items()) if s.series_uid == finding.series_uid]
        sources = [hd.sr.SourceImageForMeasurementGroup(images[uid].sop_class_uid, uid) for uid in series_images]
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label),
                source_images=sources or None,
                **common(),
            )
        ]
    groups = []
    for number, region in enumerate(finding.regions, start=1):
        sop_uid = str(region.get("sop_instance_uid") or "")
        if sop_uid not in images:
            raise ResultBuildError(
                f"finding {finding.id}: region {number} references image {sop_uid!r}, not one of the source images"
            )
        extra = []
        if region.get("diameter_mm") is not None:
            extra.append(hd.sr.Measurement(name=DIAMETER, value=float(region["diameter_mm"]), unit=MILLIMETER))
        roi = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_rectangle(region["box"]),
            source_image=hd.sr.SourceImageForRegion(images[sop_uid].sop_class_uid, sop_uid),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=f"{label}, region {number}"),
                referenced_region=roi,
                **common(extra),
            )
        )
    return groups


def parse_ai_sr(ds: Dataset | str | Path) -> list[dict[str, Any]]:
    """An AI SR (from :func:`build_ai_sr`) read back with highdicom: one dict per finding.

    Each dict has ``kind`` (None for a finding type we do not know),
    ``finding_code`` ``(value, scheme)``, ``probability``, ``operating_point``,
    ``at_or_above`` (bool), ``algorithm`` ``(name, version)``,
    ``referenced_sop_instance_uids`` (the regions' images, in order),
    ``boxes`` (``(row0, col0, row1, col1)`` per region) and ``diameters_mm``.

    Raises
    ------
    ResultBuildError
        If the dataset is not a TID 1500 measurement report.
    """
    if not isinstance(ds, Dataset):
        ds = dcmread(ds)
    sr_classes: dict[str, Any] = {  # keyed by UID, a str: looked up by the dataset's UID as a str
        ComprehensiveSRStorage: hd.sr.ComprehensiveSR,
        Comprehensive3DSRStorage: hd.sr.Comprehensive3DSR,
        EnhancedSRStorage: hd.sr.EnhancedSR,
    }
    cls = sr_classes.get(str(ds.get("SOPClassUID", "")))
    if cls is None:
        raise ResultBuildError(f"not a Comprehensive or Enhanced SR (SOP Class {ds.get('SOPClassUID')})")
    content = cls.from_dataset(ds).content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ResultBuildError("the SR is not a TID 1500 measurement report")
    found: dict[str, dict[str, Any]] = {}
    groups = [*content.get_planar_roi_measurement_groups(), *content.get_image_measurement_groups()]
    for group in groups:
        key = str(group.tracking_uid)
        code = group.finding_type
        entry = found.setdefault(key, {
            "kind": _KIND_BY_CODE.get((code.value, code.scheme_designator)) if code else None,
            "finding_code": (code.value, code.scheme_designator) if code else None,
            "probability": None, "operating_point": None, "at_or_above": None, "algorithm": None,
            "referenced_sop_instance_uids": [], "boxes": [], "diameters_mm": [],
        })  # fmt: skip
        for m in group.get_measurements():
            if m.name == PROBABILITY:
                entry["probability"] = float(m.value)
            elif m.name == OPERATING_POINT:
                entry["operating_point"] = float(m.value)
            elif m.name == DIAMETER:
                entry["diameters_mm"].append(float(m.value))
        for q in group.get_qualitative_evaluations():
            if q.name == DECISION:
                entry["at_or_above"] = q.value == AT_OR_ABOVE
        algorithm = _algorithm(group)
        if algorithm is not None:
            entry["algorithm"] = algorithm
        roi = getattr(group, "roi", None)
        if roi is not None:
            source = roi.ContentSequence[0]
            entry["referenced_sop_instance_uids"].append(str(source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            points = np.asarray(roi.value)
            entry["boxes"].append((float(points[:, 1].min()), float(points[:, 0].min()),
                                   float(points[:, 1].max()), float(points[:, 0].max())))  # fmt: skip
    return list(found.values())


def _algorithm(group: Any) -> tuple[str, str] | None:
    name = version = None
    for item in group[0].ContentSequence:
        concept = item.ConceptNameCodeSequence[0]
        if concept.CodeValue == "111001":  # Algorithm Name
            name = str(item.TextValue)
        elif concept.CodeValue == "111003":  # Algorithm Version
            version = str(item.TextValue)
    return (name, version) if name is not None and version is not None else None


# --- the signed report: Basic Text SR -----------------------------------------------------------


class _BasicTextSR(hd.sr.sop._SR):
    """Basic Text SR (PS3.3 A.35.1). highdicom has classes only for Enhanced
    and Comprehensive SR; its common base builds any SR IOD, and a report's
    content (CONTAINER, TEXT, CODE, PNAME by value) is within Basic Text SR's
    constraints, which every PACS displays."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(sop_class_uid=BasicTextSRStorage, **kwargs)


def person_name(name: str) -> str:
    """A user name as a DICOM PN: a name without components is the family name (PS3.5 6.2.1.1)."""
    name = name.strip()
    return name if "^" in name else f"{name}^"


def build_report_sr(
    study: Mapping[str, Any],
    text: str,
    author: str,
    signed_at: datetime,
    version: int,
    evidence: Mapping[str, SourceImage | tuple[str, str]],
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    amends: str | None = None,
    manufacturer: str = "triage",
    institution_name: str | None = None,
) -> Dataset:
    """A signed report as a Basic Text SR: the radiologist its author and verifying observer.

    Parameters
    ----------
    study
        Study attributes, as for :func:`build_ai_sr`.
    text
        The signed report text, exactly as signed.
    author
        The radiologist who signed (the person observer and the verifying observer).
    signed_at
        When it was signed (the verification and content date-time), timezone-aware.
    version
        The report version (1, then one more per amendment): the Instance Number.
    evidence
        The study's images the report is about (SOP Instance UID -> SOP class, series).
    amends
        The SOP Instance UID of the report SR this version amends (its predecessor), if any.

    Returns
    -------
    pydicom.dataset.Dataset
        Completion COMPLETE, verification VERIFIED, preliminary flag FINAL.

    Raises
    ------
    ResultBuildError
        If the text or author is empty, or there is no evidence.
    """
    study_uid = _check_study(study)
    if not isinstance(text, str) or not text.strip():
        raise ResultBuildError(f"study {study_uid}: the signed report text is empty")
    if not author or not author.strip():
        raise ResultBuildError(f"study {study_uid}: the report has no author")
    if signed_at.utcoffset() is None:
        raise ResultBuildError(f"study {study_uid}: signed_at must be timezone-aware")
    images = {uid: SourceImage(*s) if isinstance(s, tuple) else s for uid, s in evidence.items()}
    if not images:
        raise ResultBuildError(f"study {study_uid}: no images to report on (the SR's evidence)")
    signer = person_name(author)
    observer = hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=signer),
        )
    )
    findings = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type="CONTAINS")
    findings.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=codes.DCM.Finding, value=text, relationship_type="CONTAINS")]
    )
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence([*observer, findings])
    predecessors = None
    if amends:
        previous = Dataset()
        previous.SOPClassUID = BasicTextSRStorage
        previous.SOPInstanceUID = amends
        previous.StudyInstanceUID = study_uid
        previous.SeriesInstanceUID = series_instance_uid
        predecessors = [previous]
    with _names_as_received():
        sr = _BasicTextSR(
            evidence=[_stub(study, uid, src) for uid, src in sorted(images.items())],
            content=root,
            series_instance_uid=series_instance_uid,
            series_number=REPORT_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid,
            instance_number=version,
            manufacturer=manufacturer,
            is_complete=True,
            is_final=True,
            is_verified=True,
            verifying_observer_name=signer,
            verifying_organization=institution_name or "",
            institution_name=institution_name,
            previous_versions=predecessors,
        )
    signed = signed_at.astimezone(UTC)
    sr.VerifyingObserverSequence[0].VerificationDateTime = DT(signed)
    author_item = Dataset()
    author_item.ObserverType = "PSN"
    author_item.PersonName = signer
    author_item.PersonIdentificationCodeSequence = []
    author_item.InstitutionName = institution_name or ""
    author_item.InstitutionCodeSequence = []
    sr.AuthorObserverSequence = [author_item]
    return _finish(sr, REPORT_SERIES_DESCRIPTION, signed)


def report_text(ds: Dataset) -> str:
    """The narrative text of a report SR (the TEXT items, in order, joined by blank lines)."""
    texts: list[str] = []

    def walk(items: Iterable[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                texts.append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.get("ContentSequence", []))
    return "\n\n".join(texts)


# --- key images: Secondary Capture with the region burned in ------------------------------------

# (center, width) of the display window per finding kind, for CT (HU).
KEY_IMAGE_WINDOWS: Mapping[str, tuple[float, float]] = {
    "bleed": (40.0, 80.0),  # brain
    "fracture": (500.0, 2000.0),  # bone
    "nodule": (-600.0, 1500.0),  # lung
}
_DEFAULT_WINDOW = (40.0, 400.0)  # soft tissue
_VOLUME_MODALITIES = {"CT", "MR", "PT"}

# A 5 x 7 bitmap font: the characters of the burned-in labels.
_FONT: Mapping[str, tuple[str, ...]] = {
    "A": (" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"),
    "B": ("#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "),
    "C": (" ####", "#    ", "#    ", "#    ", "#    ", "#    ", " ####"),
    "D": ("#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"),
    "F": ("#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "),
    "G": (" ####", "#    ", "#    ", "#  ##", "#   #", "#   #", " ####"),
    "I": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "#####"),
    "L": ("#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"),
    "N": ("#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "P": ("#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "),
    "R": ("#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"),
    "S": (" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "),
    "U": ("#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "),
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    ".": ("     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "),
    "=": ("     ", "     ", "#####", "     ", "#####", "     ", "     "),
    " ": ("     ",) * 7,
}


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """``text`` (upper-cased) in the 5 x 7 font, one blank column between characters: (7s, 6s·n) bool.

    Characters the font lacks are drawn as blanks.
    """
    if scale < 1:
        raise ValueError(f'Argument "scale" must be a positive integer, got {scale}')
    glyphs = [_FONT.get(ch, _FONT[" "]) for ch in text.upper()]
    if not glyphs:
        return np.zeros((7 * scale, 0), dtype=bool)
    cells = [np.array([[c == "#" for c in row] + [False] for row in g], dtype=bool) for g in glyphs]
    mask = np.concatenate(cells, axis=1)[:, :-1]  # no trailing gap
    return np.kron(mask, np.ones((scale, scale), dtype=bool))


def burn_in(image: np.ndarray, box: Sequence[int] | None, lines: Sequence[str]) -> np.ndarray:
    """A copy of an 8-bit grey ``image`` (rows, cols) with ``box`` outlined and ``lines`` written top left.

    The box, ``(row0, col0, row1, col1)`` half-open in pixels, is drawn in white
    just outside its edges (clipped to the image), so the marked pixels stay
    visible; the text is white on a black band so it reads on any anatomy.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f'Argument "image" must be a 2D uint8 array, got {image.dtype} {image.shape}')
    out = image.copy()
    rows, cols = out.shape
    thick = max(1, min(rows, cols) // 256)
    if box is not None:
        r0, c0, r1, c1 = (int(v) for v in box)
        top, left = max(0, r0 - thick), max(0, c0 - thick)
        bottom, right = min(rows, r1 + thick), min(cols, c1 + thick)
        out[top:min(rows, max(0, r0)), left:right] = 255
        out[max(0, min(rows, r1)):bottom, left:right] = 255
        out[top:bottom, left:min(cols, max(0, c0))] = 255
        out[top:bottom, max(0, min(cols, c1)):right] = 255
    scale = max(1, cols // 256)
    pad = 2 * scale
    y = pad
    for line in lines:
        mask = text_mask(line, scale)
        h, w = mask.shape
        w = min(w, cols - 2 * pad)
        if y + h + pad > rows or w <= 0:
            break
        out[y - scale:y + h + scale, pad - scale:pad + w + scale] = 0
        region = out[y:y + h, pad:pad + w]
        region[mask[:, :w]] = 255
        y += h + 3 * scale
    return out


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = center - width / 2.0
    scaled = (values.astype(np.float64) - lo) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class KeyImageSource:
    """The slice a key image shows, ready to draw on."""

    pixels: np.ndarray  # (rows, cols) uint8, display grey
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    pixel_spacing: tuple[float, float] | None  # (row, col) mm
    patient_orientation: tuple[str, str] | None  # None: not known


def _orientation(header: Dataset) -> tuple[str, str] | None:
    """Patient Orientation of the slice: from the header, else from Image Orientation (Patient)."""
    stored = header.get("PatientOrientation")
    if stored and len(stored) == 2 and all(str(v) for v in stored):
        return str(stored[0]), str(stored[1])
    cosines = header.get("ImageOrientationPatient")
    if not cosines or len(cosines) != 6:
        return None

    def letters(v: Sequence[float]) -> str:
        # PS3.3 C.7.6.1.1.1: +x left, +y posterior, +z head; the dominant axis first.
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        order = np.argsort(-np.abs(np.asarray(v, dtype=float)))
        return "".join(names[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) > 0.25) or "L"

    return letters([float(c) for c in cosines[:3]]), letters([float(c) for c in cosines[3:]])


def key_image_source(path: str | Path, kind: str, slice_index: int | None = None) -> KeyImageSource:
    """Read the slice a key image shows (``dicom_io.pixels``), windowed for ``kind`` on CT.

    ``slice_index`` picks the frame of a multi-frame file; single-frame files have one.

    Raises
    ------
    dicom_io.pixels.PixelDataError
        If the pixels cannot be read.
    """
    from dicom_io.pixels import load_radiograph, load_volume

    header = dcmread(path, stop_before_pixels=True)
    modality = str(header.get("Modality", "")).upper()
    if modality in _VOLUME_MODALITIES:
        volume = load_volume([path])
        index = slice_index if slice_index is not None and 0 <= slice_index < volume.hu.shape[0] else 0
        values = volume.hu[index if volume.hu.shape[0] > 1 else 0]
        if modality == "CT":
            pixels = _window(values, *KEY_IMAGE_WINDOWS.get(kind, _DEFAULT_WINDOW))
        else:  # no HU: the 1st to 99th percentile
            lo, hi = np.percentile(values, [1, 99])
            pixels = _window(values, (lo + hi) / 2.0, max(float(hi - lo), 1e-6))
        spacing: tuple[float, float] | None = (float(volume.spacing_mm[1]), float(volume.spacing_mm[2]))
    else:
        radiograph = load_radiograph(path)
        pixels = (np.clip(radiograph.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        spacing = radiograph.pixel_spacing_mm
    return KeyImageSource(
        pixels=pixels, sop_class_uid=str(header.SOPClassUID), sop_instance_uid=str(header.SOPInstanceUID),
        series_uid=str(header.SeriesInstanceUID), pixel_spacing=spacing, patient_orientation=_orientation(header),
    )  # fmt: skip


def key_image_lines(finding: FindingLike) -> list[str]:
    """The burned-in label: that it is an AI suggestion, the finding kind and its probability."""
    return [KEY_IMAGE_TEXT, f"{finding.kind} P={finding.probability:.2f}"]


def build_key_image(
    study: Mapping[str, Any],
    finding: FindingLike,
    source: KeyImageSource,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    instance_number: int = 1,
    manufacturer: str = "triage",
    content_time: datetime | None = None,
) -> Dataset:
    """A Secondary Capture of the finding's strongest region: the box and "AI SUGGESTION" burned in.

    ``source`` is that region's slice (:func:`key_image_source`); the region is
    the finding's first (regions are stored strongest first).

    Raises
    ------
    ResultBuildError
        If the finding has no region, or its region is not on ``source``.
    """
    _check_study(study)
    if not finding.regions:
        raise ResultBuildError(f"finding {finding.id}: no region to show in a key image")
    region = finding.regions[0]
    if str(region.get("sop_instance_uid")) != source.sop_instance_uid:
        raise ResultBuildError(
            f"finding {finding.id}: its strongest region is on {region.get('sop_instance_uid')}, "
            f"not on the image given ({source.sop_instance_uid})"
        )
    pixels = burn_in(source.pixels, region["box"], key_image_lines(finding))
    with _names_as_received():
        sc = _sc_image(study, pixels, source, sop_instance_uid, series_instance_uid, instance_number, manufacturer)
    if source.patient_orientation is None:
        sc.PatientOrientation = ""  # Type 2: present and empty when not known (PS3.3 C.7.6.1)
    sc.SpecificCharacterSet = "ISO_IR 192"
    sc.BurnedInAnnotation = "YES"  # PS3.3 C.7.6.1.1.7: the label and box are in the pixels
    sc.ImageComments = f"{AI_LABEL}: {finding.kind}, probability {finding.probability:.2f}"
    sc.DerivationDescription = f"{AI_LABEL}; {finding.model_name} {finding.model_version}"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uid
    sc.SourceImageSequence = [reference]
    return _finish(sc, KEY_IMAGE_SERIES_DESCRIPTION, content_time or datetime.now(UTC))


def _sc_image(study: Mapping[str, Any], pixels: np.ndarray, source: KeyImageSource, sop_instance_uid: str,
              series_instance_uid: str, instance_number: int, manufacturer: str) -> Dataset:  # fmt: skip
    return hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=_check_study(study),
        series_instance_uid=series_instance_uid,
        series_number=KEY_IMAGE_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_id=_get(study, "patient_id") or None,
        patient_name=_get(study, "patient_name") or None,
        patient_birth_date=_get(study, "patient_birth_date") or None,
        patient_sex=_sex(_get(study, "patient_sex")) or None,
        accession_number=_get(study, "accession_number") or None,
        study_id=_get(study, "study_id") or None,
        study_date=_get(study, "study_date") or None,
        study_time=_get(study, "study_time") or None,
        referring_physician_name=_get(study, "referring_physician") or None,
        pixel_spacing=source.pixel_spacing,
        # highdicom wants an orientation for patient coordinates; an unknown one is written empty after.
        patient_orientation=source.patient_orientation or ("L", "P"),
    )  # fmt: skip
