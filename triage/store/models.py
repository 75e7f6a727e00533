"""The study index: what a worklist and an auditor need to know about every
study, series and instance received, and the scoring jobs of completed series.

Timestamps are timezone-aware UTC (see ``triage.clock``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from triage.clock import utcnow
from triage.vocabulary import AIStatus, JobStatus, OutboxStatus, ReadState, ReceiveStatus, ReportStatus


def _status_column(default: str) -> Column:
    # Plain strings, not DB enums: a later status needs no schema migration.
    return Column(String(16), nullable=False, default=default, index=True)


class StudyBase(SQLModel):
    study_uid: str = Field(max_length=64, unique=True, index=True)
    patient_id: str | None = Field(default=None, max_length=64, index=True)
    patient_name: str | None = Field(default=None, max_length=324)
    patient_sex: str | None = Field(default=None, max_length=16)
    patient_birth_date: str | None = Field(default=None, max_length=8)  # DA, YYYYMMDD
    patient_age: str | None = Field(default=None, max_length=4)  # AS, e.g. 064Y
    accession_number: str | None = Field(default=None, max_length=16, index=True)
    study_id: str | None = Field(default=None, max_length=16)
    study_date: str | None = Field(default=None, max_length=8)  # DA
    study_time: str | None = Field(default=None, max_length=16)  # TM
    study_description: str | None = Field(default=None, max_length=64)
    referring_physician: str | None = Field(default=None, max_length=324)
    institution_name: str | None = Field(default=None, max_length=64)
    # Normalised order priority: STAT, HIGH, ROUTINE, MEDIUM, LOW (or None).
    order_priority: str | None = Field(default=None, max_length=16)
    # Context for the urgency policy: e.g. "EMERGENCY" from Current Patient Location.
    patient_location: str | None = Field(default=None, max_length=64)
    requesting_service: str | None = Field(default=None, max_length=64)
    modalities: str = Field(default="", max_length=64)  # distinct series modalities, "CT\\SR"
    num_series: int = 0
    num_instances: int = 0
    first_received: datetime = Field(default_factory=utcnow)
    last_received: datetime = Field(default_factory=utcnow)
    calling_ae: str | None = Field(default=None, max_length=16)  # of the first instance
    peer_address: str | None = Field(default=None, max_length=64)


class Study(StudyBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default=ReceiveStatus.RECEIVING.value, sa_column=_status_column("receiving"))
    # The AI's state for the study as a whole (AIStatus) and why, in words.
    ai_status: str = Field(default=AIStatus.PENDING.value, sa_column=_status_column("pending"))
    ai_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    scored_at: datetime | None = None
    # The priority class last audited, so that a change of class is an audit event.
    priority_class: str | None = Field(default=None, max_length=16)
    # Reading (triage.reading.service): state, and the one reader holding the claim.
    read_state: str = Field(default=ReadState.UNREAD.value, sa_column=_status_column("unread"))
    claimed_by: str | None = Field(default=None, max_length=64)
    claim_expires: datetime | None = None
    # Payloads that reused one of the study's SOP Instance UIDs with other content,
    # kept aside (InstanceConflict); non-zero flags the study on every worklist view.
    conflicts: int = 0
    # Retention (triage.store.retention): when the study's stored pixels were deleted (its
    # index rows, reports and audit stay), and whether files of that purge may remain
    # (set in the purge's transaction, cleared once they are gone: a crash in between is finished later).
    pixels_purged_at: datetime | None = None
    purge_pending: bool = False


class SeriesBase(SQLModel):
    series_uid: str = Field(max_length=64, unique=True, index=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    series_number: int | None = None
    modality: str | None = Field(default=None, max_length=16)
    series_description: str | None = Field(default=None, max_length=64)
    body_part: str | None = Field(default=None, max_length=16)
    manufacturer: str | None = Field(default=None, max_length=64)
    manufacturer_model: str | None = Field(default=None, max_length=64)
    station_name: str | None = Field(default=None, max_length=16)
    num_instances: int = 0
    first_received: datetime = Field(default_factory=utcnow)
    last_received: datetime = Field(default_factory=utcnow, index=True)
    completed_at: datetime | None = None
    # Bumped each time a late instance reopens a completed series, so that each
    # completion gets exactly one job.
    generation: int = 0
    calling_ae: str | None = Field(default=None, max_length=16)
    peer_address: str | None = Field(default=None, max_length=64)


class Series(SeriesBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default=ReceiveStatus.RECEIVING.value, sa_column=_status_column("receiving"))


class InstanceBase(SQLModel):
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    series_pk: int = Field(foreign_key="series.id", index=True)
    sop_class_uid: str = Field(max_length=64)
    instance_number: int | None = None
    transfer_syntax: str = Field(max_length=64)
    # Relative to the data directory: studies/<study>/<series>/<sop>.dcm
    path: str = Field(max_length=255, unique=True)
    size_bytes: int
    sha256: str = Field(max_length=64)
    received_at: datetime = Field(default_factory=utcnow)
    calling_ae: str | None = Field(default=None, max_length=16)  # None: found by recovery
    peer_address: str | None = Field(default=None, max_length=64)
    # Later payloads with this UID but other bytes (kept aside, see README).
    conflicts: int = 0


class Instance(InstanceBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


class InstanceConflict(SQLModel, table=True):
    """A payload that reused an indexed SOP Instance UID with other bytes, kept aside, never indexed.

    One row per distinct payload (UID and SHA-256): the same bytes re-sent are
    the same conflict. ``study_pk`` is the study of the kept (indexed) version.
    """

    __tablename__ = "instance_conflict"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256", name="uq_conflict_sop_sha"),)

    id: int | None = Field(default=None, primary_key=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    sop_instance_uid: str = Field(max_length=64, index=True)
    sha256: str = Field(max_length=64)  # of the payload set aside
    kept_sha256: str = Field(max_length=64)  # of the indexed version
    path: str = Field(max_length=255)  # relative to the data directory: conflicts/<sop>/<sha256>.dcm
    received_at: datetime = Field(default_factory=utcnow)
    calling_ae: str | None = Field(default=None, max_length=16)
    peer_address: str | None = Field(default=None, max_length=64)
    # JSON object: identifying field -> [kept value, set-aside value], for the fields that differ.
    differences: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))


class Job(SQLModel, table=True):
    """A scoring job for one completion of one series; the DB is the queue."""

    __table_args__ = (UniqueConstraint("series_pk", "generation", name="uq_job_series_generation"),)

    id: int | None = Field(default=None, primary_key=True)
    series_pk: int = Field(foreign_key="series.id", index=True)
    generation: int = 0
    num_instances: int = 0  # instances in the series when it completed
    created_at: datetime = Field(default_factory=utcnow)
    status: str = Field(default=JobStatus.PENDING.value, sa_column=_status_column("pending"))
    # The lease: a worker owns a running job until ``lease_until``; after that
    # any worker may claim it again (the first one crashed or hung).
    attempts: int = 0
    worker: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = Field(default=None, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SeriesResult(SQLModel, table=True):
    """What the AI said of one completion (generation) of one series."""

    __tablename__ = "series_result"
    __table_args__ = (UniqueConstraint("series_pk", "generation", name="uq_result_series_generation"),)

    id: int | None = Field(default=None, primary_key=True)
    series_pk: int = Field(foreign_key="series.id", index=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    generation: int = 0
    job_pk: int | None = Field(default=None, foreign_key="job.id")
    analysed: bool = False  # at least one detector was asked
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))  # routing, in words
    failures: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON list of str
    device: str | None = Field(default=None, max_length=32)
    duration_s: float = 0.0
    scored_at: datetime = Field(default_factory=utcnow)


class AIFinding(SQLModel, table=True):
    """One detector's output for one series result: a suggestion, never a diagnosis."""

    __tablename__ = "ai_finding"

    id: int | None = Field(default=None, primary_key=True)
    result_pk: int = Field(foreign_key="series_result.id", index=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    series_pk: int = Field(foreign_key="series.id", index=True)
    kind: str = Field(max_length=16, index=True)  # bleed | fracture | nodule
    probability: float
    operating_point: float
    urgent: bool
    model_name: str = Field(max_length=64)
    model_version: str = Field(max_length=32)
    weights_sha256: str = Field(max_length=64)
    regions: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON list
    created_at: datetime = Field(default_factory=utcnow)


class Impression(SQLModel, table=True):
    """A radiologist's independent impression, recorded before the AI output is shown (blinded reads)."""

    __table_args__ = (UniqueConstraint("study_pk", "user", name="uq_impression_study_user"),)

    id: int | None = Field(default=None, primary_key=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    user: str = Field(max_length=64)
    text: str = Field(sa_column=Column(Text, nullable=False))
    # The finding kinds the reader calls present, comma-separated, e.g. "bleed,nodule" (empty: none).
    kinds: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class Feedback(SQLModel, table=True):
    """A radiologist's verdict on an AI finding, or a finding the AI missed."""

    id: int | None = Field(default=None, primary_key=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    finding_pk: int | None = Field(default=None, foreign_key="ai_finding.id", index=True)  # None for MISSED
    kind: str = Field(max_length=16, index=True)
    verdict: str = Field(max_length=16)
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    user: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Report(SQLModel, table=True):
    """A report version. A signed version is never changed; an amendment is a new version pointing to it."""

    __table_args__ = (
        UniqueConstraint("study_pk", "version", name="uq_report_study_version"),
        # Retention's sweep and the signed-report queries look up signed reports by when they were signed
        # (migration 0002; before it, every report was scanned).
        Index("ix_report_status_signed_at", "status", "signed_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    version: int = 1
    text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    status: str = Field(default=ReportStatus.DRAFT.value, max_length=16)
    author: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    signed_by: str | None = Field(default=None, max_length=64)
    signed_at: datetime | None = None
    amends_pk: int | None = Field(default=None, foreign_key="report.id")


class AuditEvent(SQLModel, table=True):
    """One audit event; each stores the hash of the one before it (``triage.store.audit``)."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(unique=True, index=True)  # 1, 2, 3, ... without gaps
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64)  # a user name, "triage-ai", or "listener"
    action: str = Field(max_length=32, index=True)
    study_uid: str | None = Field(default=None, max_length=64, index=True)
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # canonical JSON
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's head: one row, updated in every append, so that concurrent
    writers (several processes on one PostgreSQL) serialise on its row lock."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(default="0" * 64, max_length=64)
    # Which key the chain's HMACs use (triage.store.audit_key.AuditKey.key_id), set by the
    # first append: a wrong or missing key file is then named as such, not as a broken chain.
    key_id: str | None = Field(default=None, max_length=16)


class OutboxItem(SQLModel, table=True):
    """A result object for one destination: kept until the destination acknowledges it.

    Written in the same transaction as what causes it (a study's scoring, a
    report's signature); the sender builds the object's file under the data
    directory if it is not there yet, sends it, and retries with back-off.
    """

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("destination", "kind", "source_key", name="uq_outbox_object"),)

    id: int | None = Field(default=None, primary_key=True)
    study_pk: int = Field(foreign_key="study.id", index=True)
    kind: str = Field(max_length=16)  # "ai_sr" | "key_image" | "report_sr"
    # What the object is built from, unique per kind: e.g. "<study uid>:<scored at>" or "<report id>".
    source_key: str = Field(max_length=128)
    destination: str = Field(max_length=32)  # [results] destinations name
    path: str | None = Field(default=None, max_length=255)  # relative to the data dir, once built
    sop_instance_uid: str | None = Field(default=None, max_length=64)
    sop_class_uid: str | None = Field(default=None, max_length=64)
    status: str = Field(default=OutboxStatus.PENDING.value, sa_column=_status_column("pending"))
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


class ReaderSecret(SQLModel, table=True):
    """A reader's signing password, as a scrypt hash (``triage.reading.signing``); never the password."""

    __tablename__ = "reader_secret"

    reader: str = Field(primary_key=True, max_length=64)
    # "scrypt$n$r$p$salt_hex$hash_hex": the parameters travel with the hash, so they can be raised later.
    hash: str = Field(max_length=255)
    set_at: datetime = Field(default_factory=utcnow)
    set_by: str = Field(max_length=64)  # the reader, or the admin who reset it


class ReaderLockout(SQLModel, table=True):
    """Consecutive failed signing authentications of a reader, and the lock they caused (against guessing)."""

    __tablename__ = "reader_lockout"

    reader: str = Field(primary_key=True, max_length=64)
    failures: int = 0
    last_failure_at: datetime | None = None
    locked_until: datetime | None = None
