"""Series completeness: a series is complete when no instance has arrived for
``stable_after`` seconds (per modality). Decided from the database alone, so
it survives restarts and works with several listeners on one PostgreSQL.

Each completion creates exactly one scoring :class:`~triage.store.models.Job`
(unique on series and generation); a late instance reopens the series
(``triage.store.index``) and its next completion gets a new job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from triage.clock import utcnow
from triage.config import CompletenessSettings
from triage.errors import DatabaseError
from triage.store import audit
from triage.store.tables import JOB, SERIES, STUDY
from triage.vocabulary import JobStatus, ReceiveStatus

log = logging.getLogger(__name__)


def complete_stable_series(engine: Engine, settings: CompletenessSettings, now: datetime | None = None) -> list[int]:
    """Mark every stable receiving series complete and queue its scoring job.

    Returns the primary keys of the series completed by this call.
    """
    now = now or utcnow()
    shortest = min([settings.stable_after, *settings.per_modality.values()])
    completed: list[int] = []
    with engine.begin() as conn:
        candidates = conn.execute(
            select(
                SERIES.c.id,
                SERIES.c.study_pk,
                SERIES.c.modality,
                SERIES.c.last_received,
                SERIES.c.generation,
                SERIES.c.num_instances,
                SERIES.c.series_uid,
                STUDY.c.study_uid,
            )
            .join(STUDY, STUDY.c.id == SERIES.c.study_pk)
            .where(SERIES.c.status == ReceiveStatus.RECEIVING.value)
            .where(SERIES.c.last_received <= now - timedelta(seconds=shortest))
        ).all()
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        if candidates:
            # Before any row lock (audit.lock_chain). On PostgreSQL this also makes
            # monitors of several listeners take turns: the compare-and-set below
            # then sees what the other one committed, and leaves its series alone.
            audit.lock_chain(conn)
        for pk, study_pk, modality, last, generation, count, series_uid, study_uid in candidates:
            if last > now - timedelta(seconds=settings.stable_after_for(modality)):
                continue
            # Compare-and-set on last_received and generation: an instance that
            # arrived since the SELECT keeps the series open.
            changed = conn.execute(
                update(SERIES)
                .where(
                    and_(
                        SERIES.c.id == pk,
                        SERIES.c.status == ReceiveStatus.RECEIVING.value,
                        SERIES.c.last_received == last,
                        SERIES.c.generation == generation,
                    )
                )
                .values(status=ReceiveStatus.COMPLETE.value, completed_at=now)
            ).rowcount
            if not changed:
                continue
            conn.execute(
                insert(JOB)
                .values(series_pk=pk, generation=generation, num_instances=count, created_at=now, status=JobStatus.PENDING.value)
                .on_conflict_do_nothing(index_elements=["series_pk", "generation"])
            )
            completed.append(pk)
            audit.append(
                conn,
                actor=audit.SYSTEM_ACTOR,
                action=audit.Action.SERIES_COMPLETE,
                study_uid=study_uid,
                at=now,
                detail={
                    "series_uid": series_uid,
                    "generation": generation,
                    "instances": count,
                    "modality": modality,
                    "stable_after_s": settings.stable_after_for(modality),
                },
            )
            still_receiving = exists().where(and_(SERIES.c.study_pk == study_pk, SERIES.c.status != ReceiveStatus.COMPLETE.value))
            conn.execute(update(STUDY).where(and_(STUDY.c.id == study_pk, ~still_receiving)).values(status=ReceiveStatus.COMPLETE.value))
    if completed:
        log.info("%d series complete, scoring jobs queued", len(completed))
    return completed


class CompletenessMonitor:
    """Runs :func:`complete_stable_series` every ``check_interval`` seconds.

    ``on_complete`` is called after a pass that completed series (the scoring
    worker of the same process wakes at once instead of at its next poll).
    """

    def __init__(self, engine: Engine, settings: CompletenessSettings, on_complete: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.on_complete = on_complete
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="completeness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.check_interval):
            try:
                if complete_stable_series(self.engine, self.settings) and self.on_complete is not None:
                    self.on_complete()
            except SQLAlchemyError as exc:  # a busy or lost DB must not kill the loop
                log.error("completeness check failed (will retry): %s", str(getattr(exc, "orig", exc)).splitlines()[0])
            except DatabaseError as exc:  # the same, met inside the audit append
                log.error("completeness check failed (will retry): %s", exc)
