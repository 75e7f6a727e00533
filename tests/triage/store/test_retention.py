"""Retention on a real SQLite file and real instance files: who is purged, who never is, high water, crashes.

Studies and their instances are written straight into the index (and their files
into the store); reading and signing go through the worklist service, with a
signing credential, as a reader would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine

from dicom_io.errors import StorageError
from dicom_io.pixels import PixelDataError
from dicom_io.store import InstanceStore
from tests.triage.rows import T0, add_study
from triage.app.cli import main
from triage.clock import as_utc
from triage.config import Destination, Settings, load_settings
from triage.errors import ConfigError
from triage.reading.identity import AuthMethod
from triage.reading.pixels import read_series_pixels
from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential
from triage.store import audit
from triage.store.db import make_engine
from triage.store.retention import PurgeReason, Retention, RetentionError, used_percent
from triage.store.tables import EVENT, INSTANCE, INSTANCE_CONFLICT, JOB, OUTBOX, SERIES, STUDY

A = "dr.a"
SIZE = 1000  # bytes per instance file
PACS = Destination(name="PACS", ae_title="PACS", host="127.0.0.1", port=11112)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class FakeDisk:
    """A volume of ``total`` bytes holding ``base`` bytes of other things plus the store's files as they are now."""

    def __init__(self, root: Path, total: int, base: int) -> None:
        self.root, self.total, self.base = root, total, base

    def files_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*.dcm"))

    def __call__(self, _path: Path) -> tuple[int, int, int]:
        used = min(self.total, self.base + self.files_bytes())
        return self.total, used, self.total - used


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def engine(data: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{data / 'triage.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(data: Path) -> InstanceStore:
    return InstanceStore(data)


def settings_for(data: Path, *, destinations: bool = True, **retention: Any) -> Settings:
    section = {"enabled": True, "days": 30, "high_water_percent": 0} | retention
    return Settings(data_dir=data, results={"destinations": [PACS] if destinations else []}, retention=section)


@pytest.fixture
def make_retention(engine: Engine, store: InstanceStore, clock: Clock, data: Path) -> Callable[..., Retention]:
    def make(disk: Callable[[Path], Any] | None = None, **kw: Any) -> Retention:
        settings = settings_for(data, **kw)
        return Retention(engine, store, settings, clock=clock, disk_usage=disk or (lambda _p: (100, 10, 90)))

    return make


@pytest.fixture
def svc(engine: Engine, clock: Clock, data: Path) -> WorklistService:
    return WorklistService(engine, settings_for(data), clock=clock)


def stored(engine: Engine, store: InstanceStore, uid: str, received: datetime, n: int = 3) -> list[str]:
    """A scored study (rows.add_study, with its inference event) and ``n`` instance files of ``SIZE`` bytes; their paths."""
    added = add_study(engine, uid, received=received, audited=True)
    paths = []
    with engine.begin() as conn:
        for k in range(1, n + 1):
            relpath = store.relpath_for(uid, f"{uid}.1", f"{uid}.1.{k}")
            store.write(relpath, bytes([k]) * SIZE)
            conn.execute(
                insert(INSTANCE).values(
                    sop_instance_uid=f"{uid}.1.{k}",
                    series_pk=added.series_pk,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    instance_number=k,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    path=relpath,
                    size_bytes=SIZE,
                    sha256="ab" * 32,
                    received_at=received,
                )
            )
            paths.append(relpath)
    return paths


def credential(svc: WorklistService) -> SigningCredential:
    """A fresh credential at the service's clock (what ``signing.authenticate`` returns after the password)."""
    return SigningCredential(reader=A, method=AuthMethod.PASSWORD, os_account="reader-os", at=svc.clock())


def sign(svc: WorklistService, uid: str) -> None:
    svc.claim(uid, A)
    svc.save_draft(uid, A, "No acute intracranial haemorrhage.")
    svc.sign(uid, A, credential(svc))


def acknowledge(engine: Engine, uid: str | None = None) -> int:
    """Mark the outbox rows sent (of one study, or all), as the sender does on the PACS's success; returns how many."""
    with engine.begin() as conn:
        query = update(OUTBOX).values(status="sent")
        if uid is not None:
            pk = conn.execute(select(STUDY.c.id).where(STUDY.c.study_uid == uid)).scalar_one()
            query = query.where(OUTBOX.c.study_pk == pk)
        return conn.execute(query).rowcount


def study(engine: Engine, uid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(STUDY).where(STUDY.c.study_uid == uid)).one()


def purge_events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(EVENT).where(EVENT.c.action == "pixels_purged").order_by(EVENT.c.seq)).all()


def present(data: Path, paths: list[str]) -> list[bool]:
    return [(data / p).exists() for p in paths]


# --- purged -------------------------------------------------------------------------------------


def test_a_signed_delivered_old_study_is_purged(
    engine: Engine, store: InstanceStore, svc: WorklistService, clock: Clock, data: Path, make_retention: Callable[..., Retention]
) -> None:
    paths = stored(engine, store, "1.2.3", T0)
    # A version set aside under one of its SOP Instance UIDs goes with it; the row stays.
    conflict = f"conflicts/1.2.3.1.1/{'cd' * 32}.dcm"
    store.write(conflict, b"x" * 500)
    with engine.begin() as conn:
        pk = conn.execute(select(STUDY.c.id).where(STUDY.c.study_uid == "1.2.3")).scalar_one()
        conn.execute(
            insert(INSTANCE_CONFLICT).values(
                study_pk=pk, sop_instance_uid="1.2.3.1.1", sha256="cd" * 32, kept_sha256="ab" * 32, path=conflict, received_at=T0
            )
        )
    sign(svc, "1.2.3")
    assert acknowledge(engine, "1.2.3") == 1  # the report SR for the one destination
    clock.advance(days=31)

    purged = make_retention().run()

    assert [(p.planned.candidate.study_uid, p.planned.reason) for p in purged] == [("1.2.3", PurgeReason.AGE)]
    assert (purged[0].files_removed, purged[0].bytes_removed) == (4, 3 * SIZE + 500)
    assert present(data, [*paths, conflict]) == [False] * 4
    assert not (data / "studies" / "1.2.3").exists() and not (data / "conflicts" / "1.2.3.1.1").exists()
    row = study(engine, "1.2.3")
    assert as_utc(row.pixels_purged_at) == clock.now and row.purge_pending is False
    assert row.read_state == "signed" and row.num_instances == 3
    with engine.connect() as conn:  # index rows stay
        assert conn.execute(select(func.count()).select_from(INSTANCE)).scalar_one() == 3
        assert conn.execute(select(func.count()).select_from(INSTANCE_CONFLICT)).scalar_one() == 1
    (event,) = purge_events(engine)
    assert (event.actor, event.study_uid, event.seq) == ("system", "1.2.3", purged[0].audit_seq)
    detail = json.loads(event.detail)
    assert detail["reason"] == "age" and detail["instances"] == 3 and detail["bytes"] == 3 * SIZE and detail["conflict_files"] == 1
    assert detail["age_days"] == pytest.approx(31, abs=0.01)
    assert audit.verify(engine).ok
    # A second pass finds nothing left to do and writes nothing.
    assert make_retention().run() == [] and len(purge_events(engine)) == 1
    # The preview says so instead of failing on missing files.
    (series,) = svc.series_images("1.2.3")
    with pytest.raises(PixelDataError, match="pixels deleted by retention on 2024-06-01"):
        read_series_pixels(series)
    assert svc.items()[0].study.pixels_purged_at == clock.now


def test_no_destination_means_nothing_to_acknowledge(
    engine: Engine, store: InstanceStore, clock: Clock, data: Path, make_retention: Callable[..., Retention]
) -> None:
    paths = stored(engine, store, "1.2.3", T0)
    sign(WorklistService(engine, settings_for(data, destinations=False), clock=clock), "1.2.3")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OUTBOX)).scalar_one() == 0
    clock.advance(days=31)
    assert [p.planned.candidate.study_uid for p in make_retention(destinations=False).run()] == ["1.2.3"]
    assert present(data, paths) == [False] * 3


# --- never purged -------------------------------------------------------------------------------


def test_unsigned_undelivered_scoring_and_young_studies_are_kept(
    engine: Engine, store: InstanceStore, svc: WorklistService, clock: Clock, data: Path, make_retention: Callable[..., Retention]
) -> None:
    files: dict[str, list[str]] = {}
    for uid in ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.9"):
        files[uid] = stored(engine, store, uid, T0)
    # 1.1 unread; 1.2 being read (claimed, a draft); 1.3 signed, its report SR not acknowledged;
    # 1.4 signed and delivered, then claimed for an amendment; 1.5 amended (back to reading);
    # 1.6 signed and delivered but a new series is being scored; 1.9 signed, delivered: the control.
    svc.claim("1.2", A)
    svc.save_draft("1.2", A, "draft")
    for uid in ("1.3", "1.4", "1.5", "1.6", "1.9"):
        sign(svc, uid)
    for uid in ("1.4", "1.5", "1.6", "1.9"):
        acknowledge(engine, uid)
    with engine.begin() as conn:
        series_pk = conn.execute(select(SERIES.c.id).where(SERIES.c.series_uid == "1.6.1")).scalar_one()
        conn.execute(insert(JOB).values(series_pk=series_pk, generation=1, status="pending"))
    clock.advance(days=20)
    sign(svc, "1.7")  # 1.7 signed and delivered 10 days before the check: young
    acknowledge(engine, "1.7")
    clock.advance(days=10, minutes=1)
    svc.claim("1.4", A)
    svc.claim("1.5", A)
    svc.amend("1.5", A, "Addendum: a small fracture.", credential(svc))

    purged = make_retention().run()

    assert [p.planned.candidate.study_uid for p in purged] == ["1.9"]
    for uid in ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7"):
        assert present(data, files[uid]) == [True] * 3, uid
        assert study(engine, uid).pixels_purged_at is None, uid
    assert present(data, files["1.9"]) == [False] * 3

    # Under a volume that stays full, the high-water clean-up takes the young signed study
    # too (by design), and still never an unread, unsigned, undelivered or scoring one.
    full = make_retention(disk=lambda _p: (100, 99, 1), high_water_percent=85, low_water_percent=75)
    assert [(p.planned.candidate.study_uid, p.planned.reason) for p in full.run()] == [("1.7", PurgeReason.HIGH_WATER)]
    for uid in ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6"):
        assert present(data, files[uid]) == [True] * 3, uid
    assert {e.study_uid for e in purge_events(engine)} == {"1.9", "1.7"}
    assert audit.verify(engine).ok


def test_a_study_signed_within_the_minimum_hours_is_kept_even_at_high_water(
    engine: Engine, store: InstanceStore, svc: WorklistService, clock: Clock, data: Path, make_retention: Callable[..., Retention]
) -> None:
    paths = stored(engine, store, "1.2.3", T0)
    sign(svc, "1.2.3")
    acknowledge(engine)
    clock.advance(minutes=30)
    full = make_retention(disk=lambda _p: (100, 99, 1), high_water_percent=85, high_water_min_hours=1)
    assert full.plan() == [] and full.run() == []
    assert present(data, paths) == [True] * 3
    clock.advance(minutes=31)
    assert len(full.run()) == 1


# --- high water ---------------------------------------------------------------------------------


def test_high_water_deletes_the_oldest_eligible_first_and_stops_below_low_water(
    engine: Engine, store: InstanceStore, svc: WorklistService, clock: Clock, data: Path, make_retention: Callable[..., Retention]
) -> None:
    files = {uid: stored(engine, store, uid, T0) for uid in ("2.1", "2.2", "2.3", "2.4", "2.5")}
    for uid in ("2.3", "2.1", "2.4", "2.2"):  # signed in this order, two hours apart; 2.5 stays unread
        sign(svc, uid)
        clock.advance(hours=2)
    acknowledge(engine)
    # 100 000 bytes; 73 000 of other things + 15 000 of instances = 88% > 85%. Each study frees 3 000 (3%):
    # 85% after one, 82% after two, 79% after three: below 80%, so the fourth eligible stays.
    disk = FakeDisk(data, total=100_000, base=73_000)
    retention = make_retention(disk=disk, days=0, high_water_percent=85, low_water_percent=80)
    assert used_percent(disk(data)) == pytest.approx(88.0)

    planned = retention.plan()
    assert [p.candidate.study_uid for p in planned] == ["2.3", "2.1", "2.4"]  # the estimate from the index
    assert disk.files_bytes() == 15 * SIZE  # the dry plan deleted nothing

    purged = retention.run()

    assert [(p.planned.candidate.study_uid, p.planned.reason) for p in purged] == [("2.3", PurgeReason.HIGH_WATER)] + [
        (uid, PurgeReason.HIGH_WATER) for uid in ("2.1", "2.4")
    ]
    assert used_percent(disk(data)) == pytest.approx(79.0)
    assert present(data, files["2.2"]) == [True] * 3 and present(data, files["2.5"]) == [True] * 3
    details = [json.loads(e.detail) for e in purge_events(engine)]
    assert [d["reason"] for d in details] == ["high_water"] * 3
    assert [d["volume_used_percent"] for d in details] == [88.0, 85.0, 82.0]
    # Below the high-water mark nothing more goes (no age rule: days = 0).
    assert retention.run() == []


def test_an_instance_arriving_after_a_purge_is_purged_on_its_own_later(
    engine: Engine, store: InstanceStore, svc: WorklistService, clock: Clock, data: Path, make_retention: Callable[..., Retention]
) -> None:
    stored(engine, store, "1.2.3", T0)
    sign(svc, "1.2.3")
    acknowledge(engine)
    clock.advance(days=31)
    assert len(make_retention().run()) == 1
    clock.advance(hours=1)
    late = store.relpath_for("1.2.3", "1.2.3.1", "1.2.3.1.9")
    store.write(late, b"z" * 700)
    with engine.begin() as conn:
        series_pk = conn.execute(select(SERIES.c.id).where(SERIES.c.series_uid == "1.2.3.1")).scalar_one()
        conn.execute(
            insert(INSTANCE).values(
                sop_instance_uid="1.2.3.1.9",
                series_pk=series_pk,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax="1.2.840.10008.1.2.1",
                path=late,
                size_bytes=700,
                sha256="ef" * 32,
                received_at=clock.now,
            )
        )
        conn.execute(update(STUDY).where(STUDY.c.study_uid == "1.2.3").values(last_received=clock.now))
    clock.advance(minutes=1)

    (again,) = make_retention().run()

    assert (again.planned.candidate.instances, again.planned.candidate.bytes, again.files_removed) == (1, 700, 1)
    assert not (data / late).exists()
    assert [json.loads(e.detail)["instances"] for e in purge_events(engine)] == [3, 1]
    assert make_retention().run() == []


# --- crashes and the files ----------------------------------------------------------------------


def test_a_purge_interrupted_after_its_commit_is_finished_without_a_second_event(
    engine: Engine,
    store: InstanceStore,
    svc: WorklistService,
    clock: Clock,
    data: Path,
    make_retention: Callable[..., Retention],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = stored(engine, store, "1.2.3", T0)
    sign(svc, "1.2.3")
    acknowledge(engine)
    clock.advance(days=31)

    def crash(_relpaths: Any) -> tuple[int, int]:
        raise StorageError("simulated crash after the commit")

    monkeypatch.setattr(store, "remove_files", crash)
    with pytest.raises(StorageError):
        make_retention().run()
    row = study(engine, "1.2.3")
    assert row.pixels_purged_at is not None and row.purge_pending is True
    assert len(purge_events(engine)) == 1 and present(data, paths) == [True] * 3  # the flag and the event, not yet the files

    monkeypatch.undo()
    assert make_retention().run() == []  # finishes first; then nothing is eligible
    assert present(data, paths) == [False] * 3
    assert study(engine, "1.2.3").purge_pending is False
    assert len(purge_events(engine)) == 1
    assert audit.verify(engine).ok


def test_remove_files_removes_only_what_it_is_given(store: InstanceStore, data: Path) -> None:
    a = store.relpath_for("1.2", "1.2.1", "1.2.1.1")
    b = store.relpath_for("1.2", "1.2.1", "1.2.1.2")
    c = store.relpath_for("1.2", "1.2.2", "1.2.2.1")
    for relpath in (a, b, c):
        store.write(relpath, b"y" * 10)
    # b arrived after the purge was decided: it stays, and so does its folder; 1.2.2 empties and goes.
    assert store.remove_files([a, c, a]) == (2, 20)
    assert (data / b).exists() and not (data / "studies/1.2/1.2.2").exists()
    assert sorted(os.listdir(data / "studies/1.2")) == ["1.2.1"]
    for bad in ("triage.db", "studies/../triage.db", "results/1.2/x.dcm"):
        with pytest.raises(StorageError, match="not an instance path"):
            store.remove_files([bad])


# --- configuration and the command --------------------------------------------------------------


def test_retention_is_off_unless_enabled_and_the_marks_are_ordered(engine: Engine, store: InstanceStore, data: Path) -> None:
    with pytest.raises(RetentionError, match="retention is off"):
        Retention(engine, store, Settings(data_dir=data)).run()
    with pytest.raises(ConfigError, match="low_water_percent"):
        load_settings(overrides={"retention.high_water_percent": 80, "retention.low_water_percent": 90}, environ={})


def test_cli_dry_run_lists_and_deletes_nothing_then_purges(
    engine: Engine, store: InstanceStore, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now().astimezone()
    paths = stored(engine, store, "1.2.3", now - timedelta(days=50))
    kept = stored(engine, store, "1.2.4", now - timedelta(days=50))
    sign(WorklistService(engine, settings_for(data, destinations=False), clock=lambda: now - timedelta(days=40)), "1.2.3")
    config = tmp_path / "triage.toml"
    config.write_text("[retention]\nenabled = true\ndays = 30\nhigh_water_percent = 0\n", encoding="utf-8")
    common = ["--data-dir", str(data), "--config", str(config)]

    assert main(["retention", "--dry-run", "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] is True
    assert [(s["study_uid"], s["reason"], s["instances"], s["bytes"]) for s in doc["studies"]] == [("1.2.3", "age", 3, 3 * SIZE)]
    assert doc["studies"][0]["age_days"] == pytest.approx(40, abs=0.01)
    assert main(["retention", "--dry-run", *common]) == 0
    text = capsys.readouterr().out
    assert "1.2.3" in text and "age" in text and "1.2.4" not in text
    assert present(data, paths) == [True] * 3 and purge_events(engine) == []

    assert main(["retention", *common]) == 0
    assert "deleted 3 files" in capsys.readouterr().out
    assert present(data, paths) == [False] * 3 and present(data, kept) == [True] * 3

    assert main(["studies", "--json", *common]) == 0
    shown = {s["study_uid"]: s for s in json.loads(capsys.readouterr().out)}
    assert shown["1.2.3"]["pixels_purged"] is True and shown["1.2.3"]["pixels_purged_at"]
    assert shown["1.2.4"]["pixels_purged"] is False
    assert main(["audit", "verify", *common]) == 0


def test_cli_refuses_to_purge_when_retention_is_off(engine: Engine, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retention", "--data-dir", str(data)]) != 0
    assert "retention is off" in capsys.readouterr().err


def test_the_server_runs_retention_in_the_roles_with_the_data_volume(make_server: Callable[..., Any]) -> None:
    server = make_server(**{"retention.enabled": True, "retention.interval_s": 0.05})
    assert server.retention is not None and server.retention._thread is not None
    with server.engine.connect() as conn:  # the first pass ran against an empty index without error
        assert conn.execute(select(func.count()).select_from(EVENT).where(EVENT.c.action == "pixels_purged")).scalar_one() == 0
    server.retention.wake()
    assert make_server(**{"retention.enabled": False, "data_dir": str(Path(server.settings.data_dir).parent / "d2")}).retention is None
