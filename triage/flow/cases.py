"""Reading studies and their current AI findings out of the DB, as the urgency
policy's inputs.

A series can be scored more than once (a late instance reopens it and its
next completion is scored again): only the newest result of each series
counts. Shared by the scoring pipeline (which re-ranks a study after each
result) and the worklist service (which ranks them all).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, RowMapping

from triage.clock import as_utc
from triage.flow.policy import CaseInput, FindingInput
from triage.store.tables import FINDING, RESULT, SERIES, STUDY

# How a series result's reason carries the notes of its findings (see
# triage.flow.scoring.SeriesScore): "<route>; note: <text>; note: <text>". The
# reason column is free text, so the notes reach the database, the audit trail
# and this read side without a schema change.
NOTE_SEPARATOR = "; note: "


@dataclass(frozen=True)
class FindingRow:
    """An AI finding as stored: a suggestion, with the model that made it."""

    id: int
    study_pk: int
    series_uid: str
    kind: str
    probability: float
    operating_point: float
    urgent: bool
    model_name: str
    model_version: str
    weights_sha256: str
    regions: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()  # how the series was read (an estimated pixel spacing, ...)

    @classmethod
    def from_row(cls, row: RowMapping, notes: tuple[str, ...] = ()) -> FindingRow:
        """From an AI finding row joined with its series' UID (``series_uid``)."""
        return cls(
            id=row["id"],
            study_pk=row["study_pk"],
            series_uid=row["series_uid"],
            kind=row["kind"],
            probability=row["probability"],
            operating_point=row["operating_point"],
            urgent=bool(row["urgent"]),
            model_name=row["model_name"],
            model_version=row["model_version"],
            weights_sha256=row["weights_sha256"],
            regions=tuple(json.loads(row["regions"] or "[]")),
            notes=notes,
        )

    def as_input(self) -> FindingInput:
        return FindingInput(kind=self.kind, probability=self.probability, operating_point=self.operating_point)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "series_uid": self.series_uid,
            "probability": round(self.probability, 4),
            "operating_point": round(self.operating_point, 4),
            "urgent": self.urgent,
            "model": {"name": self.model_name, "version": self.model_version, "sha256": self.weights_sha256},
            "regions": list(self.regions),
            "notes": list(self.notes),
        }


def reason_notes(reason: str | None) -> tuple[str, ...]:
    """The notes a series result's reason carries (``NOTE_SEPARATOR``), in order."""
    return tuple((reason or "").split(NOTE_SEPARATOR)[1:])


def current_findings(conn: Connection, study_pks: Collection[int] | None = None) -> dict[int, list[FindingRow]]:
    """The findings of the newest result of every series, by study primary key.

    ``study_pks`` None: every study (one query either way, no per-study loop).
    """
    newest_query = select(RESULT.c.series_pk, func.max(RESULT.c.generation).label("generation"))
    if study_pks is not None:  # a live view's few changed studies must not cost a scan of every result
        newest_query = newest_query.where(RESULT.c.study_pk.in_(list(study_pks)))
    newest = newest_query.group_by(RESULT.c.series_pk).subquery()
    query = (
        select(FINDING, SERIES.c.series_uid, RESULT.c.reason.label("result_reason"))
        .join(RESULT, RESULT.c.id == FINDING.c.result_pk)
        .join(newest, and_(newest.c.series_pk == RESULT.c.series_pk, newest.c.generation == RESULT.c.generation))
        .join(SERIES, SERIES.c.id == FINDING.c.series_pk)
        .order_by(FINDING.c.study_pk, FINDING.c.probability.desc(), FINDING.c.id)
    )
    if study_pks is not None:
        query = query.where(FINDING.c.study_pk.in_(list(study_pks)))
    out: dict[int, list[FindingRow]] = defaultdict(list)
    for row in conn.execute(query).mappings():
        out[row["study_pk"]].append(FindingRow.from_row(row, reason_notes(row["result_reason"])))
    return dict(out)


def case_input(study: Any, findings: list[FindingRow]) -> CaseInput:
    """The policy's view of one study row (a mapping or ORM object with Study's columns)."""
    get = study.__getitem__ if hasattr(study, "__getitem__") else lambda k: getattr(study, k)
    return CaseInput(
        study_uid=get("study_uid"),
        received_at=as_utc(get("first_received")),
        order_priority=get("order_priority"),
        patient_location=get("patient_location"),
        requesting_service=get("requesting_service"),
        ai_status=get("ai_status"),
        ai_reason=get("ai_reason"),
        findings=tuple(f.as_input() for f in findings),
    )


def case_inputs(conn: Connection, study_pks: Collection[int] | None = None) -> dict[int, tuple[Any, CaseInput]]:
    """Study rows (mappings) and their policy inputs, by primary key."""
    query = select(STUDY)
    if study_pks is not None:
        query = query.where(STUDY.c.id.in_(list(study_pks)))
    studies = conn.execute(query).mappings().all()
    findings = current_findings(conn, study_pks)
    return {s["id"]: (s, case_input(s, findings.get(s["id"], []))) for s in studies}
