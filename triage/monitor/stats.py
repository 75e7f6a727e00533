"""``triage monitor``: how the deployed detectors fare, from the radiologists' feedback.

Every figure here is computed from what radiologists said about the AI's
suggestions (``Feedback`` rows): agreement, PPV among the findings the AI
flagged urgent, and a sensitivity estimate from the findings they recorded as
missed. Feedback is not a ground truth (readers are not blinded to the AI, and
they review only some findings), so this is post-deployment monitoring, not a
clinical validation.

The unit counted is one verdict of one user on one finding: when a user gives
feedback twice on a finding, only the newest row counts; two users reviewing a
finding give two verdicts. "unsure" is counted but left out of every
proportion. Each proportion carries a Wilson 95% interval.

Bias watch: per detector, each stratum (sex, age band, manufacturer, modality)
is compared with the rest of that detector's verdicts, and flagged when the two
Wilson intervals do not overlap. Strata with fewer than ``min_n`` verdicts are
listed as too few to judge, never dropped. Drift watch: the latest complete
ISO week (of the feedback time) is flagged when its whole interval lies below
the detector's overall agreement.

Everything here is pure (values in, values out); :mod:`triage.monitor.load`
reads the database and builds the report. The text report is in :mod:`triage.monitor.text`, the plots in
:mod:`triage.monitor.plots` (which imports matplotlib; this module does not).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any

from detectors.metrics import wilson_interval  # numpy only: no torch
from triage.clock import as_utc
from triage.errors import TriageError
from triage.vocabulary import Verdict

logger = logging.getLogger(__name__)

NOTE = "Figures come from radiologists' feedback on the AI's suggestions; they are monitoring, not a clinical validation."
EMPTY = "no feedback recorded yet"
UNKNOWN = "unknown"

SEXES = ("M", "F", "O")
# (label, lowest age in whole years); a band runs up to the next one's lowest age.
AGE_BANDS = (("0-17", 0), ("18-39", 18), ("40-64", 40), ("65-79", 65), ("80+", 80))
DIMENSIONS = ("sex", "age", "manufacturer", "modality")
# An AS or date-derived age above this is a typing error, not a patient.
MAX_PLAUSIBLE_AGE_Y = 130


class MonitorError(TriageError):
    """The monitoring report could not be computed or written."""


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n`` with its Wilson 95% interval; ``value`` and ``ci`` are None when ``n`` is 0."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.k, self.n) if self.n else None

    def as_json(self) -> dict[str, Any]:
        ci = self.ci
        return {"k": self.k, "n": self.n, "value": self.value, "ci95": None if ci is None else [ci[0], ci[1]]}


def intervals_overlap(a: Proportion, b: Proportion) -> bool | None:
    """Whether the Wilson intervals of ``a`` and ``b`` overlap; None when either is empty."""
    ca, cb = a.ci, b.ci
    if ca is None or cb is None:
        return None
    return ca[0] <= cb[1] and cb[0] <= ca[1]


@dataclass(frozen=True)
class VerdictCounts:
    """Verdicts on findings: agreement is ``agree / (agree + disagree)``; unsure is kept aside."""

    agree: int = 0
    disagree: int = 0
    unsure: int = 0

    @property
    def agreement(self) -> Proportion:
        return Proportion(self.agree, self.agree + self.disagree)

    @property
    def total(self) -> int:
        return self.agree + self.disagree + self.unsure

    def __sub__(self, other: VerdictCounts) -> VerdictCounts:
        return VerdictCounts(self.agree - other.agree, self.disagree - other.disagree, self.unsure - other.unsure)

    def as_json(self) -> dict[str, int]:
        return {"agree": self.agree, "disagree": self.disagree, "unsure": self.unsure}


def _count(verdicts: Iterable[str]) -> VerdictCounts:
    agree = disagree = unsure = 0
    for v in verdicts:
        if v == Verdict.AGREE.value:
            agree += 1
        elif v == Verdict.DISAGREE.value:
            disagree += 1
        elif v == Verdict.UNSURE.value:
            unsure += 1
    return VerdictCounts(agree, disagree, unsure)


# --------------------------------------------------------------------------- strata


def sex_stratum(patient_sex: str | None) -> str:
    """``M``, ``F``, ``O`` (PS3.3 C.7.1.1, Patient's Sex) or ``unknown``."""
    value = (patient_sex or "").strip().upper()
    return value if value in SEXES else UNKNOWN


def _band(years: float) -> str:
    if not 0 <= years <= MAX_PLAUSIBLE_AGE_Y:
        return UNKNOWN
    label = UNKNOWN
    for name, lowest in AGE_BANDS:
        if years >= lowest:
            label = name
    return label


def _parse_da(value: str | None) -> date | None:
    text = (value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def age_in_years(patient_age: str | None, birth_date: str | None = None, study_date: str | None = None) -> float | None:
    """The patient's age at the study in years, or None when it cannot be told.

    Parameters
    ----------
    patient_age : str or None
        Patient's Age, an AS value (PS3.5 6.2): ``nnnD``, ``nnnW``, ``nnnM``
        or ``nnnY``, e.g. ``064Y``, ``030M``. Preferred when valid.
    birth_date, study_date : str or None
        DA values (``YYYYMMDD``); the age in whole years between them is the
        fallback when ``patient_age`` is missing or malformed.
    """
    match = re.fullmatch(r"(\d{3})([DWMY])", (patient_age or "").strip().upper())
    if match:
        number, unit = int(match.group(1)), match.group(2)
        return {"D": number / 365.25, "W": number * 7 / 365.25, "M": number / 12, "Y": float(number)}[unit]
    born, studied = _parse_da(birth_date), _parse_da(study_date)
    if born is None or studied is None or studied < born:
        return None
    # Whole years completed by the study date.
    return float(studied.year - born.year - ((studied.month, studied.day) < (born.month, born.day)))


def age_band(patient_age: str | None, birth_date: str | None = None, study_date: str | None = None) -> str:
    """The age band (``0-17``, ``18-39``, ``40-64``, ``65-79``, ``80+`` or ``unknown``); see :func:`age_in_years`."""
    years = age_in_years(patient_age, birth_date, study_date)
    return UNKNOWN if years is None else _band(years)


def text_stratum(value: str | None) -> str:
    text = (value or "").strip()
    return text or UNKNOWN


def _stratum_order(dimension: str, value: str) -> tuple[int, str]:
    """Fixed orders for sex and age; alphabetical otherwise; ``unknown`` always last."""
    if value == UNKNOWN:
        return (10_000, "")
    if dimension == "sex":
        return (SEXES.index(value), "")
    if dimension == "age":
        return ([name for name, _ in AGE_BANDS].index(value), "")
    return (0, value.lower())


# --------------------------------------------------------------------------- input records


@dataclass(frozen=True)
class Review:
    """One user's newest verdict on one AI finding, with the finding's context."""

    finding_pk: int
    user: str
    verdict: str  # agree | disagree | unsure
    at: datetime  # when the feedback was given (UTC)
    model_name: str
    kind: str
    urgent: bool
    study_pk: int
    strata: Mapping[str, str]  # dimension -> stratum value


@dataclass(frozen=True)
class Miss:
    """A finding a radiologist recorded as missed by the AI (newest per study, kind and user)."""

    study_pk: int
    kind: str
    user: str
    at: datetime


@dataclass(frozen=True)
class DetectorFindings:
    """What a detector produced, reviewed or not."""

    model_name: str
    kind: str
    versions: tuple[str, ...]
    findings: int
    urgent: int


@dataclass(frozen=True)
class MonitorInput:
    """Everything the report is computed from, as plain values."""

    detectors: tuple[DetectorFindings, ...]
    reviews: tuple[Review, ...]
    misses: tuple[Miss, ...]
    # (study_pk, kind) -> model names with a finding of that kind in that study, to attribute misses.
    study_detectors: Mapping[tuple[int, str], frozenset[str]]
    ignored_feedback: int = 0


# --------------------------------------------------------------------------- the report


class StratumStatus(str, Enum):
    OK = "ok"  # intervals overlap with the rest's
    LOWER = "lower"  # flagged: interval entirely below the rest's
    HIGHER = "higher"  # flagged: interval entirely above the rest's
    TOO_FEW = "too_few"  # fewer than min_n verdicts: too few to judge
    NO_COMPARISON = "no_comparison"  # the rest of the detector's verdicts are fewer than min_n


class DriftStatus(str, Enum):
    OK = "ok"
    DRIFT = "drift"  # the latest complete week's interval lies entirely below the overall agreement
    TOO_FEW = "too_few"  # the latest complete week has fewer than min_n verdicts
    NO_COMPLETE_WEEK = "no_complete_week"  # no verdict in a week that has ended


@dataclass(frozen=True)
class StratumStats:
    """One stratum of one detector's verdicts, compared with the rest of them."""

    dimension: str  # sex | age | manufacturer | modality
    value: str
    counts: VerdictCounts
    rest: VerdictCounts
    status: StratumStatus

    @property
    def agreement(self) -> Proportion:
        return self.counts.agreement

    @property
    def flagged(self) -> bool:
        return self.status in (StratumStatus.LOWER, StratumStatus.HIGHER)

    def as_json(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "stratum": self.value,
            "n": self.agreement.n,
            "verdicts": self.counts.as_json(),
            "agreement": self.agreement.as_json(),
            "rest_agreement": self.rest.agreement.as_json(),
            "status": self.status.value,
            "flagged": self.flagged,
        }


@dataclass(frozen=True)
class WeekStats:
    """One ISO week (of the feedback time) of one detector's verdicts."""

    week: str  # e.g. "2025-W03"
    start: date  # its Monday
    complete: bool  # the week had ended at the report's time
    counts: VerdictCounts
    urgent: VerdictCounts  # verdicts on findings the AI flagged urgent

    @property
    def agreement(self) -> Proportion:
        return self.counts.agreement

    @property
    def ppv(self) -> Proportion:
        return self.urgent.agreement

    def as_json(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "start": self.start.isoformat(),
            "complete": self.complete,
            "n": self.agreement.n,
            "verdicts": self.counts.as_json(),
            "agreement": self.agreement.as_json(),
            "ppv": self.ppv.as_json(),
        }


@dataclass(frozen=True)
class DriftCheck:
    status: DriftStatus
    week: str | None = None  # the latest complete week with verdicts
    agreement: Proportion | None = None  # that week's
    overall: float | None = None  # the detector's overall agreement

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "week": self.week,
            "agreement": None if self.agreement is None else self.agreement.as_json(),
            "overall": self.overall,
        }


@dataclass(frozen=True)
class DetectorMonitor:
    """One detector (model name and finding kind) as its reviewers saw it."""

    model_name: str
    kind: str
    versions: tuple[str, ...]
    findings: int  # produced, reviewed or not
    urgent_findings: int
    findings_reviewed: int  # distinct findings with at least one verdict
    counts: VerdictCounts
    urgent: VerdictCounts  # verdicts on findings the AI flagged urgent
    misses: int  # "missed" records of this kind attributed to this detector
    misses_shared: int  # of those, how many were also attributed to another detector of the kind
    strata: tuple[StratumStats, ...]
    weeks: tuple[WeekStats, ...]
    drift: DriftCheck

    @property
    def label(self) -> str:
        return f"{self.model_name} ({self.kind})"

    @property
    def agreement(self) -> Proportion:
        return self.counts.agreement

    @property
    def ppv(self) -> Proportion:
        """Agreed among urgent findings / reviewed urgent findings (unsure left out)."""
        return self.urgent.agreement

    @property
    def sensitivity(self) -> Proportion:
        """Agreed urgent / (agreed urgent + missed): an estimate that only sees the misses readers recorded."""
        return Proportion(self.urgent.agree, self.urgent.agree + self.misses)

    def as_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "kind": self.kind,
            "versions": list(self.versions),
            "findings": self.findings,
            "urgent_findings": self.urgent_findings,
            "findings_reviewed": self.findings_reviewed,
            "verdicts": self.counts.as_json(),
            "urgent_verdicts": self.urgent.as_json(),
            "agreement": self.agreement.as_json(),
            "ppv_urgent": self.ppv.as_json(),
            "misses": self.misses,
            "misses_shared": self.misses_shared,
            "sensitivity_estimate": self.sensitivity.as_json(),
            "strata": [s.as_json() for s in self.strata],
            "bias_flags": [s.as_json() for s in self.strata if s.flagged],
            "too_few_to_judge": [f"{s.dimension}={s.value}" for s in self.strata if s.status is StratumStatus.TOO_FEW],
            "weeks": [w.as_json() for w in self.weeks],
            "drift": self.drift.as_json(),
        }


@dataclass(frozen=True)
class MonitorReport:
    """Every detector's monitoring figures at ``generated_at``."""

    generated_at: datetime
    min_n: int
    detectors: tuple[DetectorMonitor, ...]
    unattributed_misses: Mapping[str, int] = field(default_factory=dict)  # kind -> misses with no detector of it
    ignored_feedback: int = 0  # newest rows with a verdict that cannot apply (e.g. "missed" on a finding)

    @property
    def empty(self) -> bool:
        """No verdict and no miss recorded at all."""
        reviewed = any(d.counts.total or d.misses for d in self.detectors)
        return not reviewed and not any(self.unattributed_misses.values())

    @property
    def bias_flags(self) -> list[tuple[DetectorMonitor, StratumStats]]:
        return [(d, s) for d in self.detectors for s in d.strata if s.flagged]

    @property
    def drift_flags(self) -> list[DetectorMonitor]:
        return [d for d in self.detectors if d.drift.status is DriftStatus.DRIFT]

    def as_json(self) -> dict[str, Any]:
        """A plain dict (``json.dumps`` takes it as it is)."""
        return {
            "generated_at": self.generated_at.isoformat(),
            "note": NOTE,
            "empty": self.empty,
            "message": EMPTY if self.empty else None,
            "min_n": self.min_n,
            "detectors": [d.as_json() for d in self.detectors],
            "unattributed_misses": dict(sorted(self.unattributed_misses.items())),
            "ignored_feedback": self.ignored_feedback,
            "bias_flags": [
                {"detector": d.model_name, "kind": d.kind, "dimension": s.dimension, "stratum": s.value, "status": s.status.value}
                for d, s in self.bias_flags
            ],
            "drift_flags": [{"detector": d.model_name, "kind": d.kind, "week": d.drift.week} for d in self.drift_flags],
        }


def stratum_status(stratum: VerdictCounts, rest: VerdictCounts, min_n: int) -> StratumStatus:
    """Compare a stratum's agreement with the rest's: flagged when the Wilson intervals do not overlap.

    Non-overlap of two 95% intervals is a conservative two-proportion test (it
    flags less than a pooled z-test would): the point is to name strata worth
    a closer look, not to chase noise in small groups.
    """
    a, b = stratum.agreement, rest.agreement
    if a.n < min_n:
        return StratumStatus.TOO_FEW
    if b.n < min_n:
        return StratumStatus.NO_COMPARISON
    if intervals_overlap(a, b):
        return StratumStatus.OK
    assert a.value is not None and b.value is not None
    return StratumStatus.LOWER if a.value < b.value else StratumStatus.HIGHER


def iso_week(at: datetime) -> tuple[str, date]:
    """The ISO week label (``2025-W03``) and Monday of a UTC time."""
    year, week, _ = as_utc(at).isocalendar()
    return f"{year}-W{week:02d}", date.fromisocalendar(year, week, 1)


def drift_check(weeks: Sequence[WeekStats], overall: Proportion, min_n: int) -> DriftCheck:
    """Whether the latest complete week with verdicts lies entirely below the overall agreement."""
    done = [w for w in weeks if w.complete and w.agreement.n]
    if not done or overall.value is None:
        return DriftCheck(DriftStatus.NO_COMPLETE_WEEK, overall=overall.value)
    latest = max(done, key=lambda w: w.start)
    if latest.agreement.n < min_n:
        return DriftCheck(DriftStatus.TOO_FEW, latest.week, latest.agreement, overall.value)
    ci = latest.agreement.ci
    assert ci is not None
    status = DriftStatus.DRIFT if ci[1] < overall.value else DriftStatus.OK
    return DriftCheck(status, latest.week, latest.agreement, overall.value)


def _strata(reviews: Sequence[Review], total: VerdictCounts, min_n: int) -> tuple[StratumStats, ...]:
    out = []
    for dimension in DIMENSIONS:
        groups: dict[str, list[str]] = defaultdict(list)
        for rv in reviews:
            groups[rv.strata.get(dimension, UNKNOWN)].append(rv.verdict)
        for value in sorted(groups, key=lambda v: _stratum_order(dimension, v)):
            counts = _count(groups[value])
            rest = total - counts
            out.append(StratumStats(dimension, value, counts, rest, stratum_status(counts, rest, min_n)))
    return tuple(out)


def _weeks(reviews: Sequence[Review], now: datetime) -> tuple[WeekStats, ...]:
    groups: dict[tuple[str, date], list[Review]] = defaultdict(list)
    for rv in reviews:
        groups[iso_week(rv.at)].append(rv)
    out = []
    for (label, monday), rows in sorted(groups.items(), key=lambda item: item[0][1]):
        end = datetime(monday.year, monday.month, monday.day, tzinfo=UTC) + timedelta(days=7)
        out.append(
            WeekStats(
                week=label,
                start=monday,
                complete=end <= now,
                counts=_count(r.verdict for r in rows),
                urgent=_count(r.verdict for r in rows if r.urgent),
            )
        )
    return tuple(out)


def _attribute_misses(data: MonitorInput, kinds: Mapping[str, list[str]]) -> tuple[dict[str, list[Miss]], dict[str, int]]:
    """model name -> its misses; kind -> misses with no detector of that kind.

    A miss names a study and a kind, not a model. It goes to the detectors of
    that kind that produced a finding in that study (they looked and did not
    flag it); when none did (not routed, failed), to every detector of that kind.
    """
    by_model: dict[str, list[Miss]] = defaultdict(list)
    unattributed: dict[str, int] = defaultdict(int)
    for miss in data.misses:
        models = data.study_detectors.get((miss.study_pk, miss.kind)) or frozenset(kinds.get(miss.kind, ()))
        if not models:
            unattributed[miss.kind] += 1
        for name in models:
            by_model[name].append(miss)
    return by_model, dict(unattributed)


def build_report(data: MonitorInput, now: datetime, min_n: int = 5) -> MonitorReport:
    """The report from already loaded values (pure); see :func:`monitor_report`."""
    if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 1:
        raise MonitorError(f"min_n must be a positive integer, got {min_n!r}")
    now = as_utc(now)
    produced = {(d.model_name, d.kind): d for d in data.detectors}
    reviews_by: dict[tuple[str, str], list[Review]] = defaultdict(list)
    for rv in data.reviews:
        reviews_by[(rv.model_name, rv.kind)].append(rv)
    keys = sorted(set(produced) | set(reviews_by))
    kinds: dict[str, list[str]] = defaultdict(list)
    for name, kind in keys:
        kinds[kind].append(name)
    misses_by, unattributed = _attribute_misses(data, kinds)
    owners: dict[Miss, int] = defaultdict(int)
    for name_misses in misses_by.values():
        for m in name_misses:
            owners[m] += 1

    detectors = []
    for name, kind in keys:
        reviews = reviews_by.get((name, kind), [])
        made = produced.get((name, kind))
        total = _count(rv.verdict for rv in reviews)
        mine = [m for m in misses_by.get(name, []) if m.kind == kind]
        weeks = _weeks(reviews, now)
        detectors.append(
            DetectorMonitor(
                model_name=name,
                kind=kind,
                versions=made.versions if made else (),
                findings=made.findings if made else 0,
                urgent_findings=made.urgent if made else 0,
                findings_reviewed=len({rv.finding_pk for rv in reviews}),
                counts=total,
                urgent=_count(rv.verdict for rv in reviews if rv.urgent),
                misses=len(mine),
                misses_shared=sum(1 for m in mine if owners[m] > 1),
                strata=_strata(reviews, total, min_n),
                weeks=weeks,
                drift=drift_check(weeks, total.agreement, min_n),
            )
        )
    return MonitorReport(
        generated_at=now, min_n=min_n, detectors=tuple(detectors), unattributed_misses=unattributed, ignored_feedback=data.ignored_feedback
    )
