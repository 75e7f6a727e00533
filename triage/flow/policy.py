"""The urgency policy: how soon a study should be read, and why.

A pure function of a study's AI findings, its order priority, its patient
context and how long it has waited. It touches no database, clock or model:
callers pass values in (``now`` included) and get values back, so the same
inputs always give the same rank and the same reasons.

The score (higher = read sooner) is a *base* plus *ageing*:

- finding points: each finding at or above its detector's operating point earns
  at least ``finding_points[kind]`` (up to ``1 + CONFIDENCE_BONUS`` times that at
  probability 1); below the operating point at most half of them, in proportion
  to the probability. A study counts its strongest finding in full and a tenth
  of each of the others.
- order points: ``order_points`` of the order priority (STAT, HIGH, ...).
- context points: ``emergency_points`` when the patient location or the
  requesting service names one of ``emergency_words``.
- ageing: ``ageing_points`` for every waiting target of the base class that the
  study has waited, without bound, so that nothing starves.

The class (critical, urgent, routine) is read off the total score against
``critical_at`` and ``urgent_at``; a case that has waited long enough climbs.
A study the AI has not (usefully) analysed is ranked on its order priority,
context and waiting time alone, and its reasons say so.

Every number comes from :class:`triage.config.PolicySettings`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from triage.clock import as_utc
from triage.config import PolicySettings
from triage.errors import TriageError
from triage.vocabulary import AIStatus, PriorityClass

# At probability 1 a finding earns this fraction more than at its operating
# point: confidence orders findings of one kind, while (with the default points)
# a certain nodule still ranks below a fracture at its operating point, and a
# certain fracture below a bleed at its operating point.
CONFIDENCE_BONUS = 0.25
# Share of its points that a finding below the operating point can earn at most.
BELOW_OPERATING_POINT_SHARE = 0.5
# Weight of every finding but the strongest: a second finding adds a little
# urgency, but three weak findings do not make one strong one.
OTHER_FINDINGS_WEIGHT = 0.1

_WORD_SPLIT = re.compile(r"[^A-Z0-9&]+")  # "A&E" stays one word


class PolicyError(TriageError, ValueError):
    """An input to the urgency policy is out of range; the message names it."""


# Least to most urgent.
_CLASS_ORDER = (PriorityClass.ROUTINE, PriorityClass.URGENT, PriorityClass.CRITICAL)


def _check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f'Argument "{name}" must be a number in [0, 1], got {value!r}')
    # NaN fails both comparisons, so it is refused here too.
    if not 0.0 <= value <= 1.0:
        raise PolicyError(f'Argument "{name}" must be in [0, 1], got {value!r}')
    return float(value)


@dataclass(frozen=True)
class FindingInput:
    """One detector's study-level result.

    Parameters
    ----------
    kind
        Finding kind: ``bleed``, ``fracture`` or ``nodule`` (others earn no points).
    probability
        Calibrated probability in [0, 1].
    operating_point
        The detector's urgent threshold in [0, 1].
    """

    kind: str
    probability: float
    operating_point: float

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind.strip():
            raise PolicyError(f'Argument "kind" must be a non-empty string, got {self.kind!r}')
        object.__setattr__(self, "probability", _check_unit_interval("probability", self.probability))
        object.__setattr__(self, "operating_point", _check_unit_interval("operating_point", self.operating_point))


@dataclass(frozen=True)
class CaseInput:
    """What the policy needs to know about one study.

    Parameters
    ----------
    study_uid
        Study Instance UID; the last tie-breaker of :func:`rank`.
    received_at
        When the first instance was received: waiting starts here. Naive
        datetimes are taken as UTC.
    order_priority
        ``STAT``, ``HIGH``, ``MEDIUM``, ``ROUTINE``, ``LOW`` (any case) or ``None``.
    patient_location, requesting_service
        Free text searched for ``emergency_words``.
    ai_status
        A :class:`triage.store.models.AIStatus` value.
    ai_reason
        Why the AI failed or did not analyse the study, shown in the reasons.
    findings
        The AI's findings; counted only when ``ai_status`` is scored or partial.
    """

    study_uid: str
    received_at: datetime
    order_priority: str | None = None
    patient_location: str | None = None
    requesting_service: str | None = None
    ai_status: str = "pending"
    ai_reason: str | None = None
    findings: tuple[FindingInput, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.study_uid, str) or not self.study_uid:
            raise PolicyError(f'Argument "study_uid" must be a non-empty string, got {self.study_uid!r}')
        if not isinstance(self.received_at, datetime):
            raise PolicyError(f'Argument "received_at" must be a datetime, got {self.received_at!r}')
        try:
            status = AIStatus(self.ai_status)
        except ValueError:
            allowed = ", ".join(s.value for s in AIStatus)
            raise PolicyError(f'Argument "ai_status" must be one of {allowed}, got {self.ai_status!r}') from None
        object.__setattr__(self, "ai_status", status.value)
        findings = tuple(self.findings)
        for finding in findings:
            if not isinstance(finding, FindingInput):
                raise PolicyError(f'Argument "findings" must hold FindingInput values, got {finding!r}')
        object.__setattr__(self, "findings", findings)


@dataclass(frozen=True)
class Urgency:
    """The policy's answer for one study.

    Attributes
    ----------
    priority_class
        Class of the total ``score`` (ageing included).
    score
        Higher = read sooner; ``base_score`` plus ageing.
    base_score
        Finding, order and context points, without ageing.
    waiting_min
        Minutes since ``received_at`` (0 if that is in the future).
    target_min
        Minutes within which a case of the base class should be read.
    overdue
        ``waiting_min > target_min``.
    reasons
        Human-readable, most important first.
    """

    priority_class: PriorityClass
    score: float
    base_score: float
    waiting_min: float
    target_min: float
    overdue: bool
    reasons: tuple[str, ...]


def _pair(probability: float, operating_point: float) -> tuple[str, str]:
    """Format both with 2 decimals, more when 2 would hide which side of the threshold we are."""
    for digits in range(2, 7):
        p, op = f"{probability:.{digits}f}", f"{operating_point:.{digits}f}"
        if (p == op) == (probability == operating_point):
            break
    return p, op


def _finding_points(finding: FindingInput, settings: PolicySettings) -> float:
    """Points of one finding: monotone non-decreasing in probability, jump at the operating point included."""
    full = settings.finding_points.get(finding.kind, 0.0)
    p, op = finding.probability, finding.operating_point
    if p >= op:
        return full * (1.0 + CONFIDENCE_BONUS * (p - op) / max(1e-9, 1.0 - op))
    # p < op implies op > 0; the result stays below the share, so below the jump.
    return full * BELOW_OPERATING_POINT_SHARE * (p / op)


def _finding_reason(finding: FindingInput, settings: PolicySettings) -> str:
    p, op = _pair(finding.probability, finding.operating_point)
    side = f">= {op}" if finding.probability >= finding.operating_point else f"below {op}"
    note = "AI suggestion"
    if finding.kind not in settings.finding_points:
        note += f"; no points for kind '{finding.kind}'"
    return f"{finding.kind} {p} {side} operating point ({note})"


def _study_finding_points(points: list[float]) -> float:
    """Strongest finding in full plus a tenth of the others.

    ``math.fsum`` is correctly rounded, so the result is exactly monotone in
    every finding's points, even when a finding overtakes the strongest.
    """
    if not points:
        return 0.0
    ordered = sorted(points, reverse=True)
    return ordered[0] + OTHER_FINDINGS_WEIGHT * math.fsum(ordered[1:])


def _emergency_word(text: str | None, words: Iterable[str]) -> str | None:
    if not text:
        return None
    tokens = set(_WORD_SPLIT.split(text.upper()))
    return next((w for w in words if w.upper() in tokens), None)


def _status_reason(status: AIStatus, reason: str | None) -> str | None:
    if status is AIStatus.SCORED:
        return None
    if status is AIStatus.PENDING:
        return "AI result pending"
    prefix = {AIStatus.FAILED: "AI failed", AIStatus.NOT_ANALYSED: "not analysed by AI", AIStatus.PARTIAL: "AI partially failed"}[status]
    return f"{prefix}: {reason}" if reason else prefix


def class_of(score: float, settings: PolicySettings) -> PriorityClass:
    """The class of a score against ``critical_at`` and ``urgent_at``."""
    if score >= settings.critical_at:
        return PriorityClass.CRITICAL
    if score >= settings.urgent_at:
        return PriorityClass.URGENT
    return PriorityClass.ROUTINE


def target_minutes(priority_class: PriorityClass | str, settings: PolicySettings) -> float:
    """Minutes within which a case of this class should be read.

    A class never gets a longer target than a less urgent one: with targets out
    of order in a settings file, a higher base would otherwise age slower and a
    more suspicious finding could rank a study lower.
    """
    targets = settings.targets_min
    return _ordered_target(PriorityClass(priority_class), targets["critical"], targets["urgent"], targets["routine"])


@functools.lru_cache(maxsize=64)
def _ordered_target(priority_class: PriorityClass, critical: float, urgent: float, routine: float) -> float:
    # Cached: the worklist asks for every study on every reload (10,000 at a time).
    targets = {PriorityClass.CRITICAL: critical, PriorityClass.URGENT: urgent, PriorityClass.ROUTINE: routine}
    upto = _CLASS_ORDER.index(priority_class) + 1
    return min(targets[c] for c in _CLASS_ORDER[:upto])


def assess(case: CaseInput, now: datetime, settings: PolicySettings) -> Urgency:
    """Score one study.

    Parameters
    ----------
    case
        The study's findings, order, context and arrival time.
    now
        The time to measure waiting at (naive is taken as UTC).
    settings
        Points, thresholds and targets (``[policy]``).

    Returns
    -------
    Urgency
        Class, score, waiting and the reasons, most important first: the AI's
        status when it gave no full result, findings at or above their operating
        point, order priority, emergency context, findings below their operating
        point, waiting time, escalation.

    Raises
    ------
    PolicyError
        If ``now`` is not a datetime or the settings give a non-finite score.
    """
    if not isinstance(now, datetime):
        raise PolicyError(f'Argument "now" must be a datetime, got {now!r}')
    status = AIStatus(case.ai_status)
    head: list[str] = []
    status_note = _status_reason(status, case.ai_reason)
    if status_note:
        head.append(status_note)

    # Findings count only when the AI finished (at least partly); otherwise the
    # case is ranked without them and the status note says why.
    findings = case.findings if status in (AIStatus.SCORED, AIStatus.PARTIAL) else ()
    scored = (
        sorted(((_finding_points(f, settings), f) for f in findings), key=lambda pf: (-pf[0], -pf[1].probability, pf[1].kind))
        if findings
        else []
    )
    finding_total = _study_finding_points([pts for pts, _ in scored])
    above = [_finding_reason(f, settings) for _, f in scored if f.probability >= f.operating_point]
    below = [_finding_reason(f, settings) for _, f in scored if f.probability < f.operating_point]
    if status is AIStatus.SCORED and not findings:
        head.append("AI found nothing to flag (AI suggestion)")

    order_total, order_reasons = 0.0, []
    priority = (case.order_priority or "").strip()
    if priority:
        key = priority.upper()
        if key in settings.order_points:
            order_total = settings.order_points[key]
            order_reasons.append(f"{key} order")
        else:
            order_reasons.append(f"order priority '{priority}' not recognised")

    context_total, context_reasons = 0.0, []
    places = [
        (label, text.strip())
        for label, text in (("patient location", case.patient_location), ("requesting service", case.requesting_service))
        if text and _emergency_word(text, settings.emergency_words)
    ]
    if places:
        context_total = settings.emergency_points
        context_reasons.append("emergency context (" + "; ".join(f"{label}: {text}" for label, text in places) + ")")

    base = finding_total + order_total + context_total
    base_class = class_of(base, settings)
    target = target_minutes(base_class, settings)
    waiting = max(0.0, (as_utc(now) - as_utc(case.received_at)).total_seconds() / 60.0)
    score = base + settings.ageing_points * waiting / target
    if not math.isfinite(score):
        raise PolicyError(f"policy settings give a non-finite score for study {case.study_uid}")
    final_class = class_of(score, settings)
    overdue = waiting > target

    tail: list[str] = []
    if overdue:
        tail.append(f"waiting {waiting:.0f} min, {base_class.value} target {target:g} min")
    else:
        tail.append(f"waiting {waiting:.0f} min of {target:g} min {base_class.value} target")
    if final_class is not base_class:
        tail.append(f"escalated from {base_class.value} to {final_class.value} by waiting time")

    return Urgency(
        priority_class=final_class,
        score=score,
        base_score=base,
        waiting_min=waiting,
        target_min=target,
        overdue=overdue,
        reasons=tuple(head + above + order_reasons + context_reasons + below + tail),
    )


def rank(cases: Iterable[CaseInput], now: datetime, settings: PolicySettings) -> list[tuple[CaseInput, Urgency]]:
    """Most urgent first; a total, stable order: (-score, received_at, study_uid).

    Raises
    ------
    PolicyError
        If two cases share a ``study_uid`` (the order would not be total).
    """
    assessed: list[tuple[CaseInput, Urgency]] = []
    seen: set[str] = set()
    for case in cases:
        if case.study_uid in seen:
            raise PolicyError(f"study_uid {case.study_uid!r} appears twice in the cases to rank")
        seen.add(case.study_uid)
        assessed.append((case, assess(case, now, settings)))
    return sorted(assessed, key=lambda cu: (-cu[1].score, as_utc(cu[0].received_at), cu[0].study_uid))
