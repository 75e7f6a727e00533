"""Reading the header attributes the index needs from an encoded instance.

Only the header is parsed (``stop_before_pixels``): compressed pixel data is
never decoded here, so every transfer syntax can be indexed.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError

# Requested Procedure Priority (0040,1003) values (PS3.3 C.4.11) and the
# retired Study Priority ID (0032,000C) spellings, normalised.
_PRIORITIES = {"STAT": "STAT", "HIGH": "HIGH", "ROUTINE": "ROUTINE", "MEDIUM": "MEDIUM", "MED": "MEDIUM", "LOW": "LOW"}


class HeaderError(DicomIOError):
    """The bytes are not a DICOM dataset we can read the header of."""


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, bytes):  # e.g. a UN element; keep the index text-only
        value = value.decode("ascii", "replace")
    text = str(value).strip().replace("\x00", "")
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def order_priority(ds: Dataset) -> str | None:
    """The order priority, from Requested Procedure Priority or similar attributes."""
    candidates = [ds.get("RequestedProcedurePriority"), ds.get((0x0032, 0x000C))]
    for item in ds.get("RequestAttributesSequence") or []:
        candidates.append(item.get("RequestedProcedurePriority"))
    for raw in candidates:
        value = getattr(raw, "value", raw)
        if value:
            normalised = _PRIORITIES.get(str(value).strip().upper())
            if normalised:
                return normalised
    return None


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the index records of one instance, as read from its dataset."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    instance_number: int | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    patient_birth_date: str | None = None
    patient_age: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    institution_name: str | None = None
    order_priority: str | None = None
    patient_location: str | None = None
    requesting_service: str | None = None
    series_number: int | None = None
    modality: str | None = None
    series_description: str | None = None
    body_part: str | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    station_name: str | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax: str | None = None) -> InstanceHeader:
        """Read the header from a decoded dataset.

        UIDs are returned as found (possibly invalid); callers validate them
        before they are used in a path.
        """
        ts = transfer_syntax or str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        return cls(
            sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            transfer_syntax=ts,
            instance_number=_int(ds, "InstanceNumber"),
            patient_id=_text(ds, "PatientID"),
            patient_name=_text(ds, "PatientName", 324),
            patient_sex=_text(ds, "PatientSex", 16),
            patient_birth_date=_text(ds, "PatientBirthDate", 8),
            patient_age=_text(ds, "PatientAge", 4),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_id=_text(ds, "StudyID", 16),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
            study_description=_text(ds, "StudyDescription"),
            referring_physician=_text(ds, "ReferringPhysicianName", 324),
            institution_name=_text(ds, "InstitutionName"),
            order_priority=order_priority(ds),
            patient_location=_text(ds, "CurrentPatientLocation"),
            requesting_service=_text(ds, "RequestingService"),
            series_number=_int(ds, "SeriesNumber"),
            modality=_text(ds, "Modality", 16),
            series_description=_text(ds, "SeriesDescription"),
            body_part=_text(ds, "BodyPartExamined", 16),
            manufacturer=_text(ds, "Manufacturer"),
            manufacturer_model=_text(ds, "ManufacturerModelName"),
            station_name=_text(ds, "StationName", 16),
        )


def read_header(source: bytes | Path) -> InstanceHeader:
    """Parse the header of a DICOM file given as bytes (Part 10) or a path.

    Raises
    ------
    HeaderError
        If it is not a readable DICOM dataset.
    """
    fp = BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        ds = dcmread(fp, stop_before_pixels=True, force=True)
        header = InstanceHeader.from_dataset(ds)
    except Exception as exc:  # pydicom raises many types on garbage; none may escape
        raise HeaderError(f"unreadable DICOM header: {exc.__class__.__name__}: {exc}") from None
    if not header.sop_instance_uid or not header.transfer_syntax:
        raise HeaderError("unreadable DICOM header: no SOP Instance UID or transfer syntax")
    return header
