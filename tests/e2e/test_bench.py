"""``triage bench ingest`` end to end on a tiny input: every receiver stores everything."""

from __future__ import annotations

import shutil

import pytest

from triage.bench.ingest import run_ingest_bench

pytestmark = [pytest.mark.slow, pytest.mark.external]


def test_bench_ingest_runs(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("/usr/bin/storescu") is None:
        pytest.skip("dcmtk is not installed")
    assert run_ingest_bench(n=8, parallel=2, size=32, keep=False) == 0
    out = capsys.readouterr().out
    assert "triage serve" in out and "pynetdicom storescp" in out and "vs pynetdicom" in out
