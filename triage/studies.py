"""Reading the study index for ``triage studies`` (arrival order until the
urgency policy exists)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine

from triage.models import Study

STUDY = Study.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    modality: str
    description: str | None
    order_priority: str | None
    num_series: int
    num_instances: int
    status: str
    first_received: datetime
    last_received: datetime

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["first_received"] = self.first_received.isoformat()
        out["last_received"] = self.last_received.isoformat()
        return out


def list_studies(engine: Engine) -> list[StudyRow]:
    """Every indexed study, oldest arrival first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                STUDY.c.study_uid, STUDY.c.patient_id, STUDY.c.patient_name, STUDY.c.accession_number,
                STUDY.c.modalities, STUDY.c.study_description, STUDY.c.order_priority, STUDY.c.num_series,
                STUDY.c.num_instances, STUDY.c.status, STUDY.c.first_received, STUDY.c.last_received,
            ).order_by(STUDY.c.first_received, STUDY.c.id)
        ).all()  # fmt: skip
    return [StudyRow(*row) for row in rows]


def format_table(rows: list[StudyRow]) -> str:
    """Plain text, one study per line, for terminals and grep."""
    header = f"{'RECEIVED (UTC)':19}  {'STATUS':9}  {'MOD':6}  {'PRIO':7}  {'PATIENT ID':12}  {'ACCESSION':12}  {'SER':>3}  {'IMG':>5}  DESCRIPTION"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.first_received:%Y-%m-%d %H:%M:%S}  {r.status:9}  {r.modality or '-':6.6}  {r.order_priority or '-':7}  "
            f"{r.patient_id or '-':12.12}  {r.accession_number or '-':12.12}  {r.num_series:>3}  {r.num_instances:>5}  "
            f"{r.description or ''}"
        )
    if not rows:
        lines.append("(no studies received yet)")
    return "\n".join(lines)
