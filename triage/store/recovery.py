"""Crash recovery, run when ``triage serve`` starts.

A crash (or ``kill -9``) can leave: temporary files and spools of unfinished
writes (removed), instance files that were durably written but not yet indexed
(indexed now when they parse to the end: their sender got no success, but the
bytes are good; moved to ``quarantine/`` when they do not, never indexed), and
series left "receiving" (the completeness monitor re-evaluates them from their
timestamps on its first pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from dicom_io.dataset_check import DatasetError
from dicom_io.errors import StorageError
from dicom_io.headers import HeaderError, read_header
from dicom_io.ingest import IndexRecord, check_file
from dicom_io.store import InstanceStore, sha256_hex
from triage.store.index import SqlIndex
from triage.store.tables import INSTANCE, SERIES, STUDY
from triage.vocabulary import ReceiveStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    temp_files_removed: int
    files_indexed: int
    unreadable_files: int  # moved to quarantine/, not indexed
    series_receiving: int


# On a server database the storage may be shared with other listeners that are
# running: their stores in progress are younger than this and are left alone.
SHARED_TEMP_AGE_S = 3600.0


def recover(store: InstanceStore, index: SqlIndex, engine: Engine) -> RecoveryReport:
    """Bring the store and the index back in agreement after a crash.

    With SQLite the data directory is this process's alone, so every temporary
    file is a crash's leftover. With a server database (scale-out) other
    listeners may be writing to the same storage: only temporary files older
    than :data:`SHARED_TEMP_AGE_S` are removed. A finished file another listener
    has not indexed yet may be indexed here first; its own index write then
    finds the row, which is harmless (same path, same bytes).
    """
    shared = engine.dialect.name != "sqlite"
    removed = store.clean_temp_files(older_than_s=SHARED_TEMP_AGE_S if shared else 0.0)
    indexed = unreadable = 0
    for study_dir in store.study_dirs():
        with engine.connect() as conn:
            known = set(
                conn.execute(
                    select(INSTANCE.c.path)
                    .join(SERIES, SERIES.c.id == INSTANCE.c.series_pk)
                    .join(STUDY, STUDY.c.id == SERIES.c.study_pk)
                    .where(STUDY.c.study_uid == study_dir.name)
                ).scalars()
            )
        for relpath in store.instance_relpaths(study_dir):
            if relpath in known:
                continue
            try:
                check_file(store.root / relpath)
                payload = store.read(relpath)
                header = read_header(payload)
            except (DatasetError, HeaderError) as exc:
                unreadable += 1
                try:
                    moved = store.quarantine(relpath)
                    log.error("recovery: %s is in the store but unreadable (%s); moved to %s, not indexed", relpath, exc, moved)
                except StorageError as move_error:
                    log.error("recovery: %s is in the store but unreadable (%s), not indexed; %s", relpath, exc, move_error)
                continue
            index.record(IndexRecord(header, relpath, len(payload), sha256_hex(payload), None, None))
            indexed += 1
    with engine.connect() as conn:
        receiving = conn.execute(
            select(func.count()).select_from(SERIES).where(SERIES.c.status == ReceiveStatus.RECEIVING.value)
        ).scalar_one()
    report = RecoveryReport(removed, indexed, unreadable, receiving)
    if removed or indexed or unreadable:
        log.warning(
            "recovery: removed %d temporary files, indexed %d unindexed instances, quarantined %d unreadable", removed, indexed, unreadable
        )
    return report
