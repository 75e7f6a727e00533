"""Fixtures for the terminal worklist: a real SQLite index with studies, and the real app.

Studies, series, results and findings are inserted directly (the pipeline's
job); the app changes state only through the worklist service.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from triage.clock import utcnow
from triage.config import Settings, load_settings
from triage.reading.service import WorklistService
from triage.store import audit
from triage.store.db import make_engine
from triage.store.models import AIFinding, Series, SeriesResult, Study
from tui.app import WorklistApp

SIZE = (140, 44)  # terminal cells for run_test


@dataclass
class Added:
    uid: str
    study_pk: int
    series_pk: int
    finding_ids: list[int]


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
            study_uid=uid, patient_id=f"P{n:05d}", patient_name=f"DOE^PAT{n}", patient_sex="F", patient_age="064Y",
            accession_number=f"ACC{n:05d}", modalities=modality, study_description=description,
            order_priority=order_priority, num_series=1, num_instances=3, first_received=received,
            last_received=received, status="complete", ai_status=ai_status,
        )  # fmt: skip
        s.add(study)
        s.flush()
        series = Series(series_uid=f"{uid}.1", study_pk=study.id, modality=modality, num_instances=3,
                        first_received=received, last_received=received, status="complete")  # fmt: skip
        s.add(series)
        s.flush()
        ids: list[int] = []
        if ai_status in ("scored", "partial"):
            result = SeriesResult(series_pk=series.id, study_pk=study.id, generation=0, analysed=True)
            s.add(result)
            s.flush()
            rows = [
                AIFinding(result_pk=result.id, study_pk=study.id, series_pk=series.id, kind=kind, probability=p,
                          operating_point=op, urgent=p >= op, model_name=f"{kind}-ct", model_version="1.0.0",
                          weights_sha256="ab" * 32,
                          regions=json.dumps(regions if regions is not None else
                                             [{"series_uid": f"{uid}.1", "sop_instance_uid": f"{uid}.1.1",
                                               "slice_index": 1, "slices": [1, 1], "box": [10, 10, 20, 20],
                                               "probability": p}]))
                for kind, p, op in findings
            ]  # fmt: skip
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]  # type: ignore[misc]
        # As the listener and the pipeline do: every change is an audit event (live views watch them).
        audit.append(s.connection(), actor=audit.LISTENER_ACTOR, action=audit.Action.INSTANCES_RECEIVED,
                     study_uid=uid, detail={"series_uid": f"{uid}.1", "instances": 3})  # fmt: skip
        s.commit()
        return Added(uid, study.id, series.id, ids)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(overrides={"data_dir": str(tmp_path / "data")}, environ={})


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def make_app(engine: Engine, settings: Settings) -> Callable[..., WorklistApp]:
    """The real app on the test index; ``blinded``/``display`` as the config would set them."""

    def make(user: str = "dr.ada", blinded: bool = False, display: str = "regions") -> WorklistApp:
        cfg = settings.model_copy(update={"worklist": settings.worklist.model_copy(update={"blinded": blinded})})
        return WorklistApp(WorklistService(engine, cfg), user, display=display, poll_interval=0.1)

    return make
