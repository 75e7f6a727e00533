"""The ingest rules when the index fails: refused and removed, or kept when
the outcome is unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_io.ingest import IndexRecord, Ingestor, StoreStatus
from dicom_io.store import InstanceStore
from triage.errors import DatabaseError, IndexUnreachableError


class FailingIndex:
    """An index whose every ``record`` fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def find(self, sop_instance_uid: str) -> tuple[str, str] | None:
        return None

    def record(self, record: IndexRecord) -> bool:
        raise self.error

    def record_conflict(self, record: IndexRecord, kept_relpath: str) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "file_kept"),
    [
        (DatabaseError("disk I/O error"), False),  # rolled back: nothing may stay
        (IndexUnreachableError("the index process is gone"), True),  # maybe committed: keep the bytes
    ],
)
def test_index_failure(tmp_path: Path, make_ct_series, error: Exception, file_kept: bool) -> None:
    [path] = make_ct_series(slices=1, size=16)
    store = InstanceStore(tmp_path / "data")
    outcome = Ingestor(store, FailingIndex(error)).ingest(path.read_bytes(), calling_ae="SCU", peer_address="127.0.0.1")
    assert outcome.status == StoreStatus.INDEX_UNAVAILABLE
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == (1 if file_kept else 0)
