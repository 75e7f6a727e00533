"""An index on report (status, signed_at).

Retention's sweep (``triage.store.retention``) selects the signed reports by
``status = 'signed' AND signed_at IS NOT NULL`` ordered by ``signed_at``: with
only ``study_pk`` indexed, every report version was scanned at each sweep.
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the index (a plain CREATE INDEX on SQLite and PostgreSQL alike: no table copy)."""
    op.create_index("ix_report_status_signed_at", "report", ["status", "signed_at"], unique=False)


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_report_status_signed_at", table_name="report")
