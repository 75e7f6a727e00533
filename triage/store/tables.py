"""The index's tables as SQLAlchemy Core ``Table`` objects, declared once and typed.

The statements of the index, the pipeline, the worklist service and the outbox
are Core (``insert``, ``update``, ``select`` with ``FOR UPDATE SKIP LOCKED``),
so they take the tables; sqlmodel declares a model's ``__table__`` without a
type, hence the one cast here.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Table

from triage.store import models


def table_of(model: type) -> Table:
    """The ``Table`` behind a table model."""
    return cast(Table, model.__dict__["__table__"])


EVENT = table_of(models.AuditEvent)
FEEDBACK = table_of(models.Feedback)
FINDING = table_of(models.AIFinding)
HEAD = table_of(models.AuditHead)
IMPRESSION = table_of(models.Impression)
INSTANCE = table_of(models.Instance)
INSTANCE_CONFLICT = table_of(models.InstanceConflict)
JOB = table_of(models.Job)
OUTBOX = table_of(models.OutboxItem)
READER_LOCKOUT = table_of(models.ReaderLockout)
READER_SECRET = table_of(models.ReaderSecret)
REPORT = table_of(models.Report)
RESULT = table_of(models.SeriesResult)
SERIES = table_of(models.Series)
STUDY = table_of(models.Study)


def inserted_pk(result: CursorResult[Any]) -> int:
    """The primary key of the one row an INSERT statement wrote."""
    key = result.inserted_primary_key
    if key is None:  # only for statements that are not a single-row INSERT
        raise ValueError("not a single-row INSERT: no primary key was returned")
    return int(key[0])
