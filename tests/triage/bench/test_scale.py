"""``triage bench scale``: flag checks, the report's arithmetic, and one tiny end-to-end run against a
real PostgreSQL with real listeners and workers; structure and exactly-once, never timings."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from triage.bench import scale
from triage.bench.scale import IngestRun, ScaleBenchConfig, ScaleBenchResult, ScoringRun, format_report
from triage.errors import TriageError

TINY = [
    "--n",
    "24",
    "--size",
    "32",
    "--parallel",
    "2",
    "--studies",
    "4",
    "--study-slices",
    "6",
    "--study-size",
    "64",
    "--stable-after",
    "0.5",
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    scale.add_arguments(parser)
    return parser.parse_args(argv)


# -- flags ------------------------------------------------------------------------------------
def test_defaults() -> None:
    args = parse([])
    assert (args.db, args.n, args.size, args.parallel) == (None, 600, 256, 4)
    assert (args.studies, args.study_slices, args.study_size, args.stable_after) == (24, 16, 128, 1.0)
    assert (args.device, args.keep, args.json) == ("cpu", False, False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--db", "sqlite:///x.db"], "--db must be a PostgreSQL URL (postgresql+psycopg://user@host/database), got a sqlite one"),
        (["--db", "not a url"], "--db is not a database URL: 'not a url'"),
        (["--n", "1"], "--n must be at least 2, got 1"),
        (["--size", "15"], "--size must be between 16 and 2048, got 15"),
        (["--parallel", "3"], "--parallel must be an even number between 2 and 64 (split evenly between 2 listeners), got 3"),
        (["--parallel", "0"], "--parallel must be an even number between 2 and 64 (split evenly between 2 listeners), got 0"),
        (["--parallel", "66"], "--parallel must be an even number between 2 and 64 (split evenly between 2 listeners), got 66"),
        (["--n", "4", "--parallel", "6"], "--parallel (6) must not exceed --n (4)"),
        (["--studies", "1"], "--studies must be at least 2 (2 workers share them), got 1"),
        (["--study-slices", "0"], "--study-slices must be between 1 and 400, got 0"),
        (["--study-size", "1025"], "--study-size must be between 32 and 1024, got 1025"),
        (["--stable-after", "0"], "--stable-after must be a positive number of seconds, got 0.0"),
        (["--stable-after", "nan"], "--stable-after must be a positive number of seconds, got nan"),
        (["--stable-after", "inf"], "--stable-after must be a positive number of seconds, got inf"),
        (["--device", "gpu"], '--device must be "auto", "cpu", "cuda", "cuda:N" or "mps", got \'gpu\''),
    ],
)
def test_bad_flags_fail_in_one_line_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(TriageError) as caught:
        scale.run(parse(argv))
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no folder made: nothing generated, no server started


def test_the_boundaries_are_accepted() -> None:
    ScaleBenchConfig(
        db="postgresql+psycopg://u:pw@db.example.org:5432/triage",
        n=2,
        size=16,
        parallel=2,
        studies=2,
        study_slices=1,
        study_size=32,
        stable_after=0.01,
    ).check()
    ScaleBenchConfig(n=64, size=2048, parallel=64, study_slices=400, study_size=1024, device="cuda:1").check()


def test_importing_it_pulls_no_heavy_modules() -> None:
    # `triage --help` builds this parser; it must not wait for torch, pynetdicom or SQLAlchemy.
    code = (
        "import sys, triage.bench.scale; print(sorted(m for m in "
        "('torch', 'numpy', 'pydicom', 'pynetdicom', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the arithmetic ---------------------------------------------------------------------------
def made_up_result(**changes: object) -> ScaleBenchResult:
    fields: dict[str, object] = dict(
        config=ScaleBenchConfig(db="postgresql+psycopg://bench:secret@db/triage", n=600, studies=24),
        cpus=2,
        machine="test",
        database="PostgreSQL at postgresql+psycopg://bench:***@db/triage (--db)",
        sender="dcmtk storescu x4",
        warmup_instances=16,
        listener_processes=2,
        ingest=(IngestRun(1, 600, 3.0, 616, 616), IngestRun(2, 600, 2.5, 616, 616)),
        scoring=(ScoringRun(1, 24, 36.0, (24,), True), ScoringRun(2, 24, 30.0, (13, 11), True)),
    )
    fields.update(changes)
    return ScaleBenchResult(**fields)


def test_rates_and_ratios_follow_from_the_measurements() -> None:
    r = made_up_result()
    assert r.ok
    assert [run.images_per_s for run in r.ingest] == [200.0, 240.0] and r.ingest_ratio == pytest.approx(1.2)
    assert [run.studies_per_hour for run in r.scoring] == [2400.0, 2880.0] and r.scoring_ratio == pytest.approx(1.2)
    doc = r.as_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["config"]["db"] == "postgresql+psycopg://bench:***@db/triage"  # never the password
    assert doc["ingest"]["ratio_2_vs_1"] == pytest.approx(1.2) and doc["ingest"]["runs"][1]["images_per_s"] == 240.0
    assert doc["scoring"]["runs"][1]["jobs_by_worker"] == [13, 11]
    assert doc["scoring"]["ratio_2_vs_1"] == pytest.approx(1.2) and doc["ok"] is True

    text = format_report(r)
    assert "1 listener : 600 images in 3.00 s = 200 images/s (4 associations each; 616 files stored, 616 indexed)" in text
    assert "2 listeners: 600 images in 2.50 s = 240 images/s (2 associations each;" in text
    assert "2 listeners vs 1: 1.20x" in text
    assert "2 workers: 24 studies in 30.00 s = 2,880 studies/hour (jobs per worker: 13 + 11; each series scored exactly once)" in text
    assert "2 workers vs 1: 1.20x" in text


def test_a_run_that_stopped_early_has_no_ratio_and_is_not_ok() -> None:
    r = made_up_result(ingest=(IngestRun(1, 600, 3.0, 616, 616),), scoring=(), problems=("ingest: boom",))
    assert not r.ok and r.ingest_ratio is None and r.scoring_ratio is None
    doc = r.as_json()
    assert doc["ingest"]["ratio_2_vs_1"] is None and doc["scoring"]["runs"] == [] and doc["problems"] == ["ingest: boom"]
    assert "2 listeners vs 1: -" in format_report(r)
    # Both runs measured but problems found (a server that did not stop cleanly): still not ok.
    assert not made_up_result(problems=("x",)).ok


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_run_scores_every_study_exactly_once(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert scale.run(parse([*TINY, "--db", postgres_url, "--json", "--keep"])) == 0
    doc = json.loads(capsys.readouterr().out)

    assert doc["ok"] is True and doc["problems"] == []
    assert doc["config"]["n"] == 24 and doc["config"]["studies"] == 4
    ingest, scoring = doc["ingest"], doc["scoring"]
    assert [run["listeners"] for run in ingest["runs"]] == [1, 2]
    total = 24 + ingest["warmup_instances"]
    for run in ingest["runs"]:
        assert run["instances"] == 24 and run["seconds"] > 0
        assert run["stored_files"] == run["indexed_rows"] == total  # every instance stored and indexed once
        assert run["images_per_s"] == pytest.approx(24 / run["seconds"])
    assert ingest["ratio_2_vs_1"] == pytest.approx(ingest["runs"][1]["images_per_s"] / ingest["runs"][0]["images_per_s"])

    assert [run["workers"] for run in scoring["runs"]] == [1, 2]
    for run in scoring["runs"]:
        assert run["scored_once"] is True and run["seconds"] > 0
        assert len(run["jobs_by_worker"]) == run["workers"] and sum(run["jobs_by_worker"]) == 4
        assert run["studies_per_hour"] == pytest.approx(4 * 3600 / run["seconds"])
    assert scoring["ratio_2_vs_1"] == pytest.approx(scoring["runs"][1]["studies_per_hour"] / scoring["runs"][0]["studies_per_hour"])

    # Kept (--db --keep): read the scoring databases ourselves, not through the bench.
    names = doc["databases"]
    assert [n.rsplit("_", 1)[1] for n in names] == ["ingest1", "ingest2", "received", "score1", "score2"]
    for name in names[3:]:
        engine = create_engine(make_url(postgres_url).set(database=name))
        try:
            with engine.connect() as conn:
                studies = conn.execute(text("SELECT ai_status, count(*) FROM study GROUP BY ai_status")).all()
                per_series = conn.execute(
                    text(
                        "SELECT se.id, (SELECT count(*) FROM job j WHERE j.series_pk = se.id AND j.status = 'done'),"
                        " (SELECT count(*) FROM series_result r WHERE r.series_pk = se.id) FROM series se"
                    )
                ).all()
                inferences = conn.execute(
                    text("SELECT study_uid, count(*) FROM audit_event WHERE action = 'inference' GROUP BY study_uid")
                ).all()
        finally:
            engine.dispose()
        assert [tuple(row) for row in studies] == [("scored", 4)]
        assert len(per_series) == 4 and all((done, results) == (1, 1) for _pk, done, results in per_series)
        assert len(inferences) == 4 and all(n == 1 for _uid, n in inferences)
