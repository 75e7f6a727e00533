"""Alembic's environment: run the revisions on the connection that
:mod:`triage.store.migrations` hands over (no alembic.ini, no URL here).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from triage.store import models  # noqa: F401  (registers the tables on SQLModel.metadata, for autogenerate)

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
