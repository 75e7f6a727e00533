"""The database engine: SQLite (WAL) under the data directory by default, any
SQLAlchemy URL otherwise (PostgreSQL, ``postgresql+psycopg://...``, for several
``triage serve`` processes on one database).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, func, inspect, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, create_engine

from triage.errors import DatabaseError
from triage.store import models  # noqa: F401  (registers the tables on SQLModel.metadata)

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# pg_advisory_xact_lock key held while the tables are checked and created ("triage" in ASCII).
_SCHEMA_LOCK_KEY = 0x747269616765


def _configure_sqlite(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (worklist, `triage studies`) run beside the one writer.
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns, like the instance files.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


def make_engine(url: str, *, create: bool = True) -> Engine:
    """Create the engine for ``url`` and, if ``create``, the tables.

    Raises
    ------
    DatabaseError
        If the database cannot be opened or the tables cannot be created.
    """
    parsed = make_url(url)
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        # A server database restarts or drops idle connections: check a pooled
        # connection before use instead of failing the first statement on it.
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise DatabaseError(f"cannot open database {parsed.render_as_string(hide_password=True)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
    if create:
        try:
            if parsed.get_backend_name() == "postgresql":
                with engine.begin() as conn:
                    # Several `triage serve` processes may start together on an empty
                    # database: one creates the tables, the others wait and then find
                    # them (two concurrent CREATE TABLEs fail on PostgreSQL).
                    conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                    _check_schema(conn, parsed.render_as_string(hide_password=True))
                    SQLModel.metadata.create_all(conn)
            else:
                _check_schema(engine, parsed.render_as_string(hide_password=True))
                SQLModel.metadata.create_all(engine)
        except SQLAlchemyError as exc:
            raise DatabaseError(
                f"cannot use database {parsed.render_as_string(hide_password=True)}: {exc.__class__.__name__}: "
                f"{_first_line(exc.orig if hasattr(exc, 'orig') else exc)}"
            ) from None
    return engine


def _first_line(exc: object) -> str:
    # Drivers add hints on further lines (psycopg: "Is the server running ..."): one line for the user.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_schema(engine: Engine | Connection, shown_url: str) -> None:
    """Refuse a database whose existing tables lack columns this version needs.

    ``create_all`` adds missing tables but never columns; without this check an
    index from an older version fails later with an obscure SQL error.
    """
    inspector = inspect(engine)
    existing = set(inspector.get_table_names())
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in existing:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise DatabaseError(
                f"database {shown_url} was made by an older version of triage (table {table.name} lacks "
                f"{', '.join(missing)}); there are no schema migrations before 1.0: move it aside and start afresh"
            )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with Session(engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
