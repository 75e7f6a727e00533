"""Helpers of the terminal worklist's tests: the terminal size, and scored studies written straight into the index."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session
from textual.notifications import SeverityLevel

from tests.triage.rows import Added
from triage.clock import utcnow
from triage.reading.identity import AuthMethod
from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential
from triage.store import audit
from triage.store.models import AIFinding, Series, SeriesResult, Study
from tui.app import WorklistApp

SIZE = (140, 44)  # terminal cells for run_test
PASSWORD = "ada-signs-42"  # dr.ada's signing password in the make_app fixture


def sign_directly(service: WorklistService, study_uid: str, user: str) -> int:
    """Sign as ``user`` with a credential made here (set-up steps that are not the test's subject)."""
    credential = SigningCredential(reader=user, method=AuthMethod.PASSWORD, os_account="test-os", at=service.clock())
    return service.sign(study_uid, user, credential)


_counter = itertools.count(1)


def add_study(
    engine: Engine,
    uid: str | None = None,
    findings: tuple[tuple[str, float, float], ...] = (("bleed", 0.9, 0.5),),
    *,
    received: datetime | None = None,
    order_priority: str | None = "ROUTINE",
    ai_status: str = "scored",
    modality: str = "CT",
    description: str = "CT HEAD WO CONTRAST",
    regions: list[dict[str, Any]] | None = None,
) -> Added:
    """A complete one-series study with ``findings`` as (kind, probability, operating point).

    Written with its audit event in one transaction, as the product does, so
    that a running app's live poll (``WorklistService.changes_since``) sees it.
    """
    n = next(_counter)
    uid = uid or f"1.2.826.0.1.{n}"
    received = received or utcnow() - timedelta(minutes=n)
    with Session(engine) as s:
        study = Study(
            study_uid=uid,
            patient_id=f"P{n:05d}",
            patient_name=f"DOE^PAT{n}",
            patient_sex="F",
            patient_age="064Y",
            accession_number=f"ACC{n:05d}",
            modalities=modality,
            study_description=description,
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
            series_uid=f"{uid}.1",
            study_pk=study.id,
            modality=modality,
            num_instances=3,
            first_received=received,
            last_received=received,
            status="complete",
        )
        s.add(series)
        s.flush()
        ids: list[int] = []
        if ai_status in ("scored", "partial"):
            result = SeriesResult(series_pk=series.id, study_pk=study.id, generation=0, analysed=True)
            s.add(result)
            s.flush()
            rows = [
                AIFinding(
                    result_pk=result.id,
                    study_pk=study.id,
                    series_pk=series.id,
                    kind=kind,
                    probability=p,
                    operating_point=op,
                    urgent=p >= op,
                    model_name=f"{kind}-ct",
                    model_version="1.0.0",
                    weights_sha256="ab" * 32,
                    regions=json.dumps(
                        regions
                        if regions is not None
                        else [
                            {
                                "series_uid": f"{uid}.1",
                                "sop_instance_uid": f"{uid}.1.1",
                                "slice_index": 1,
                                "slices": [1, 1],
                                "box": [10, 10, 20, 20],
                                "probability": p,
                            }
                        ]
                    ),
                )
                for kind, p, op in findings
            ]
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
        # As the listener and the pipeline do: every change is an audit event (live views watch them).
        audit.append(
            s.connection(),
            actor=audit.LISTENER_ACTOR,
            action=audit.Action.INSTANCES_RECEIVED,
            study_uid=uid,
            detail={"series_uid": f"{uid}.1", "instances": 3},
        )
        s.commit()
        return Added(uid, study.id, series.id, ids)


class RecordingApp(WorklistApp):
    """The real app, also recording each notification it shows (textual keeps its own list private)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[tuple[str, str]] = []  # (severity, message), in the order shown

    def notify(
        self, message: str, *, title: str = "", severity: SeverityLevel = "information", timeout: float | None = None, markup: bool = True
    ) -> None:
        self.notices.append((severity, str(message)))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)
