"""A conflicting payload is acknowledged only once the index has it on record."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from dicom_io.ingest import IndexRecord, Ingestor, StoreStatus
from dicom_io.store import InstanceStore
from triage.errors import DatabaseError


class MemoryIndex:
    """An index in a dict, whose ``record_conflict`` fails while ``down``."""

    def __init__(self) -> None:
        self.rows: dict[str, IndexRecord] = {}
        self.conflicts: list[tuple[IndexRecord, str]] = []
        self.down = False

    def find(self, sop_instance_uid: str) -> tuple[str, str] | None:
        row = self.rows.get(sop_instance_uid)
        return (row.sha256, row.relpath) if row else None

    def record(self, record: IndexRecord) -> bool:
        return self.rows.setdefault(record.header.sop_instance_uid, record) is record

    def record_conflict(self, record: IndexRecord, kept_relpath: str) -> None:
        if self.down:
            raise DatabaseError("database is locked")
        self.conflicts.append((record, kept_relpath))


def test_a_conflict_the_index_cannot_record_is_refused_then_recorded_on_retry(tmp_path: Path, make_ct_series) -> None:
    [path] = make_ct_series(slices=1, size=16)
    ds = dcmread(path)
    ds.PatientID = "OTHER"
    other = tmp_path / "other.dcm"
    ds.save_as(other)
    index = MemoryIndex()
    ingestor = Ingestor(InstanceStore(tmp_path / "data"), index)
    assert ingestor.ingest(path.read_bytes(), calling_ae="SCU", peer_address="127.0.0.1").ok

    index.down = True
    outcome = ingestor.ingest(other.read_bytes(), calling_ae="SCU", peer_address="127.0.0.1")
    assert outcome.status == StoreStatus.INDEX_UNAVAILABLE and not index.conflicts  # the sender will retry

    index.down = False
    outcome = ingestor.ingest(other.read_bytes(), calling_ae="RESENDER", peer_address="10.0.0.9")
    assert outcome.ok and outcome.conflict
    [(record, kept)] = index.conflicts
    assert record.header.patient_id == "OTHER" and (record.calling_ae, record.peer_address) == ("RESENDER", "10.0.0.9")
    assert kept == f"conflicts/{ds.SOPInstanceUID}/{record.sha256}.dcm" and (tmp_path / "data" / kept).is_file()
