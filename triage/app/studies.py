"""``triage studies``: the worklist in priority order, as text or JSON.

The ranking is the worklist service's (``triage.reading.service``): the urgency
policy at this moment, with the reasons, over every study received. Nothing
is hidden; signed studies come last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from triage.outbox.service import ResultState
from triage.reading.views import StudyFacts, WorklistItem

AI_LABEL = "AI suggestion, not a diagnosis"


def item_json(item: WorklistItem, results: Sequence[ResultState] | None = None) -> dict[str, Any]:
    """One worklist row as a JSON-ready dict (what ``triage studies --json`` prints per study).

    ``results`` are the study's result objects for the PACS
    (``WorklistService.results``); given, they are listed under ``"results"``.
    """
    s, u = item.study, item.urgency
    out = {
        "rank": item.rank,
        "priority_class": u.priority_class.value,
        "score": round(u.score, 2),
        "reasons": list(u.reasons),
        "waiting_min": round(u.waiting_min, 1),
        "target_min": u.target_min,
        "overdue": u.overdue,
        "study_uid": s.study_uid,
        "patient_id": s.patient_id,
        "patient_name": s.patient_name,
        "accession_number": s.accession_number,
        "modality": s.modality,
        "description": s.description,
        "order_priority": s.order_priority,
        "num_series": s.num_series,
        "num_instances": s.num_instances,
        "status": s.receive_status,
        "first_received": s.first_received.isoformat(),
        "ai_status": s.ai_status,
        "ai_reason": s.ai_reason,
        "scored_at": s.scored_at.isoformat() if s.scored_at else None,
        "ai_hidden": item.ai_hidden,
        "read_state": s.read_state.value,
        "claimed_by": s.claimed_by,
        "conflicts": s.conflicts,
        "pixels_purged": s.pixels_purged_at is not None,
        "pixels_purged_at": s.pixels_purged_at.isoformat() if s.pixels_purged_at else None,
        "findings": [f.as_json() | {"label": AI_LABEL} for f in item.findings],
    }
    if results is not None:
        out["results"] = [r.as_json() for r in results]
    return out


def results_line(states: Sequence[ResultState]) -> str:
    """The study's result objects in one line, e.g.
    ``ai_sr -> PACS sent; report_sr -> PACS pending (3 attempts: connection refused)``."""
    parts = []
    for state in states:
        text = f"{state.kind} -> {state.destination} {state.status}"
        if state.status != "sent" and state.attempts:
            # The reason's first clause; the destination's address follows in brackets.
            why = (state.last_error or "").split(" (")[0]
            plural = "s" if state.attempts != 1 else ""
            text += f" ({state.attempts} attempt{plural}{': ' + why if why else ''})"
        parts.append(text)
    return "; ".join(parts)


def conflicts_line(study: StudyFacts) -> str | None:
    """The warning for a study with versions set aside (re-sent under one of its
    SOP Instance UIDs with other content), or None when it has none."""
    if not study.conflicts:
        return None
    n = study.conflicts
    versions = "version" if n == 1 else "versions"
    return (
        f"CONFLICT: {n} {versions} re-sent under this study's SOP Instance UIDs with other content, set aside "
        f"(identity in doubt; see `triage case conflicts {study.study_uid}`)"
    )


def _findings_text(item: WorklistItem) -> str:
    if item.ai_hidden:
        return "(hidden)"
    flagged = [f"{f.kind} {f.probability:.2f}{'!' if f.urgent else ''}" for f in item.findings]
    return ", ".join(flagged) or {"scored": "none", "pending": "pending"}.get(item.study.ai_status, item.study.ai_status)


def format_table(items: list[WorklistItem], reasons: bool = True, results: Mapping[str, Sequence[ResultState]] | None = None) -> str:
    """Plain text, most urgent first; each study's reasons on the lines under it.

    ``results`` (by Study UID, ``WorklistService.results_by_study``) adds a
    ``results:`` line under the reasons of each study that has result objects.
    """
    header = (
        f"{'#':>3}  {'CLASS':8}  {'SCORE':>6}  {'WAIT':>6}  {'MOD':5}  {'PRIO':7}  {'PATIENT ID':12}  "
        f"{'ACCESSION':12}  {'READ':8}  {'AI FINDINGS':24}  DESCRIPTION"
    )
    lines = [header]
    for item in items:
        s, u = item.study, item.urgency
        lines.append(
            f"{item.rank:>3}  {u.priority_class.value:8}  {u.score:>6.1f}  {u.waiting_min:>5.0f}m  "
            f"{s.modality or '-':5.5}  {s.order_priority or '-':7}  {s.patient_id or '-':12.12}  "
            f"{s.accession_number or '-':12.12}  {s.read_state.value:8}  {_findings_text(item):24.24}  "
            f"{s.description or ''}"
        )
        if reasons:
            lines.append(f"{'':5}why: {'; '.join(u.reasons)}")
        warning = conflicts_line(s)
        if warning:
            lines.append(f"{'':5}{warning}")
        if results and results.get(s.study_uid):
            lines.append(f"{'':5}results: {results_line(results[s.study_uid])}")
    if not items:
        lines.append("(no studies received yet)")
    else:
        lines.append(
            f"AI findings are suggestions for ordering the worklist ({AI_LABEL}); '!' = at or above the detector's operating point."
        )
    return "\n".join(lines)
