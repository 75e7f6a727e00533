"""``triage monitor``'s input, read from the study index: findings, feedback, and their studies and series.

:func:`monitor_report` reads (:func:`load`) and builds the report
(:func:`triage.monitor.stats.build_report`, pure).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col

from triage.clock import as_utc, utcnow
from triage.errors import DatabaseError
from triage.monitor.stats import (
    DetectorFindings,
    Miss,
    MonitorError,
    MonitorInput,
    MonitorReport,
    Review,
    age_band,
    build_report,
    sex_stratum,
    text_stratum,
)
from triage.store.models import AIFinding, Feedback, Series, Study
from triage.vocabulary import Verdict

logger = logging.getLogger(__name__)


def newest_per_key(rows: Iterable[tuple[Any, datetime, int, Any]]) -> dict[Any, Any]:
    """``key -> payload`` of the newest row per key; rows are ``(key, at, id, payload)``.

    Ties on time go to the higher id (the row written last).
    """
    best: dict[Any, tuple[datetime, int, Any]] = {}
    for key, at, row_id, payload in rows:
        stamp = (as_utc(at), row_id)
        if key not in best or stamp > best[key][:2]:
            best[key] = (stamp[0], stamp[1], payload)
    return {key: payload for key, (_, _, payload) in best.items()}


def load(engine: Engine) -> MonitorInput:
    """Read findings, feedback and their studies and series from the DB.

    Raises
    ------
    DatabaseError
        If the database cannot be read.
    """
    try:
        with engine.connect() as conn:
            detector_rows = conn.execute(
                select(
                    col(AIFinding.model_name),
                    col(AIFinding.kind),
                    col(AIFinding.model_version),
                    func.count(),
                    func.sum(case((col(AIFinding.urgent), 1), else_=0)),
                ).group_by(col(AIFinding.model_name), col(AIFinding.kind), col(AIFinding.model_version))
            ).all()
            finding_rows = conn.execute(
                select(
                    col(Feedback.id),
                    col(Feedback.finding_pk),
                    col(Feedback.user),
                    col(Feedback.verdict),
                    col(Feedback.created_at),
                    col(AIFinding.model_name),
                    col(AIFinding.kind),
                    col(AIFinding.urgent),
                    col(AIFinding.study_pk),
                    col(Study.patient_sex),
                    col(Study.patient_age),
                    col(Study.patient_birth_date),
                    col(Study.study_date),
                    col(Study.modalities),
                    col(Series.manufacturer),
                    col(Series.modality),
                )
                .join(AIFinding, col(AIFinding.id) == col(Feedback.finding_pk))
                .join(Study, col(Study.id) == col(AIFinding.study_pk))
                .join(Series, col(Series.id) == col(AIFinding.series_pk))
            ).all()
            miss_rows = conn.execute(
                select(col(Feedback.id), col(Feedback.study_pk), col(Feedback.kind), col(Feedback.user), col(Feedback.created_at)).where(
                    col(Feedback.verdict) == Verdict.MISSED.value, col(Feedback.finding_pk).is_(None)
                )
            ).all()
            # Only the studies with a miss, by subquery (no long IN list of parameters).
            missed_studies = select(col(Feedback.study_pk)).where(col(Feedback.verdict) == Verdict.MISSED.value)
            scored_rows = conn.execute(
                select(col(AIFinding.study_pk), col(AIFinding.kind), col(AIFinding.model_name))
                .where(col(AIFinding.study_pk).in_(missed_studies.scalar_subquery()))
                .distinct()
            ).all()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read feedback for monitoring: {exc.__class__.__name__}: {exc}") from None

    per_detector: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in detector_rows:
        per_detector[(row[0], row[1])].append(row)
    detectors = tuple(
        DetectorFindings(
            model_name=name,
            kind=kind,
            versions=tuple(sorted({r[2] for r in rows})),
            findings=sum(int(r[3]) for r in rows),
            urgent=sum(int(r[4] or 0) for r in rows),
        )
        for (name, kind), rows in sorted(per_detector.items())
    )

    # Newest row per (finding, user) first, whatever its verdict: a later row
    # always replaces an earlier one, even one this version cannot use.
    ignored = 0
    reviews_list = []
    for r in newest_per_key(((r.finding_pk, r.user), r.created_at, r.id, r) for r in finding_rows).values():
        if r.verdict not in (Verdict.AGREE.value, Verdict.DISAGREE.value, Verdict.UNSURE.value):
            # "missed" on an existing finding, or a verdict this version does not know.
            ignored += 1
            continue
        modality = r.modality
        if not modality and r.modalities and "\\" not in r.modalities:
            modality = r.modalities  # the study's only modality stands in for a series without one
        strata = {
            "sex": sex_stratum(r.patient_sex),
            "age": age_band(r.patient_age, r.patient_birth_date, r.study_date),
            "manufacturer": text_stratum(r.manufacturer),
            "modality": text_stratum(modality),
        }
        reviews_list.append(
            Review(
                finding_pk=r.finding_pk,
                user=r.user,
                verdict=r.verdict,
                at=as_utc(r.created_at),
                model_name=r.model_name,
                kind=r.kind,
                urgent=bool(r.urgent),
                study_pk=r.study_pk,
                strata=strata,
            )
        )
    reviews = tuple(sorted(reviews_list, key=lambda rv: (rv.at, rv.finding_pk, rv.user)))

    misses = tuple(
        sorted(
            newest_per_key(
                ((r.study_pk, r.kind, r.user), r.created_at, r.id, Miss(r.study_pk, r.kind, r.user, as_utc(r.created_at)))
                for r in miss_rows
            ).values(),
            key=lambda m: (m.at, m.study_pk, m.kind, m.user),
        )
    )
    study_detectors: dict[tuple[int, str], set[str]] = defaultdict(set)
    for r in scored_rows:
        study_detectors[(r[0], r[1])].add(r[2])
    return MonitorInput(
        detectors=detectors,
        reviews=reviews,
        misses=misses,
        study_detectors={k: frozenset(v) for k, v in study_detectors.items()},
        ignored_feedback=ignored,
    )


def monitor_report(engine: Engine, now: datetime | None = None, min_n: int = 5) -> MonitorReport:
    """Monitoring figures of every detector, from the radiologists' feedback in the DB.

    Parameters
    ----------
    engine : Engine
        The study index (``triage.store.db.make_engine``).
    now : datetime, optional
        The report's time (default: now, UTC; naive means UTC). It decides
        which ISO weeks are complete, for the drift check.
    min_n : int
        Fewest verdicts (agree + disagree) for a stratum or a week to be
        judged; smaller ones are listed as too few to judge.

    Returns
    -------
    MonitorReport

    Raises
    ------
    MonitorError
        If ``min_n`` is not a positive integer.
    DatabaseError
        If the database cannot be read.
    """
    if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 1:
        raise MonitorError(f"min_n must be a positive integer, got {min_n!r}")
    return build_report(load(engine), utcnow() if now is None else now, min_n)
