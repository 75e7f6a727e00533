"""The database engine: SQLite (WAL) under the data directory by default, any
SQLAlchemy URL otherwise (PostgreSQL, ``postgresql+psycopg://...``, for several
``triage serve`` processes on one database).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine

from triage.errors import DatabaseError, missing_extra
from triage.store import migrations, models  # noqa: F401  (models registers the tables on SQLModel.metadata)

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


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
    """Create the engine for ``url`` and, if ``create``, the tables (or check that they are at the head revision).

    Raises
    ------
    DatabaseError
        If the database cannot be opened or the tables cannot be created.
    triage.store.migrations.SchemaOutOfDateError
        If ``create`` and the database is at another schema revision than this version needs.
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
        if isinstance(exc, ModuleNotFoundError) and (missing := missing_extra(exc)):
            raise missing from None  # postgresql+psycopg on an install without the pg extra
        raise DatabaseError(f"cannot open database {parsed.render_as_string(hide_password=True)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
    if create:
        try:
            # An empty database gets the schema at the head revision; any other must be at head
            # (SchemaOutOfDateError names `triage db upgrade`). On PostgreSQL under an advisory lock.
            migrations.create_or_check(engine, parsed.render_as_string(hide_password=True))
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
