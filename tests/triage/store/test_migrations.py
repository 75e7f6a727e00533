"""Schema migrations (triage.store.migrations, `triage db`): the revisions give exactly the models,
and an index made at the baseline revision, with a signed report and its audit trail in it, is
refused until `triage db upgrade`, then upgraded in place with every row and the chain intact.

``fixtures/baseline_index.json`` holds the rows of such an index (made by
``fixtures/make_baseline_index.py`` through the worklist service), keyed with
``fixtures/baseline_audit.key``; they are loaded into a database built by the
baseline revision itself, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, create_engine, insert, inspect, select, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from triage.app.cli import main
from triage.store import audit, migrations
from triage.store.audit_key import AuditKey, bind_key, read_key
from triage.store.db import make_engine
from triage.store.migrations import BASELINE, SchemaOutOfDateError, alembic_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BASELINE_ROWS: dict[str, Any] = json.loads((FIXTURES / "baseline_index.json").read_text())


def differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)


def load_baseline(engine: Engine) -> None:
    """The baseline revision's schema, then the fixture's rows (ids kept; PostgreSQL's sequences moved past them)."""
    assert BASELINE_ROWS["revision"] == BASELINE
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        for table in SQLModel.metadata.sorted_tables:
            rows = [parse(table, row) for row in BASELINE_ROWS["tables"][table.name]]
            if rows:
                conn.execute(insert(table), rows)
            if conn.dialect.name == "postgresql" and rows and "id" in table.c and table.c.id.autoincrement:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))"))


def parse(table: Any, row: dict[str, Any]) -> dict[str, Any]:
    # The JSON has naive ISO 8601 UTC (as SQLite returns them); the columns take aware UTC.
    return {
        k: datetime.fromisoformat(v).replace(tzinfo=UTC)
        if v is not None and isinstance(getattr(table.c[k].type, "impl", table.c[k].type), DateTime)
        else v
        for k, v in row.items()
    }


def assert_rows_intact(engine: Engine) -> None:
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            got = [dict(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()]
            assert got == [parse(table, row) for row in BASELINE_ROWS["tables"][table.name]], table.name


def fixture_key(tmp_path: Path) -> AuditKey:
    path = tmp_path / "audit.key"
    shutil.copy(FIXTURES / "baseline_audit.key", path)
    path.chmod(0o600)  # a checkout's mode may be 0644, which read_key refuses
    key = read_key(path)
    assert key is not None
    return key


def test_the_revisions_give_exactly_the_models_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    assert migrations.upgrade(engine, "m.db") == (None, migrations.head_revision())
    assert differences(engine) == []
    engine.dispose()


def test_a_new_index_is_made_at_head_and_equals_the_migrated_one(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    assert migrations.current(engine) == migrations.head_revision()
    assert differences(engine) == []
    make_engine(f"sqlite:///{tmp_path / 'n.db'}").dispose()  # at head: opened again without complaint
    engine.dispose()


def test_a_baseline_index_is_refused_then_upgraded_in_place_by_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'triage.db'}"
    engine = create_engine(url)
    load_baseline(engine)
    engine.dispose()
    key = fixture_key(tmp_path)
    config = tmp_path / "triage.toml"
    config.write_text(f'[audit]\nkey_file = "{key.path}"\n')
    head = migrations.head_revision()
    want = f"the study index at {url} is at schema revision {BASELINE}, this version needs {head}: run `triage db upgrade`"

    with pytest.raises(SchemaOutOfDateError) as refused:
        make_engine(url)
    assert str(refused.value) == want
    for argv in (["studies"], ["audit", "verify"]):
        assert main([*argv, "--data-dir", str(data), "--config", str(config)]) == 1
        out, err = capsys.readouterr()
        assert err == f"triage: error: {want}\n" and out == ""

    assert main(["db", "current", "--data-dir", str(data), "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"{BASELINE} (this version needs {head}: run `triage db upgrade`)\n"
    assert main(["db", "upgrade", "--data-dir", str(data), "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"upgraded the study index at {url} from schema revision {BASELINE} to {head}\n"
    assert main(["db", "upgrade", "--data-dir", str(data), "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"the study index at {url} is already at schema revision {head}\n"

    engine = make_engine(url)
    assert migrations.current(engine) == head
    assert differences(engine) == []
    assert_rows_intact(engine)
    engine.dispose()
    assert main(["audit", "verify", "--data-dir", str(data), "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("audit trail intact: 4 events")


def test_an_index_from_before_migrations_is_stamped_at_the_baseline_and_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    load_baseline(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))  # as made by create_all before this change
    with pytest.raises(SchemaOutOfDateError, match=r"at schema revision none \(made before schema migrations\), this version needs"):
        make_engine(url)
    assert migrations.upgrade(engine, url) == (None, migrations.head_revision())
    assert differences(engine) == []
    assert_rows_intact(engine)
    engine.dispose()


def test_an_index_older_than_the_baseline_is_refused_by_the_upgrade(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'older.db'}")
    load_baseline(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("ALTER TABLE study DROP COLUMN purge_pending"))
    with pytest.raises(Exception, match=r"older than the first schema revision \(it lacks study.purge_pending\); it cannot be upgraded"):
        migrations.upgrade(engine, "older.db")
    with engine.connect() as conn:
        assert "alembic_version" not in inspect(conn).get_table_names()  # nothing half-done
    engine.dispose()


def test_the_revisions_give_exactly_the_models_on_postgresql(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrations.upgrade(engine, "pg")
    assert differences(engine) == []
    engine.dispose()


def test_a_baseline_index_on_postgresql_is_upgraded_with_its_rows_and_chain(postgres_url: str, tmp_path: Path) -> None:
    engine = create_engine(postgres_url)
    load_baseline(engine)
    with pytest.raises(SchemaOutOfDateError, match=f"is at schema revision {BASELINE}, this version needs"):
        make_engine(postgres_url)
    assert migrations.upgrade(engine, "pg") == (BASELINE, migrations.head_revision())
    engine.dispose()
    engine = make_engine(postgres_url)
    assert differences(engine) == []
    assert_rows_intact(engine)
    bind_key(engine, fixture_key(tmp_path))
    result = audit.verify(engine)
    assert result.ok, result
    assert result.events == 4
    engine.dispose()
