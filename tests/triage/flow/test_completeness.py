"""Series completeness decided from the database: one job per completion."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, select

from tests.triage.rows import header, record
from triage.clock import utcnow
from triage.config import CompletenessSettings
from triage.flow.completeness import complete_stable_series
from triage.store.db import make_engine
from triage.store.index import SqlIndex
from triage.store.models import Job, Series, Study

SETTINGS = CompletenessSettings(stable_after=10, per_modality={"CR": 2})


def test_complete_after_stable_then_one_job(tmp_path: Path) -> None:
    index = SqlIndex(make_engine(f"sqlite:///{tmp_path / 'triage.db'}"))
    index.record(record(header(sop="1.2.3.1.1")))
    now = utcnow()
    assert complete_stable_series(index.engine, SETTINGS, now + timedelta(seconds=5)) == []
    [pk] = complete_stable_series(index.engine, SETTINGS, now + timedelta(seconds=11))
    assert complete_stable_series(index.engine, SETTINGS, now + timedelta(seconds=30)) == []
    with Session(index.engine) as s:
        assert s.get(Series, pk).status == "complete"
        assert s.exec(select(Study)).one().status == "complete"
        [job] = s.exec(select(Job)).all()
        assert (job.series_pk, job.generation, job.num_instances, job.status) == (pk, 0, 1, "pending")


def test_per_modality_timeout(tmp_path: Path) -> None:
    index = SqlIndex(make_engine(f"sqlite:///{tmp_path / 'triage.db'}"))
    index.record(record(header(series="1.2.3.1", sop="1.2.3.1.1", modality="CR")))
    index.record(record(header(series="1.2.3.2", sop="1.2.3.2.1", modality="CT")))
    completed = complete_stable_series(index.engine, SETTINGS, utcnow() + timedelta(seconds=3))
    with Session(index.engine) as s:
        assert [s.get(Series, pk).modality for pk in completed] == ["CR"]
        assert s.exec(select(Study)).one().status == "receiving"  # the CT series is still open


def test_late_instance_reopens_and_gets_a_new_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    index = SqlIndex(make_engine(url))
    index.record(record(header(sop="1.2.3.1.1")))
    complete_stable_series(index.engine, SETTINGS, utcnow() + timedelta(seconds=11))
    index.record(record(header(sop="1.2.3.1.2")))  # late
    with Session(index.engine) as s:
        series = s.exec(select(Series)).one()
        assert (series.status, series.generation) == ("receiving", 1)
    # A restart in between: a new engine on the same file decides the same way.
    engine = make_engine(url)
    complete_stable_series(engine, SETTINGS, utcnow() + timedelta(seconds=11))
    with Session(engine) as s:
        jobs = s.exec(select(Job).order_by(Job.generation)).all()
        assert [(j.generation, j.num_instances) for j in jobs] == [(0, 1), (1, 2)]
