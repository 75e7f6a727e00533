"""The words the whole application shares, declared once.

Finding kinds come from the detectors (``detectors.routing.FindingKind``,
importable without torch); the rest are the application's own: priority
classes of the urgency policy, order priorities, and the states stored in the
index (receive, job, AI, read, report, outbox) and a reader's verdicts. The
database stores the enums' values; renaming a value is a schema change.
"""

from __future__ import annotations

import enum

from detectors.routing import FindingKind

FINDING_KINDS: tuple[str, ...] = tuple(k.value for k in FindingKind)  # ("bleed", "fracture", "nodule")


class PriorityClass(str, enum.Enum):
    """The urgency policy's classes, most urgent first."""

    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"


PRIORITY_CLASSES: tuple[str, ...] = tuple(c.value for c in PriorityClass)

# Normalised order priorities (DICOM Requested Procedure / Scheduled Procedure Step Priority), most urgent first.
ORDER_PRIORITIES: tuple[str, ...] = ("STAT", "HIGH", "MEDIUM", "ROUTINE", "LOW")


class ReceiveStatus(str, enum.Enum):
    RECEIVING = "receiving"  # instances still arriving (or recently arrived)
    COMPLETE = "complete"  # no new instance for ``stable_after`` seconds


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"  # claimed by a worker whose lease has not run out
    DONE = "done"
    FAILED = "failed"  # gave up after ``pipeline.max_attempts``; the series shows "AI failed"


class AIStatus(str, enum.Enum):
    """What the AI has said about a study (``Study.ai_status``)."""

    PENDING = "pending"  # receiving, or complete and waiting to be scored
    SCORED = "scored"  # every series with a detector scored
    PARTIAL = "partial"  # some series scored, some failed
    FAILED = "failed"  # scoring failed; the reason is in ``ai_reason``
    NOT_ANALYSED = "not_analysed"  # no detector applies (routing reason in ``ai_reason``)


class ReadState(str, enum.Enum):
    """Where a study is in the radiologist's hands (``triage.reading.service``)."""

    UNREAD = "unread"
    READING = "reading"  # claimed at least once; an impression, feedback or draft may exist
    SIGNED = "signed"  # a signed report exists and no amendment is open


class ReportStatus(str, enum.Enum):
    DRAFT = "draft"
    SIGNED = "signed"  # immutable


class Verdict(str, enum.Enum):
    """A radiologist's feedback on one AI finding, or a finding the AI missed."""

    AGREE = "agree"
    DISAGREE = "disagree"
    UNSURE = "unsure"
    MISSED = "missed"  # a finding the AI did not flag (no AI finding row)


class OutboxStatus(str, enum.Enum):
    PENDING = "pending"  # to be built (if its file is not written yet) and sent, at ``next_attempt_at``
    SENT = "sent"  # the destination acknowledged it (C-STORE success)
