"""Index rows for tests: instance headers and records, and scored studies written straight into the index."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from dicom_io.headers import InstanceHeader
from dicom_io.ingest import IndexRecord
from triage.store import audit
from triage.store.models import AIFinding, Series, SeriesResult, Study

T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)


def header(study: str = "1.2.3", series: str = "1.2.3.1", sop: str = "1.2.3.1.1", **kw) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop,
        study_uid=study,
        series_uid=series,
        transfer_syntax="1.2.840.10008.1.2.1",
        modality=kw.pop("modality", "CT"),
        **kw,
    )


def record(h: InstanceHeader) -> IndexRecord:
    return IndexRecord(h, f"studies/{h.study_uid}/{h.series_uid}/{h.sop_instance_uid}.dcm", 10, "ab" * 32, "SCU", "127.0.0.1")


@dataclass
class Added:
    uid: str
    study_pk: int
    series_pk: int
    finding_ids: list[int]


_counter = itertools.count(1)


def add_study(
    engine: Engine,
    uid: str,
    findings: tuple[tuple[str, float, float], ...] = (("bleed", 0.9, 0.5),),
    *,
    received: datetime = T0 - timedelta(minutes=5),
    order_priority: str | None = None,
    ai_status: str = "scored",
    audited: bool = False,
) -> Added:
    """A complete, scored one-series CT study with ``findings`` as (kind, probability, operating point).

    ``audited``: also the inference event the pipeline writes with such rows, for tests that verify the audit trail.
    """
    n = next(_counter)
    with Session(engine) as s:
        study = Study(
            study_uid=uid,
            patient_id=f"P{n}",
            patient_name=f"Doe^Pat{n}",
            accession_number=f"ACC{n}",
            modalities="CT",
            study_description="CT HEAD",
            order_priority=order_priority,
            num_series=1,
            num_instances=3,
            first_received=received,
            last_received=received,
            status="complete",
            ai_status=ai_status,
        )
        s.add(study)
        s.flush()
        series = Series(
            series_uid=f"{uid}.1", study_pk=study.id, modality="CT", num_instances=3, first_received=received, last_received=received
        )
        s.add(series)
        s.flush()
        ids = add_result(s, study.id, series.id, 0, findings, audited=audited)
        s.commit()
        return Added(uid, study.id, series.id, ids)


def add_result(
    s: Session, study_pk: int, series_pk: int, generation: int, findings: tuple[tuple[str, float, float], ...], *, audited: bool = False
) -> list[int]:
    result = SeriesResult(series_pk=series_pk, study_pk=study_pk, generation=generation, analysed=True)
    s.add(result)
    s.flush()
    rows = [
        AIFinding(
            result_pk=result.id,
            study_pk=study_pk,
            series_pk=series_pk,
            kind=kind,
            probability=p,
            operating_point=op,
            urgent=p >= op,
            model_name=f"{kind}-ct",
            model_version="1.0",
            weights_sha256="ab" * 32,
            regions=json.dumps([{"instance": f"1.2.9.{generation}", "box": [1, 2, 30, 40]}]),
        )
        for kind, p, op in findings
    ]
    s.add_all(rows)
    s.flush()
    if not audited:
        return [r.id for r in rows]
    # The inference event the pipeline writes with such rows (triage.flow.pipeline.record_result), so that
    # `audit.verify` finds them agreeing with the chain. No study uid: a study's history stays the readers' own.
    series = s.get(Series, series_pk)
    assert series is not None
    outputs = [
        {
            "kind": r.kind,
            "probability": r.probability,
            "operating_point": r.operating_point,
            "urgent": r.urgent,
            "regions": json.loads(r.regions),
            "model": {"name": r.model_name, "version": r.model_version, "sha256": r.weights_sha256},
        }
        for r in rows
    ]
    detail = {"series_uid": series.series_uid, "generation": generation, "job": None, "outputs": outputs}
    audit.append(s.connection(), actor=audit.AI_ACTOR, action=audit.Action.INFERENCE, study_uid=None, detail=detail)
    return [r.id for r in rows]
