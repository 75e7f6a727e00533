"""``triage bench triage``: flag checks, the arithmetic of its figures, and one tiny end-to-end run
against a real ``triage serve``; structure and consistency, never timings."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from triage.bench import pipeline
from triage.bench.pipeline import (
    FLAT_GROWTH,
    TARGET_BEYOND_STABLE_S,
    Memory,
    PipelineBenchConfig,
    PipelineBenchResult,
    format_report,
    parse_db_time,
    time_to_triage,
    tree_rss_bytes,
)
from triage.errors import TriageError

TINY = ["--studies", "3", "--latency-studies", "2", "--size", "64", "--slices", "8", "--stable-after", "0.5"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    return parser.parse_args(argv)


# -- flags ------------------------------------------------------------------------------------
def test_defaults_are_the_issue_setting() -> None:
    args = parse([])
    assert (args.studies, args.latency_studies, args.size, args.slices, args.stable_after) == (40, 20, 512, 40, 2.0)
    assert (args.device, args.keep, args.json) == ("cpu", False, False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--studies", "0"], "--studies must be at least 1, got 0"),
        (["--latency-studies", "-1"], "--latency-studies must be at least 1, got -1"),
        (["--size", "31"], "--size must be between 32 and 1024, got 31"),
        (["--size", "1025"], "--size must be between 32 and 1024, got 1025"),
        (["--slices", "0"], "--slices must be between 1 and 400, got 0"),
        (["--slices", "401"], "--slices must be between 1 and 400, got 401"),
        (["--stable-after", "0"], "--stable-after must be a positive number of seconds, got 0.0"),
        (["--stable-after", "nan"], "--stable-after must be a positive number of seconds, got nan"),
        (["--device", "gpu"], '--device must be "auto", "cpu", "cuda", "cuda:N" or "mps", got \'gpu\''),
        (["--baseline-runs", "0"], "--baseline-runs must be at least 1, got 0"),
    ],
)
def test_bad_flags_fail_in_one_line_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(TriageError) as caught:
        pipeline.run(parse(argv))
    assert str(caught.value) == message
    assert list(tmp_path.iterdir()) == []  # no folder made, so nothing was generated or started


def test_the_boundaries_are_accepted() -> None:
    for config in (
        PipelineBenchConfig(studies=1, latency_studies=1, size=32, slices=1, stable_after=0.01),
        PipelineBenchConfig(size=1024, slices=400, device="cuda:1"),
    ):
        config.check()


def test_importing_it_pulls_no_heavy_modules() -> None:
    # `triage --help` builds this parser; it must not wait for torch or pynetdicom.
    code = "import sys, triage.bench.pipeline; print(sorted(m for m in ('torch', 'numpy', 'pydicom', 'pynetdicom') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the arithmetic ---------------------------------------------------------------------------
def test_db_times_are_read_as_utc() -> None:
    utc = UTC
    assert parse_db_time("2026-03-01 10:00:01.250000") == datetime(2026, 3, 1, 10, 0, 1, 250000, tzinfo=utc)
    assert parse_db_time("2026-03-01 10:00:01") == datetime(2026, 3, 1, 10, 0, 1, tzinfo=utc)
    assert parse_db_time("2026-03-01 11:00:01+01:00") == datetime(2026, 3, 1, 10, 0, 1, tzinfo=utc)
    assert parse_db_time(datetime(2026, 3, 1, 10, 0, 1)).tzinfo is utc
    assert parse_db_time("2026-03-01 10:00:01.5").microsecond == 500000


def test_time_to_triage_leaves_out_the_stability_wait() -> None:
    last = parse_db_time("2026-03-01 10:00:00.000000")
    assert time_to_triage(last, last + timedelta(seconds=3.25), stable_after=2.0) == pytest.approx(1.25)


def test_memory_compares_the_first_and_last_tenths() -> None:
    mib = 2**20
    growing = Memory(tuple([100 * mib] * 10 + [105 * mib] * 70 + [120 * mib] * 10 + [120 * mib] * 10))
    assert (growing.start, growing.end, growing.peak) == (100 * mib, 120 * mib, 120 * mib)
    assert growing.growth == pytest.approx(1.2) and not growing.flat
    flat = Memory(tuple([200 * mib] * 9 + [210 * mib]))  # fewer than 10 samples: one each end
    assert (flat.start, flat.end) == (200 * mib, 210 * mib)
    assert flat.growth == pytest.approx(1.05) and flat.flat
    assert Memory((5, 1, 9)).start == 5 and Memory((5, 1, 9)).end == 9


def test_rss_sums_the_process_and_its_descendants() -> None:
    # A child that starts a grandchild; both print once started, then sleep (their RSS stays put).
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import os, time; print(os.getpid(), flush=True); time.sleep(60)']); "
        "print('child', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    grandchild = 0
    try:
        assert child.stdout is not None
        lines = {child.stdout.readline().strip(), child.stdout.readline().strip()}  # either may come first
        lines.discard("child")
        grandchild = int(lines.pop())
        own = [vmrss(child.pid), vmrss(grandchild)]
        assert min(own) > 0
        assert tree_rss_bytes(child.pid) == sum(own)
        assert tree_rss_bytes(grandchild) == own[1]
        assert tree_rss_bytes(os.getpid()) > sum(own)  # pytest itself and this tree
    finally:
        if grandchild:
            os.kill(grandchild, 9)
        child.kill()
        child.wait()


def vmrss(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def made_up_result(**changes: object) -> PipelineBenchResult:
    fields: dict[str, object] = dict(
        config=PipelineBenchConfig(studies=3),
        cpus=2,
        machine="test",
        check_interval=0.5,
        offline_runs_s=(0.5, 0.4, 0.6),
        latency_s=(1.0, 1.2, 3.2, 1.1),
        throughput_studies=3,
        throughput_s=2.0,
        send_s=1.5,
        loaded_latency_s=(1.0, 1.5, 2.0),
        memory=Memory((100, 100, 104)),
        serve_exit_code=0,
    )
    fields.update(changes)
    return PipelineBenchResult(**fields)


def test_ratios_and_verdicts_follow_from_the_measurements() -> None:
    r = made_up_result()
    assert r.offline_s == 0.5 and r.offline_per_hour == 7200
    assert r.p50_s == pytest.approx(1.15) and r.p50_vs_offline == pytest.approx(2.3)
    # NumPy's linear percentile of (1.0, 1.1, 1.2, 3.2) at 95: 1.2 + 0.85 * 2.0
    assert r.p95_s == pytest.approx(2.9) and r.p95_vs_target == pytest.approx(2.9 / TARGET_BEYOND_STABLE_S)
    assert r.studies_per_hour == pytest.approx(5400) and r.throughput_vs_offline == pytest.approx(0.75)
    assert r.latency_met is False and r.memory_met is True
    doc = r.as_json()
    assert doc["latency"]["p95_vs_target"] == pytest.approx(1.45) and doc["targets"]["p95_beyond_stable_s"]["met"] is False
    assert doc["memory"]["growth"] == pytest.approx(1.04) and doc["memory"]["flat_limit"] == FLAT_GROWTH
    assert doc["ok"] is True and json.loads(json.dumps(doc)) == doc

    text = format_report(r)
    assert "p95 2.90 s = 1.45x the 2 s target" in text
    assert "p50 1.15 s = 2.30x offline scoring" in text
    assert "2.0 s from the first instance received to the last study ranked = 5,400 studies/hour = 0.75x offline" in text
    assert "target: p95 time to triage <= 2 s beyond the stable wait: MISSED (2.90 s)" in text
    assert "target: memory flat (growth <= 1.10x) over 500 studies: met (1.04x over 3 studies; the target is over 500)" in text


def test_a_run_that_stopped_early_says_what_was_not_measured() -> None:
    r = made_up_result(latency_s=(), throughput_s=None, memory=None, problems=("study X: AI failed: boom",))
    assert not r.ok and r.p95_s is None and r.studies_per_hour is None and r.latency_met is None
    text = format_report(r)
    assert "throughput: not measured" in text and "memory: not measured" in text
    assert "beyond the stable wait: not measured" in text
    doc = r.as_json()
    assert doc["memory"] is None and doc["latency"]["p50_s"] is None and doc["problems"] == ["study X: AI failed: boom"]


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_run_against_a_real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert pipeline.run(parse([*TINY, "--json", "--keep"])) == 0
    doc = json.loads(capsys.readouterr().out)

    assert doc["ok"] is True and doc["problems"] == [] and doc["serve_exit_code"] == 0
    assert {k: doc["config"][k] for k in ("studies", "latency_studies", "size", "slices", "stable_after")} == {
        "studies": 3,
        "latency_studies": 2,
        "size": 64,
        "slices": 8,
        "stable_after": 0.5,
    }
    assert doc["config"]["check_interval_s"] > 0

    base = doc["baseline"]
    assert len(base["runs_s"]) == 3 and min(base["runs_s"]) > 0
    assert base["studies_per_hour"] == pytest.approx(3600 / base["median_s"])

    lat = doc["latency"]
    assert lat["studies"] == 2 and len(lat["time_to_triage_s"]) == 2 and min(lat["time_to_triage_s"]) > 0
    assert 0 < lat["p50_s"] <= lat["p95_s"] <= max(lat["time_to_triage_s"])
    assert lat["p95_vs_target"] == pytest.approx(lat["p95_s"] / 2.0)
    assert lat["p50_vs_offline"] == pytest.approx(lat["p50_s"] / base["median_s"])

    thr = doc["throughput"]
    assert thr["studies"] == 3 and thr["seconds"] > 0 and thr["send_s"] > 0
    assert thr["studies_per_hour"] == pytest.approx(3 / thr["seconds"] * 3600)
    assert thr["vs_offline"] == pytest.approx(thr["studies_per_hour"] / base["studies_per_hour"])
    assert 0 < thr["time_to_triage_p50_s"] <= thr["time_to_triage_p95_s"]

    mem = doc["memory"]
    assert mem["samples"] >= 4  # one after each of the 3 studies, one at the end
    assert 0 < mem["start_mib"] <= mem["peak_mib"] and 0 < mem["end_mib"] <= mem["peak_mib"]
    assert mem["growth"] == pytest.approx(mem["end_mib"] / mem["start_mib"])
    assert isinstance(doc["targets"]["p95_beyond_stable_s"]["met"], bool)
    assert doc["targets"]["memory_flat"]["met"] is mem["flat"]

    # The server's own index: the warm-up and all 5 studies, every one ranked as scored with 8 instances.
    [root] = tmp_path.glob("triage-bench-pipeline-*")
    conn = sqlite3.connect(root / "serve" / "data" / "triage.db")
    try:
        rows = conn.execute("SELECT ai_status, num_instances, scored_at IS NOT NULL FROM study").fetchall()
        jobs = conn.execute("SELECT status, count(*) FROM job GROUP BY status").fetchall()
    finally:
        conn.close()
    assert rows == [("scored", 8, 1)] * 6
    assert jobs == [("done", 6)]
    assert "triage.app.server: stopped" in (root / "serve" / "serve.log").read_text()
