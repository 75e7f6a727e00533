"""The ingestor tells an observer of every answer, and an observer's bug costs the peer nothing."""

from __future__ import annotations

import pytest

from dicom_io.ingest import Ingestor, IngestOutcome, StoreStatus
from dicom_io.store import InstanceStore


def test_an_observer_that_fails_is_logged_not_raised(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[IngestOutcome] = []
    refused = IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "full")
    Ingestor(InstanceStore(tmp_path), index=None, on_answer=seen.append).answered(refused)  # type: ignore[arg-type]
    assert seen == [refused]

    def broken(_outcome: IngestOutcome) -> None:
        raise RuntimeError("observer bug")

    Ingestor(InstanceStore(tmp_path), index=None, on_answer=broken).answered(refused)  # type: ignore[arg-type]
    assert "on_answer failed" in caplog.text
    Ingestor(InstanceStore(tmp_path), index=None).answered(refused)  # type: ignore[arg-type]  # no observer: nothing to do
