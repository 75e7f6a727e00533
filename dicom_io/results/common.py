"""What the result objects share: codes, series, the finding they read, the study stub."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DA, TM

from dicom_io.errors import DicomIOError

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
KIND_BY_CODE = {(c.value, c.scheme_designator): kind for kind, c in FINDING_CODES.items()}

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


def get(study: Mapping[str, Any], key: str) -> str:
    value = study.get(key)
    return "" if value is None else str(value)


def sex(value: str) -> str:
    # PS3.3 C.7.1.1: M, F or O; anything else is left empty (Type 2).
    return value if value in ("M", "F", "O") else ""


def check_study(study: Mapping[str, Any]) -> str:
    uid = get(study, "study_uid")
    if not uid:
        raise ResultBuildError('Argument "study" has no study_uid')
    return uid


def stub(study: Mapping[str, Any], sop_uid: str, source: SourceImage) -> Dataset:
    """The header highdicom reads from an evidence instance: patient, study and identity."""
    ds = Dataset()
    ds.PatientID = get(study, "patient_id")
    ds.PatientName = get(study, "patient_name")
    ds.PatientBirthDate = get(study, "patient_birth_date")
    ds.PatientSex = sex(get(study, "patient_sex"))
    if study.get("patient_age"):
        ds.PatientAge = get(study, "patient_age")
    ds.StudyInstanceUID = check_study(study)
    ds.AccessionNumber = get(study, "accession_number")
    ds.StudyID = get(study, "study_id")
    ds.StudyDate = get(study, "study_date")
    ds.StudyTime = get(study, "study_time")
    ds.ReferringPhysicianName = get(study, "referring_physician")
    if study.get("study_description"):
        ds.StudyDescription = get(study, "study_description")
    ds.SeriesInstanceUID = source.series_uid
    ds.SOPClassUID = source.sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names as received, whatever their script
    return ds


@contextmanager
def names_as_received() -> Iterator[None]:
    """Patient and physician names are copied as the study has them, so the result matches it;
    highdicom warns about single-component names (valid PN, PS3.5 6.2.1.1), which is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def utc_offset(at: datetime) -> str:
    """An aware time's offset from UTC as TimezoneOffsetFromUTC writes it: ``"+0100"``, ``"-0500"`` (PS3.3 C.12.1.1.8)."""
    offset = at.utcoffset()
    if offset is None:
        raise ResultBuildError(f"{at.isoformat()} has no offset from UTC")
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def finish(ds: Dataset, series_description: str, when: datetime, zone: tzinfo | None = None) -> Dataset:
    """The object's own dates and times (content, series, instance creation) at ``when``, on the site's clock.

    PS3.3 C.12.1.1.8: TimezoneOffsetFromUTC applies to every date and time of the
    instance, the study's StudyDate/StudyTime included, which are copied as the
    modality wrote them: on the site's local clock. So our own times are written
    in ``zone`` (the site's) and the offset is that zone's at ``when``. Without a
    zone the offset cannot be known: the attribute is left out and our times are
    the host's local ones, as highdicom writes InstanceCreationTime.
    """
    if when.utcoffset() is None:
        raise ResultBuildError(f'Argument "content_time" must be timezone-aware, got {when.isoformat()}')
    at = when.astimezone(zone) if zone is not None else when.astimezone()
    ds.SeriesDescription = series_description
    ds.ContentDate, ds.ContentTime = DA(at.date()), TM(at.time())
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    # highdicom stamps these with the host's naive now(); they must be on the same clock as the rest.
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    if zone is not None:
        ds.TimezoneOffsetFromUTC = utc_offset(at)
    elif "TimezoneOffsetFromUTC" in ds:
        del ds.TimezoneOffsetFromUTC
    return ds


def rectangle(box: Sequence[float]) -> np.ndarray:
    """``(row0, col0, row1, col1)``, half-open pixel indices -> a closed (column, row) polyline.

    SCOORD coordinates are (column, row) with (0, 0) the top left corner of the
    top left pixel (PS3.3 C.18.6.1.2), so the half-open box's edges are its bounds.
    """
    row0, col0, row1, col1 = (float(v) for v in box)
    if not (row1 > row0 and col1 > col0):
        raise ResultBuildError(f"region box {tuple(box)} is empty (needs row0 < row1 and col0 < col1)")
    return np.array([[col0, row0], [col1, row0], [col1, row1], [col0, row1], [col0, row0]], dtype=np.float32)
