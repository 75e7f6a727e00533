"""The AI's findings as a Comprehensive SR (TID 1500), and read back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from dicom_io.results.common import (
    AI_LABEL,
    AI_SR_SERIES_DESCRIPTION,
    AI_SR_SERIES_NUMBER,
    AT_OR_ABOVE,
    BELOW,
    DECISION,
    DIAMETER,
    FINDING_CODES,
    KIND_BY_CODE,
    MILLIMETER,
    NO_UNITS,
    OPERATING_POINT,
    PROBABILITY,
    PROCEDURE,
    FindingLike,
    ResultBuildError,
    SourceImage,
    check_study,
    finish,
    names_as_received,
    object_uid,
    rectangle,
    stub,
)

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
    zone: tzinfo | None = None,
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
    content_time
        When the SR is made (timezone-aware; default now).
    zone
        The site's time zone: the SR's own dates and times are written in it, with
        its TimezoneOffsetFromUTC, to match the study's copied local times
        (:func:`dicom_io.results.common.finish`); ``None``: the offset is left out.

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
    study_uid = check_study(study)
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
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=PROCEDURE, imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport
    )
    evidence = [stub(study, uid, src) for uid, src in sorted(images.items())]
    with names_as_received():
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
    return finish(sr, AI_SR_SERIES_DESCRIPTION, content_time or datetime.now(UTC), zone)


def _finding_groups(finding: FindingLike, images: Mapping[str, SourceImage], sr_uid: str) -> list[Any]:
    code = FINDING_CODES.get(finding.kind)
    if code is None:
        raise ResultBuildError(f'finding {finding.id}: kind "{finding.kind}" has no code ({", ".join(FINDING_CODES)})')
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model_name, version=finding.model_version, parameters=[f"weights sha256 {finding.weights_sha256}", AI_LABEL]
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
            "qualitative_evaluations": [hd.sr.QualitativeEvaluation(name=DECISION, value=AT_OR_ABOVE if at_or_above else BELOW)],
        }

    # One tracking UID per finding: its regions are groups that share it (TID 4108).
    tracking_uid = object_uid(sr_uid, "finding", finding.id)
    label = f"AI {finding.kind} finding {finding.id}"
    if not finding.regions:
        series_images = [uid for uid, s in sorted(images.items()) if s.series_uid == finding.series_uid]
        sources = [hd.sr.SourceImageForMeasurementGroup(images[uid].sop_class_uid, uid) for uid in series_images]
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label), source_images=sources or None, **common()
            )
        ]
    groups = []
    for number, region in enumerate(finding.regions, start=1):
        sop_uid = str(region.get("sop_instance_uid") or "")
        if sop_uid not in images:
            raise ResultBuildError(f"finding {finding.id}: region {number} references image {sop_uid!r}, not one of the source images")
        extra = []
        if region.get("diameter_mm") is not None:
            extra.append(hd.sr.Measurement(name=DIAMETER, value=float(region["diameter_mm"]), unit=MILLIMETER))
        roi = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle(region["box"]),
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
        entry = found.setdefault(
            key,
            {
                "kind": KIND_BY_CODE.get((code.value, code.scheme_designator)) if code else None,
                "finding_code": (code.value, code.scheme_designator) if code else None,
                "probability": None,
                "operating_point": None,
                "at_or_above": None,
                "algorithm": None,
                "referenced_sop_instance_uids": [],
                "boxes": [],
                "diameters_mm": [],
            },
        )
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
            entry["boxes"].append(
                (float(points[:, 1].min()), float(points[:, 0].min()), float(points[:, 1].max()), float(points[:, 0].max()))
            )
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
