"""The index writer on a real SQLite file: counts, duplicates, group commits."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlmodel import Session, select

from dicom_io.ingest import IndexRecord
from tests.triage.rows import header, record
from triage.errors import DatabaseError
from triage.store.db import make_engine
from triage.store.index import SqlIndex
from triage.store.models import Instance, Series, Study


@pytest.fixture
def index(tmp_path: Path):
    idx = SqlIndex(make_engine(f"sqlite:///{tmp_path / 'triage.db'}"))
    yield idx
    idx.close()


def test_counts_and_fills_blanks(index: SqlIndex) -> None:
    assert index.record(record(header(sop="1.2.3.1.1")))
    assert index.record(record(header(sop="1.2.3.1.2")))
    # A second series carries the accession number and priority the first lacked.
    assert index.record(record(header(series="1.2.3.2", sop="1.2.3.2.1", modality="SR", accession_number="A1", order_priority="STAT")))
    assert not index.record(record(header(sop="1.2.3.1.1")))  # duplicate
    with Session(index.engine) as s:
        study = s.exec(select(Study)).one()
        assert (study.num_series, study.num_instances, study.modalities) == (2, 3, "CT\\SR")
        assert (study.accession_number, study.order_priority) == ("A1", "STAT")
        assert sorted(x.num_instances for x in s.exec(select(Series))) == [1, 2]
    assert index.find("1.2.3.1.2") == ("ab" * 32, "studies/1.2.3/1.2.3.1/1.2.3.1.2.dcm")
    assert index.find("9.9") is None


def test_group_commit_from_many_threads(index: SqlIndex) -> None:
    index.start()
    results: list[bool] = []
    lock = threading.Lock()

    def send(t: int) -> None:
        for i in range(25):
            ok = index.record(record(header(series=f"1.2.3.{t}", sop=f"1.2.3.{t}.{i + 1}")))
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 200
    with Session(index.engine) as s:
        assert s.exec(select(Study)).one().num_instances == 200
        assert len(s.exec(select(Instance)).all()) == 200


def test_one_bad_record_does_not_fail_its_batch(index: SqlIndex) -> None:
    good = [record(header(sop=f"1.2.3.1.{i}")) for i in range(1, 4)]
    # Another SOP UID at a path already taken: violates the unique path.
    bad = replace(record(header(sop="1.2.3.1.9")), relpath=good[0].relpath)
    index.start()
    outcomes: dict[str, object] = {}

    def send(r: IndexRecord) -> None:
        try:
            outcomes[r.header.sop_instance_uid] = index.record(r)
        except DatabaseError as exc:
            outcomes[r.header.sop_instance_uid] = exc

    threads = [threading.Thread(target=send, args=(r,)) for r in [*good, bad]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(outcomes[r.header.sop_instance_uid] is True for r in good)
    assert isinstance(outcomes["1.2.3.1.9"], DatabaseError)
    with Session(index.engine) as s:
        assert s.exec(select(Study)).one().num_instances == 3


def test_portable_statements_match_the_sqlite_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SQLAlchemy Core statements (what PostgreSQL runs) give the same index
    # as the raw SQLite ones.
    import triage.store.index as index_module

    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(index_module, "_sqlite", lambda conn: None)
        idx = SqlIndex(make_engine(f"sqlite:///{tmp_path / f'{fast}.db'}"))
        idx.start()
        news = [idx.record(record(header(sop=f"1.2.3.1.{i}"))) for i in (1, 2, 2)]
        idx.close()
        with Session(idx.engine) as s:
            study = s.exec(select(Study)).one()
            instances = sorted((i.sop_instance_uid, i.received_at.tzinfo is not None) for i in s.exec(select(Instance)))
            results.append((news, study.num_instances, study.last_received is not None, instances))
    assert results[0] == results[1]
    assert results[0][0] == [True, True, False]


def test_an_index_from_an_older_version_is_refused_with_a_clear_message(tmp_path) -> None:
    import sqlite3

    import pytest

    from triage.errors import DatabaseError
    from triage.store.db import make_engine

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE study (id INTEGER PRIMARY KEY, study_uid VARCHAR(64))")
    # Tables but no alembic_version: made before migrations; every command names the upgrade, which then
    # finds it older than the baseline revision (triage.store.migrations) and says so instead of half-migrating.
    with pytest.raises(DatabaseError, match=r"at schema revision none \(made before schema migrations\).*run `triage db upgrade`"):
        make_engine(f"sqlite:///{db}")
    from triage.store import migrations

    engine = make_engine(f"sqlite:///{db}", create=False)
    with pytest.raises(DatabaseError, match=r"older than the first schema revision \(it lacks .*study.ai_status"):
        migrations.upgrade(engine, "old.db")
    engine.dispose()
