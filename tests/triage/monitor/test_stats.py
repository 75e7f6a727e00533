"""Post-deployment monitoring from radiologists' feedback, on a real SQLite file."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from triage.monitor.load import monitor_report
from triage.monitor.plots import write_plots
from triage.monitor.stats import DriftStatus, MonitorError, MonitorReport, StratumStatus, age_band, sex_stratum, wilson_interval
from triage.monitor.text import format_text
from triage.store.db import make_engine, session_scope
from triage.store.models import AIFinding, Feedback, Series, SeriesResult, Study

UTC = UTC
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)  # a Monday, ISO week 2025-W02
NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Db:
    """Rows inserted directly, the way the worklist service would leave them."""

    def __init__(self, tmp_path: Path) -> None:
        self.engine: Engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
        self._uids = itertools.count(1)

    def _uid(self) -> str:
        return f"1.2.826.0.1.3680043.10.1.{next(self._uids)}"

    def series(
        self,
        *,
        sex: str | None = "M",
        age: str | None = "050Y",
        birth: str | None = None,
        study_date: str | None = None,
        manufacturer: str | None = "ACME",
        modality: str | None = "CT",
    ) -> tuple[int, int, int]:
        """A study with one scored series: (study pk, series pk, result pk)."""
        with session_scope(self.engine) as s:
            study = Study(
                study_uid=self._uid(),
                patient_sex=sex,
                patient_age=age,
                patient_birth_date=birth,
                study_date=study_date,
                modalities=modality or "",
            )
            s.add(study)
            s.flush()
            series = Series(series_uid=self._uid(), study_pk=study.id, manufacturer=manufacturer, modality=modality)
            s.add(series)
            s.flush()
            result = SeriesResult(series_pk=series.id, study_pk=study.id, analysed=True)
            s.add(result)
            s.flush()
            return study.id, series.id, result.id

    def finding(self, where: tuple[int, int, int], *, model: str = "bleed-ct", kind: str = "bleed", urgent: bool = True) -> int:
        study_pk, series_pk, result_pk = where
        with session_scope(self.engine) as s:
            f = AIFinding(
                result_pk=result_pk,
                study_pk=study_pk,
                series_pk=series_pk,
                kind=kind,
                probability=0.9 if urgent else 0.1,
                operating_point=0.5,
                urgent=urgent,
                model_name=model,
                model_version="1.0.0",
                weights_sha256="0" * 64,
            )
            s.add(f)
            s.flush()
            return f.id

    def feedback(self, finding_pk: int, verdict: str, *, user: str = "dr.a", at: datetime = T0) -> None:
        with session_scope(self.engine) as s:
            f = s.get(AIFinding, finding_pk)
            assert f is not None
            s.add(Feedback(study_pk=f.study_pk, finding_pk=finding_pk, kind=f.kind, verdict=verdict, user=user, created_at=at))

    def missed(self, study_pk: int, kind: str, *, user: str = "dr.a", at: datetime = T0) -> None:
        with session_scope(self.engine) as s:
            s.add(Feedback(study_pk=study_pk, finding_pk=None, kind=kind, verdict="missed", user=user, created_at=at))

    def reviewed(
        self, verdict: str, *, urgent: bool = True, at: datetime = T0, model: str = "bleed-ct", kind: str = "bleed", **study: str | None
    ) -> int:
        """A new study with one finding and one verdict on it."""
        pk = self.finding(self.series(**study), model=model, kind=kind, urgent=urgent)
        self.feedback(pk, verdict, at=at)
        return pk


@pytest.fixture
def db(tmp_path: Path) -> Db:
    return Db(tmp_path)


def _detector(report: MonitorReport, model: str):
    (found,) = [d for d in report.detectors if d.model_name == model]
    return found


def _stratum(detector, dimension: str, value: str):
    (found,) = [s for s in detector.strata if (s.dimension, s.value) == (dimension, value)]
    return found


# --------------------------------------------------------------------------- Wilson


def test_wilson_interval_matches_hand_computed_values() -> None:
    # 8/10, z = 1.959964: z^2 = 3.841459; denom = 1 + 0.384146 = 1.384146;
    # centre = (0.8 + 0.192073) / 1.384146 = 0.716740;
    # half = 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226578 -> [0.490162, 0.943318].
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-5)
    assert high == pytest.approx(0.943318, abs=1e-5)
    # 0/10: centre = half = 0.192073 / 1.384146 = 0.138767 -> [0, 0.277533]; 10/10 mirrors it.
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-5), 1.0)
    # 1/2: centre 0.5, half = 1.959964 * sqrt(0.125 + 0.240091) / 2.920730 = 0.405469.
    assert wilson_interval(1, 2) == (pytest.approx(0.094531, abs=1e-5), pytest.approx(0.905469, abs=1e-5))


@pytest.mark.parametrize("k, n", [(0, 0), (3, 2), (-1, 5), (1.0, 2)])
def test_wilson_interval_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError, match="Argument"):
        wilson_interval(k, n)


# --------------------------------------------------------------------------- strata helpers


@pytest.mark.parametrize(
    "age, birth, study_date, band",
    [
        ("064Y", None, None, "40-64"),
        ("065Y", None, None, "65-79"),
        ("017Y", None, None, "0-17"),
        ("018Y", None, None, "18-39"),
        ("039Y", None, None, "18-39"),
        ("040Y", None, None, "40-64"),
        ("079Y", None, None, "65-79"),
        ("080Y", None, None, "80+"),
        ("030M", None, None, "0-17"),
        ("216M", None, None, "18-39"),  # 18 years in months
        ("052W", None, None, "0-17"),
        ("010D", None, None, "0-17"),
        # Fallback: whole years between birth and study date, birthday counted on the day.
        (None, "19600615", "20250614", "40-64"),
        (None, "19600615", "20250615", "65-79"),
        ("64", "19600615", "20250615", "65-79"),  # malformed AS: the dates decide
        (None, "19600615", None, "unknown"),
        (None, "20250101", "20200101", "unknown"),  # born after the study
        (None, "19601345", "20250101", "unknown"),  # not a date
        (None, None, None, "unknown"),
        ("999Y", None, None, "unknown"),  # implausible
    ],
)
def test_age_band_from_age_string_or_birth_date(age: str | None, birth: str | None, study_date: str | None, band: str) -> None:
    assert age_band(age, birth, study_date) == band


def test_sex_stratum() -> None:
    values = ("M", "f", " O ", "", None, "X")
    assert [sex_stratum(v) for v in values] == ["M", "F", "O", "unknown", "unknown", "unknown"]


# --------------------------------------------------------------------------- counts


def test_agreement_ppv_and_misses_on_known_counts(db: Db) -> None:
    # Urgent findings: 4 agree, 1 disagree, 1 unsure. Not urgent: 1 agree, 3 disagree.
    for verdict in ["agree"] * 4 + ["disagree", "unsure"]:
        db.reviewed(verdict, urgent=True)
    for verdict in ["agree"] + ["disagree"] * 3:
        db.reviewed(verdict, urgent=False)
    db.finding(db.series(), urgent=True)  # produced and flagged urgent, never reviewed
    # Misses of bleed: one in a study the bleed detector scored, one in a study it never saw.
    scored = db.series()
    db.finding(scored, urgent=False)
    db.missed(scored[0], "bleed")
    db.missed(db.series()[0], "bleed", user="dr.b")
    db.missed(db.series()[0], "nodule")  # no nodule detector at all
    db.reviewed("agree", model="fracture-xr", kind="fracture", modality="DX")
    db.reviewed("agree", model="fracture-xr", kind="fracture", modality="DX")

    report = monitor_report(db.engine, now=NOW)

    bleed = _detector(report, "bleed-ct")
    assert (bleed.kind, bleed.versions) == ("bleed", ("1.0.0",))
    assert (bleed.findings, bleed.urgent_findings, bleed.findings_reviewed) == (12, 7, 10)
    assert (bleed.counts.agree, bleed.counts.disagree, bleed.counts.unsure) == (5, 4, 1)
    assert (bleed.agreement.k, bleed.agreement.n) == (5, 9)  # unsure left out
    assert (bleed.ppv.k, bleed.ppv.n) == (4, 5)
    assert bleed.ppv.ci == pytest.approx(wilson_interval(4, 5))
    assert bleed.misses == 2
    assert (bleed.sensitivity.k, bleed.sensitivity.n) == (4, 6)
    fracture = _detector(report, "fracture-xr")
    assert (fracture.agreement.k, fracture.agreement.n, fracture.misses) == (2, 2, 0)
    assert report.unattributed_misses == {"nodule": 1}
    assert not report.empty


def test_newest_feedback_per_finding_per_user_wins(db: Db) -> None:
    pk = db.finding(db.series())
    db.feedback(pk, "disagree", user="dr.a", at=T0)
    db.feedback(pk, "agree", user="dr.a", at=T0 + timedelta(hours=1))
    # Written later but dated earlier: the feedback time decides, not the row order.
    db.feedback(pk, "agree", user="dr.b", at=T0 + timedelta(hours=2))
    db.feedback(pk, "disagree", user="dr.b", at=T0 + timedelta(hours=1))
    db.feedback(pk, "unsure", user="dr.c", at=T0)  # another reader: a verdict of its own
    other = db.finding(db.series())
    db.feedback(other, "agree", user="dr.a", at=T0)
    db.feedback(other, "missed", user="dr.a", at=T0 + timedelta(hours=1))  # newest, but not a verdict on a finding
    study = db.series()
    db.missed(study[0], "bleed", user="dr.a", at=T0)
    db.missed(study[0], "bleed", user="dr.a", at=T0 + timedelta(minutes=5))  # the same miss, twice

    report = monitor_report(db.engine, now=NOW)

    bleed = _detector(report, "bleed-ct")
    assert (bleed.counts.agree, bleed.counts.disagree, bleed.counts.unsure) == (2, 0, 1)
    assert bleed.findings_reviewed == 1
    assert bleed.misses == 1
    assert report.ignored_feedback == 1


# --------------------------------------------------------------------------- bias watch


def _biased_set(db: Db) -> None:
    """Women: 4/20 agree; men: 18/20; each sex split evenly over two manufacturers."""
    for sex, agreed in (("F", 4), ("M", 18)):
        for i in range(20):
            # Two women are 65 or older: one by AS, one by birth date only.
            age = {("F", 0): "070Y", ("F", 1): None}.get((sex, i), "050Y")
            db.reviewed(
                "agree" if i < agreed else "disagree",
                sex=sex,
                manufacturer="ACME" if i % 2 else "Bolt",
                age=age,
                birth="19600101",
                study_date="20250101",
                modality="CT",
            )


def test_a_stratum_with_clearly_lower_agreement_is_flagged_and_a_balanced_one_is_not(db: Db) -> None:
    _biased_set(db)
    report = monitor_report(db.engine, now=NOW, min_n=5)
    bleed = _detector(report, "bleed-ct")

    women = _stratum(bleed, "sex", "F")
    assert (women.agreement.k, women.agreement.n) == (4, 20)
    assert (women.rest.agreement.k, women.rest.agreement.n) == (18, 20)
    assert women.status is StratumStatus.LOWER and women.flagged
    assert _stratum(bleed, "sex", "M").status is StratumStatus.HIGHER  # the mirror image, against the women
    # Each manufacturer has the same mix of women and men: 11/20 against 11/20.
    for maker in ("ACME", "Bolt"):
        assert _stratum(bleed, "manufacturer", maker).agreement.value == pytest.approx(11 / 20)
        assert _stratum(bleed, "manufacturer", maker).status is StratumStatus.OK
    # Two studies aged 70 (one from AS, one dated 65 from its birth date): too few to judge, still listed.
    old = _stratum(bleed, "age", "65-79")
    assert (old.agreement.n, old.status) == (2, StratumStatus.TOO_FEW)
    assert _stratum(bleed, "age", "40-64").agreement.n == 38
    # Every finding is CT: nothing to compare with.
    assert _stratum(bleed, "modality", "CT").status is StratumStatus.NO_COMPARISON
    assert [(s.dimension, s.value) for _, s in report.bias_flags] == [("sex", "M"), ("sex", "F")]

    text = format_text(report)
    assert "bias: bleed-ct (bleed) sex=F: 0.20 [0.08, 0.42] vs rest 0.90 [0.70, 0.97] (lower)" in text
    assert "too few to judge" in text
    assert "not a clinical validation" in text


def test_a_balanced_detector_has_no_bias_flag(db: Db) -> None:
    for sex in ("F", "M"):
        for i in range(10):
            db.reviewed("agree" if i < 8 else "disagree", sex=sex)
    report = monitor_report(db.engine, now=NOW)
    assert report.bias_flags == []
    assert _stratum(_detector(report, "bleed-ct"), "sex", "F").status is StratumStatus.OK


# --------------------------------------------------------------------------- weekly trend


def test_feedback_is_bucketed_by_iso_week_of_the_feedback_time(db: Db) -> None:
    monday_w01 = datetime(2024, 12, 30, 8, 0, tzinfo=UTC)  # ISO 2025-W01 although in 2024
    db.reviewed("agree", at=monday_w01)
    db.reviewed("disagree", at=monday_w01 + timedelta(days=6, hours=15, minutes=59))  # Sunday 23:59
    db.reviewed("agree", at=datetime(2025, 1, 6, 0, 0, tzinfo=UTC))  # Monday 00:00: W02
    db.reviewed("agree", urgent=False, at=datetime(2025, 1, 8, tzinfo=UTC))
    db.reviewed("disagree", at=datetime(2025, 1, 14, tzinfo=UTC))  # W03, still running on the 15th

    report = monitor_report(db.engine, now=datetime(2025, 1, 15, 12, 0, tzinfo=UTC))
    weeks = _detector(report, "bleed-ct").weeks
    assert [(w.week, w.start.isoformat(), w.complete) for w in weeks] == [
        ("2025-W01", "2024-12-30", True),
        ("2025-W02", "2025-01-06", True),
        ("2025-W03", "2025-01-13", False),
    ]
    assert [(w.agreement.k, w.agreement.n) for w in weeks] == [(1, 2), (2, 2), (0, 1)]
    assert [(w.ppv.k, w.ppv.n) for w in weeks] == [(1, 2), (1, 1), (0, 1)]


def test_drift_is_flagged_when_the_latest_complete_week_falls_below_overall(db: Db) -> None:
    w05 = datetime(2025, 1, 27, 10, tzinfo=UTC)
    for _ in range(20):
        db.reviewed("agree", at=w05 - timedelta(days=14), model="bleed-ct")  # W03
        db.reviewed("agree", at=w05 - timedelta(days=14), model="stable-ct")
    for _ in range(6):
        db.reviewed("disagree", at=w05 - timedelta(days=7), model="bleed-ct")  # W04: 0/6
        db.reviewed("agree", at=w05 - timedelta(days=7), model="stable-ct")
        db.reviewed("disagree", at=w05, model="stable-ct")  # W05, still running: not judged yet
    report = monitor_report(db.engine, now=w05 + timedelta(days=1))

    drifting = _detector(report, "bleed-ct").drift
    assert (drifting.status, drifting.week) == (DriftStatus.DRIFT, "2025-W04")
    assert drifting.overall == pytest.approx(20 / 26)
    assert drifting.agreement is not None and drifting.agreement.ci == pytest.approx((0.0, 0.390334), abs=1e-5)
    stable = _detector(report, "stable-ct").drift
    assert (stable.status, stable.week) == (DriftStatus.OK, "2025-W04")
    assert [d.model_name for d in report.drift_flags] == ["bleed-ct"]
    assert "drift: FLAG" in format_text(report)

    few = monitor_report(db.engine, now=w05 + timedelta(days=1), min_n=7)
    assert _detector(few, "bleed-ct").drift.status is DriftStatus.TOO_FEW


# --------------------------------------------------------------------------- output


def test_report_json_is_serialisable(db: Db) -> None:
    _biased_set(db)
    db.missed(db.series()[0], "bleed")
    data = json.loads(json.dumps(monitor_report(db.engine, now=NOW).as_json()))
    (bleed,) = data["detectors"]
    assert bleed["agreement"]["k"] == 22 and bleed["agreement"]["n"] == 40
    assert bleed["agreement"]["ci95"] == pytest.approx(list(wilson_interval(22, 40)))
    assert bleed["misses"] == 1
    flags = [(f["stratum"], f["status"], f["n"]) for f in bleed["bias_flags"]]
    assert flags == [("M", "higher", 20), ("F", "lower", 20)]
    assert "age=65-79" in bleed["too_few_to_judge"]
    assert data["bias_flags"][1] == {"detector": "bleed-ct", "kind": "bleed", "dimension": "sex", "stratum": "F", "status": "lower"}
    assert data["empty"] is False and "not a clinical validation" in data["note"]


def test_plots_are_png_files(db: Db, tmp_path: Path) -> None:
    _biased_set(db)
    db.reviewed("agree", at=T0 + timedelta(days=7))
    paths = write_plots(monitor_report(db.engine, now=NOW), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["strata-bleed-ct-bleed.png", "trend.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_an_empty_database_gives_an_empty_report(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    report = monitor_report(engine)
    assert report.empty and report.detectors == ()
    assert "no feedback recorded yet" in format_text(report)
    assert json.loads(json.dumps(report.as_json()))["message"] == "no feedback recorded yet"
    (trend,) = write_plots(report, tmp_path / "plots")
    assert trend.read_bytes()[:8] == PNG_MAGIC


def test_findings_without_feedback_are_still_an_empty_state(db: Db) -> None:
    db.finding(db.series())
    report = monitor_report(db.engine, now=NOW)
    assert report.empty
    assert _detector(report, "bleed-ct").findings == 1
    assert "no feedback recorded yet" in format_text(report)


def test_min_n_must_be_positive(db: Db) -> None:
    with pytest.raises(MonitorError, match="min_n"):
        monitor_report(db.engine, min_n=0)
