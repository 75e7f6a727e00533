"""Conflicting re-sends recorded by two listeners at once on a real PostgreSQL server:
one conflict per distinct payload, one audit event, an intact chain."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from tests.triage.rows import header, record
from triage.store import audit
from triage.store.conflicts import set_aside_versions
from triage.store.db import make_engine
from triage.store.index import SqlIndex
from triage.store.tables import INSTANCE, STUDY


@pytest.fixture
def engines(postgres_url: str) -> Iterator[Callable[[], Engine]]:
    made: list[Engine] = []

    def make() -> Engine:
        made.append(make_engine(postgres_url))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def test_two_listeners_record_the_same_conflict_once(engines: Callable[[], Engine]) -> None:
    first, second = SqlIndex(engines()), SqlIndex(engines())
    assert first.record(record(header(patient_id="P1", patient_name="DOE^J")))
    resend = replace(record(header(patient_id="P2", patient_name="DOE^J")), sha256="cd" * 32, calling_ae="RESENDER")
    path = f"conflicts/1.2.3.1.1/{'cd' * 32}.dcm"

    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(index: SqlIndex) -> None:
        try:
            barrier.wait()
            index.record_conflict(resend, path)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ix,)) for ix in (first, second, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)

    events = [e for e in audit.export(first.engine) if e["action"] == "instance_conflict"]
    assert len(events) == 1 and events[0]["detail"]["differences"] == {"patient_id": ["P1", "P2"]}
    assert audit.verify(first.engine).ok
    with first.engine.connect() as conn:
        assert conn.execute(select(STUDY.c.conflicts)).scalar_one() == 1
        assert conn.execute(select(INSTANCE.c.conflicts)).scalar_one() == 1
    [version] = set_aside_versions(first.engine, "1.2.3")
    assert (version.sender, version.path, version.kept_sha256) == ("RESENDER@127.0.0.1", path, "ab" * 32)
