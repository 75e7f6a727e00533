"""The study index: what a worklist and an auditor need to know about every
study, series and instance received, and the scoring jobs of completed series.

Timestamps are timezone-aware UTC (see ``triage.clock``).
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from triage.clock import utcnow


class ReceiveStatus(str, enum.Enum):
    RECEIVING = "receiving"  # instances still arriving (or recently arrived)
    COMPLETE = "complete"  # no new instance for ``stable_after`` seconds


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


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


class Job(SQLModel, table=True):
    """A scoring job for one completion of one series; the DB is the queue."""

    __table_args__ = (UniqueConstraint("series_pk", "generation", name="uq_job_series_generation"),)

    id: int | None = Field(default=None, primary_key=True)
    series_pk: int = Field(foreign_key="series.id", index=True)
    generation: int = 0
    num_instances: int = 0  # instances in the series when it completed
    created_at: datetime = Field(default_factory=utcnow)
    status: str = Field(default=JobStatus.PENDING.value, sa_column=_status_column("pending"))
