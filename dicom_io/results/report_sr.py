"""The signed report as a Basic Text SR, the radiologist its author and verifying observer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import BasicTextSRStorage
from pydicom.valuerep import DT

from dicom_io.results.common import (
    REPORT_SERIES_DESCRIPTION,
    REPORT_SERIES_NUMBER,
    ResultBuildError,
    SourceImage,
    check_study,
    finish,
    names_as_received,
    stub,
)

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
    zone: tzinfo | None = None,
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
    zone
        The site's time zone, as for :func:`dicom_io.results.ai_sr.build_ai_sr`; the
        VerificationDateTime carries its own offset (in ``zone``, else UTC).

    Returns
    -------
    pydicom.dataset.Dataset
        Completion COMPLETE, verification VERIFIED, preliminary flag FINAL.

    Raises
    ------
    ResultBuildError
        If the text or author is empty, or there is no evidence.
    """
    study_uid = check_study(study)
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
            observer_type=codes.DCM.Person, observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=signer)
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
    with names_as_received():
        sr = _BasicTextSR(
            evidence=[stub(study, uid, src) for uid, src in sorted(images.items())],
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
    signed = signed_at.astimezone(zone or UTC)
    # A DT with its offset written out means the same instant whatever TimezoneOffsetFromUTC says (PS3.3 C.12.1.1.8).
    sr.VerifyingObserverSequence[0].VerificationDateTime = DT(signed)
    author_item = Dataset()
    author_item.ObserverType = "PSN"
    author_item.PersonName = signer
    author_item.PersonIdentificationCodeSequence = []
    author_item.InstitutionName = institution_name or ""
    author_item.InstitutionCodeSequence = []
    sr.AuthorObserverSequence = [author_item]
    return finish(sr, REPORT_SERIES_DESCRIPTION, signed, zone)


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
