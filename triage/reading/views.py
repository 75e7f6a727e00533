"""What the worklist shows: the read models of studies and the orders they are listed in.

Frozen dataclasses built from the study index (:class:`StudyFacts`,
:class:`WorklistItem`, :class:`StudyView` and its parts, :class:`SeriesImages`),
the worklist's sort keys, and :func:`blind_urgency`, which hides the AI's
reasons from a reader who has not yet recorded an impression (blinded reads).
:class:`triage.reading.service.WorklistService` fills them in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from triage.clock import as_utc
from triage.config import PolicySettings
from triage.flow.cases import FindingRow
from triage.flow.policy import CaseInput, Urgency, assess
from triage.reading.states import claim_is_live, utc_or_none
from triage.vocabulary import AIStatus, ReadState, ReportStatus, Verdict

HIDDEN_REASON = "AI output hidden until you record your impression"


@dataclass(frozen=True)
class StudyFacts:
    """What the worklist shows of a study. ``claimed_by``/``claim_expires`` are None unless the claim is live."""

    study_uid: str
    patient_id: str | None
    patient_name: str | None
    patient_sex: str | None
    patient_age: str | None
    accession_number: str | None
    study_date: str | None
    modality: str  # Study.modalities as stored, e.g. "CT\\SR"
    description: str | None
    order_priority: str | None
    patient_location: str | None
    requesting_service: str | None
    num_series: int
    num_instances: int
    first_received: datetime
    receive_status: str  # ReceiveStatus value
    ai_status: str  # AIStatus value
    ai_reason: str | None
    scored_at: datetime | None  # when the AI's current result was recorded
    read_state: ReadState
    claimed_by: str | None
    claim_expires: datetime | None
    # Versions set aside because they reused one of the study's SOP Instance UIDs
    # with other content (triage.store.conflicts): the study's identity is in doubt.
    conflicts: int = 0
    # When retention deleted the study's stored pixels (triage.store.retention); None: they are kept.
    pixels_purged_at: datetime | None = None


@dataclass(frozen=True)
class WorklistItem:
    """One row of the worklist: the study, its urgency and the AI's findings (suggestions)."""

    rank: int  # 1-based
    study: StudyFacts
    urgency: Urgency
    findings: tuple[FindingRow, ...]  # empty when ai_hidden
    ai_hidden: bool


@dataclass(frozen=True)
class ImpressionView:
    id: int
    user: str
    text: str
    kinds: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class FeedbackView:
    id: int
    user: str
    verdict: Verdict
    finding_id: int | None
    kind: str
    comment: str | None
    created_at: datetime


@dataclass(frozen=True)
class ReportVersion:
    id: int
    version: int
    status: ReportStatus
    text: str
    author: str
    created_at: datetime
    updated_at: datetime
    signed_by: str | None
    signed_at: datetime | None
    amends_id: int | None  # the signed version this one amends


@dataclass(frozen=True)
class StudyView:
    """A study as one reader opens it.

    ``impression`` and ``feedback`` are the opening reader's own; ``reports``
    are all versions, oldest first. With ``ai_hidden`` (blinded reads, no
    impression yet) ``findings`` is empty and the urgency's finding reasons are
    replaced by :data:`HIDDEN_REASON`.
    """

    study: StudyFacts
    urgency: Urgency
    findings: tuple[FindingRow, ...]
    ai_hidden: bool
    impression: ImpressionView | None
    feedback: tuple[FeedbackView, ...]
    reports: tuple[ReportVersion, ...]


@dataclass(frozen=True)
class SeriesImages:
    """A series of a study and its stored files, for the image preview."""

    series_uid: str
    modality: str | None
    description: str | None
    body_part: str | None
    manufacturer: str | None
    series_number: int | None
    files: tuple[Path, ...]  # absolute, in instance-number order
    sop_instance_uids: tuple[str, ...]  # one per file
    pixels_purged_at: datetime | None = None  # the study's pixels deleted by retention then: the files are gone


def worklist_order_key(item: WorklistItem) -> tuple[bool, float, datetime, str]:
    """The worklist's order: unsigned before signed, then the policy's (most urgent, then oldest, then UID)."""
    return (item.study.read_state is ReadState.SIGNED, -item.urgency.score, item.study.first_received, item.study.study_uid)


def arrival_order_key(item: WorklistItem) -> tuple[datetime, str]:
    """The standard worklist's order: first received first."""
    return (item.study.first_received, item.study.study_uid)


def study_facts(row: Any, now: datetime) -> StudyFacts:
    live = claim_is_live(row.claimed_by, row.claim_expires, now)
    return StudyFacts(
        study_uid=row.study_uid,
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        patient_sex=row.patient_sex,
        patient_age=row.patient_age,
        accession_number=row.accession_number,
        study_date=row.study_date,
        modality=row.modalities or "",
        description=row.study_description,
        order_priority=row.order_priority,
        patient_location=row.patient_location,
        requesting_service=row.requesting_service,
        num_series=row.num_series,
        num_instances=row.num_instances,
        first_received=as_utc(row.first_received),
        receive_status=row.status,
        ai_status=row.ai_status,
        ai_reason=row.ai_reason,
        scored_at=utc_or_none(row.scored_at),
        read_state=ReadState(row.read_state),
        claimed_by=row.claimed_by if live else None,
        claim_expires=utc_or_none(row.claim_expires) if live else None,
        conflicts=row.conflicts,
        pixels_purged_at=utc_or_none(row.pixels_purged_at),
    )


def blind_urgency(case: CaseInput, urgency: Urgency, now: datetime, settings: PolicySettings) -> Urgency:
    """``urgency`` with the reasons that come from the AI's output replaced by :data:`HIDDEN_REASON`.

    A reason comes from the AI's output when the same case without it (no
    findings, AI still pending) does not give it; the hidden note stands where
    the first such reason stood. Class and score stay: the AI still ranks the
    case, the reader only does not see why yet.
    """
    if AIStatus(case.ai_status) not in (AIStatus.SCORED, AIStatus.PARTIAL):
        return urgency  # no AI output to hide: the policy ignores findings then
    without_ai = dataclasses.replace(case, findings=(), ai_status=AIStatus.PENDING.value)
    baseline = set(assess(without_ai, now, settings).reasons)
    reasons: list[str] = []
    for reason in urgency.reasons:
        if reason in baseline:
            reasons.append(reason)
        elif HIDDEN_REASON not in reasons:
            reasons.append(HIDDEN_REASON)
    if HIDDEN_REASON not in reasons:
        reasons.append(HIDDEN_REASON)
    return dataclasses.replace(urgency, reasons=tuple(reasons))
