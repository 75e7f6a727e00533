"""Schema migrations of the study index (Alembic), configured in code.

The revisions live in ``versions/`` beside this module and ship with the
package; no ``alembic.ini`` is read. A new index is made by
``SQLModel.metadata.create_all`` and stamped with the head revision (see
:func:`create_or_check`); an existing one must be at the head revision, else
every command refuses it and names ``triage db upgrade`` (:func:`upgrade`),
which applies the missing revisions in place.

An index made before migrations existed has the tables but no
``alembic_version`` table: if its tables and columns are those of the
baseline revision it is stamped at the baseline and upgraded from there.

Adding a revision: change ``triage/store/models.py``, then write
``versions/NNNN_<what>.py`` by hand or with ``alembic revision --autogenerate``
(an ``alembic.ini`` whose ``script_location`` is this folder, against a
database at head), and review it; ``tests/triage/store/test_migrations.py``
checks that upgrading an empty database gives exactly ``SQLModel.metadata``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from triage.errors import DatabaseError
from triage.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

# Alembic logs its context ("Context impl SQLiteImpl.") at INFO on every check: noise at each server
# start and command; `triage db upgrade` prints what it did itself.
logging.getLogger("alembic").setLevel(logging.WARNING)

SCRIPT_LOCATION = Path(__file__).resolve().parent
# The first revision: the schema of the last version without migrations.
BASELINE = "0001"
# pg_advisory_xact_lock key held while the schema is created, checked or upgraded ("triage" in ASCII).
SCHEMA_LOCK_KEY = 0x747269616765


class SchemaOutOfDateError(DatabaseError):
    """The index is at another schema revision than this version needs; the message names the command that fixes it."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the revisions in this package, on ``connection`` (``env.py`` reads it)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    # Parsed once per process: make_engine runs for every command and server start.
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this version of triage needs."""
    head = _scripts().get_current_head()
    assert head is not None, "no revisions in triage/store/migrations/versions"
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None if it has no ``alembic_version`` table (new or pre-migration)."""
    return MigrationContext.configure(conn).get_current_revision()


def _has_tables(conn: Connection) -> bool:
    existing = set(inspect(conn).get_table_names())
    return bool(existing & (set(SQLModel.metadata.tables) | {"alembic_version"}))


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # Several `triage serve` processes may start together on an empty database (two concurrent
        # CREATE TABLEs fail on PostgreSQL), or an upgrade may run beside a starting server: one at a time.
        conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))


def _out_of_date(shown_url: str, revision: str | None) -> SchemaOutOfDateError:
    have = revision if revision is not None else "none (made before schema migrations)"
    return SchemaOutOfDateError(
        f"the study index at {shown_url} is at schema revision {have}, this version needs {head_revision()}: run `triage db upgrade`"
    )


def create_or_check(engine: Engine, shown_url: str) -> None:
    """Create the schema of an empty database at head; refuse a database at another revision.

    An empty database gets ``create_all`` plus a stamp rather than the chain of
    revisions: one statement per table instead of every historical step, and the
    models are the source of truth (the tests hold the revisions to them).

    Raises
    ------
    SchemaOutOfDateError
        If the database has tables and is not at :func:`head_revision`.
    """
    with engine.begin() as conn:
        _lock(conn)
        if not _has_tables(conn):
            SQLModel.metadata.create_all(conn)
            MigrationContext.configure(conn).stamp(_scripts(), "head")
            return
        revision = current_revision(conn)
        if revision != head_revision():
            raise _out_of_date(shown_url, revision)


@functools.cache
def _baseline_columns() -> dict[str, set[str]]:
    # The baseline's tables and columns, from the revision itself run on a throw-away in-memory SQLite.
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as conn:
            command.upgrade(alembic_config(conn), BASELINE)
            inspector = inspect(conn)
            return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names() if t != "alembic_version"}
    finally:
        scratch.dispose()


def upgrade(engine: Engine, shown_url: str) -> tuple[str | None, str]:
    """Bring the database to the head revision in place, in one transaction; returns (from, to).

    An empty database gets every revision; a pre-migration one (tables, no
    ``alembic_version``) is first stamped at the baseline if it has the
    baseline's tables and columns.

    Raises
    ------
    DatabaseError
        If a pre-migration database is older than the baseline, or its revision is unknown to this version.
    """
    with engine.begin() as conn:
        _lock(conn)
        before = current_revision(conn)
        config = alembic_config(conn)
        if before is None and _has_tables(conn):
            inspector = inspect(conn)
            existing = set(inspector.get_table_names())
            baseline = _baseline_columns()
            # Columns of the tables it has first (the telling part), then whole tables it lacks.
            lacking = [
                f"{table}.{column}"
                for table in sorted(baseline.keys() & existing)
                for column in sorted(baseline[table] - {c["name"] for c in inspector.get_columns(table)})
            ] + [f"table {table}" for table in sorted(baseline.keys() - existing)]
            if lacking:
                raise DatabaseError(
                    f"the study index at {shown_url} is older than the first schema revision (it lacks {', '.join(lacking[:5])}"
                    f"{' ...' if len(lacking) > 5 else ''}); it cannot be upgraded: move it aside and start afresh"
                )
            command.stamp(config, BASELINE)
        elif before is not None and before != head_revision():
            try:
                _scripts().get_revision(before)
            except Exception:  # alembic raises several kinds for an unknown or ambiguous id
                raise DatabaseError(
                    f"the study index at {shown_url} is at schema revision {before}, unknown to this version "
                    f"(made by a newer triage?); this version needs {head_revision()}"
                ) from None
        command.upgrade(config, "head")
        return before, head_revision()


def current(engine: Engine) -> str | None:
    """The database's revision (None: empty or pre-migration)."""
    with engine.connect() as conn:
        return current_revision(conn)
