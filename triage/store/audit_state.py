"""The current rows against the audit chain: what ``triage audit verify`` checks after the hashes.

An intact chain says what was done; the rows say what is there now. Whoever
edits a signed report's text, a finding's probability or a study's claim
directly in the database leaves the chain intact but makes the rows disagree
with it. While :func:`triage.store.audit.verify` walks the chain it hands each
event to :meth:`ChainFacts.observe`, which keeps only what the rows are
checked against (a few small tuples per event); :func:`check_rows` then reads
reports, findings, results and studies a page at a time and names each row
that differs, one line each.

What is checked, and against which event:

- a signed report (or signed amendment): its text's SHA-256, signer and
  version against the ``sign`` event naming its id; a ``sign`` event whose
  report is gone or no longer signed;
- a draft (or an amendment not yet signed): its text against the newest
  ``draft`` / ``amend`` event of its study and version;
- a finding: kind, probability, operating point, urgency, regions and model
  (name, version, weights SHA-256) against the same output of the
  ``inference`` event of its series, generation and job; findings missing
  from, or added to, a scored series;
- a study: read state and claimant against its newest claim, release, sign or
  amend event (no such event: unread, unclaimed). The claim's expiry is not
  checked: every reading action renews it without recording the new time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from triage.store.tables import FINDING, REPORT, RESULT, SERIES, STUDY
from triage.vocabulary import ReadState, ReportStatus

MAX_LINES = 100  # differences named one by one; the rest are counted
_PAGE = 1000


@dataclass(frozen=True)
class _Sign:
    seq: int
    actor: str
    study_uid: str | None
    version: Any
    text_sha256: Any


@dataclass(frozen=True)
class _Scored:
    seq: int
    outputs: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class _ReadStep:
    seq: int
    state: str | None  # None: the event does not set the state (never for the actions kept)
    claimant: str | None
    sets_claimant: bool


@dataclass
class ChainFacts:
    """What the rows must agree with, gathered from the events of an intact chain."""

    signs: dict[int, _Sign] = field(default_factory=dict)  # report id -> its sign event
    texts: dict[tuple[str | None, Any], tuple[int, str, Any]] = field(default_factory=dict)  # (study, version) -> seq, action, sha
    scored: dict[tuple[Any, Any, Any], _Scored] = field(default_factory=dict)  # (series, generation, job) -> outputs
    state: dict[str, tuple[int, str]] = field(default_factory=dict)  # study -> seq, read state
    claimant: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # study -> seq, claimant

    def observe(self, seq: int, actor: str, action: str, study_uid: str | None, detail: Any) -> None:
        """Keep what event ``seq`` says about the rows (its hash already checked)."""
        if not isinstance(detail, dict):
            return
        if action == "inference" or action == "inference_failed":
            outputs = detail.get("outputs")
            if isinstance(outputs, list) and "series_uid" in detail:
                key = (detail.get("series_uid"), detail.get("generation"), detail.get("job"))
                self.scored[key] = _Scored(seq, tuple(o for o in outputs if isinstance(o, dict)))
            return
        if study_uid is None:
            return
        if action in ("draft", "amend", "sign"):
            self.texts[(study_uid, detail.get("version"))] = (seq, action, detail.get("text_sha256"))
        if action == "sign" and isinstance(detail.get("report_id"), int):
            self.signs[detail["report_id"]] = _Sign(seq, actor, study_uid, detail.get("version"), detail.get("text_sha256"))
        # The state each step leaves the study in (triage.reading.states.TRANSITIONS).
        if action in ("claim", "release") and isinstance(detail.get("to"), str):
            self.state[study_uid] = (seq, detail["to"])
        elif action == "sign":
            self.state[study_uid] = (seq, ReadState.SIGNED.value)
        elif action == "amend":
            self.state[study_uid] = (seq, ReadState.READING.value)
        if action == "claim":
            self.claimant[study_uid] = (seq, actor)
        elif action in ("release", "sign"):
            self.claimant[study_uid] = (seq, None)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pages(conn: Connection, query: Any, key: Any) -> Iterable[Any]:
    """Rows of ``query`` in ``key`` order, a page at a time (keyset on ``key``)."""
    last: Any = None
    while True:
        page = query.order_by(key).limit(_PAGE)
        if last is not None:
            page = page.where(key > last)
        rows = conn.execute(page).all()
        yield from rows
        if len(rows) < _PAGE:
            return
        last = rows[-1][0]


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.more = 0

    def add(self, line: str) -> None:
        if len(self.lines) < MAX_LINES:
            self.lines.append(line)
        else:
            self.more += 1

    def result(self) -> list[str]:
        return self.lines + ([f"... and {self.more} more differences"] if self.more else [])


def check_rows(conn: Connection, facts: ChainFacts) -> list[str]:
    """Every row that differs from the chain, one line each (at most :data:`MAX_LINES`, then a count).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the database cannot be read (the caller words it).
    """
    out = _Lines()
    _check_reports(conn, facts, out.add)
    _check_findings(conn, facts, out.add)
    _check_studies(conn, facts, out.add)
    return out.result()


def _check_reports(conn: Connection, facts: ChainFacts, report: Callable[[str], None]) -> None:
    query = select(REPORT.c.id, REPORT.c.version, REPORT.c.text, REPORT.c.status, REPORT.c.signed_by, STUDY.c.study_uid).join(
        STUDY, STUDY.c.id == REPORT.c.study_pk
    )
    signed_seen: set[int] = set()
    for row in _pages(conn, query, REPORT.c.id):
        what = f"report v{row.version} of study {row.study_uid}"
        sign = facts.signs.get(row.id)
        if row.status == ReportStatus.SIGNED.value:
            if sign is None:
                report(f"{what}: signed, but no sign event records it")
                continue
            signed_seen.add(row.id)
            if _sha256(row.text) != sign.text_sha256:
                report(f"{what}: text differs from its sign event (seq {sign.seq})")
            if row.signed_by != sign.actor:
                report(f"{what}: signed by {row.signed_by}, its sign event (seq {sign.seq}) by {sign.actor}")
            if row.version != sign.version or row.study_uid != sign.study_uid:
                report(f"{what}: its sign event (seq {sign.seq}) signed v{sign.version} of study {sign.study_uid}")
        elif sign is not None:
            signed_seen.add(row.id)
            report(f"{what}: status {row.status}, but its sign event (seq {sign.seq}) signed it")
        else:
            step = facts.texts.get((row.study_uid, row.version))
            if step is None:
                report(f"{what}: a draft no draft or amend event records")
            elif _sha256(row.text) != step[2]:
                report(f"{what}: text differs from its {step[1]} event (seq {step[0]})")
    for report_id, sign in facts.signs.items():
        if report_id not in signed_seen:
            report(f"report v{sign.version} of study {sign.study_uid}: signed in event {sign.seq} (report id {report_id}), now missing")


_COMPARED = ("kind", "probability", "operating_point", "urgent")


def _finding_differences(row: Any, output: Mapping[str, Any]) -> list[str]:
    """What of a finding row differs from its output in the inference event (pure)."""
    found = {"kind": row.kind, "probability": row.probability, "operating_point": row.operating_point, "urgent": bool(row.urgent)}
    wrong = [f"{name} {found[name]!r} (event: {output.get(name)!r})" for name in _COMPARED if found[name] != output.get(name)]
    try:
        regions = json.loads(row.regions)
    except (TypeError, ValueError):
        regions = None
    if regions != output.get("regions"):
        wrong.append("regions")
    model = output.get("model")
    if isinstance(model, dict):  # recorded since the chain was keyed; older events name the models only as a set
        row_model = {"name": row.model_name, "version": row.model_version, "sha256": row.weights_sha256}
        wrong.extend(f"model {k} {row_model[k]!r} (event: {model.get(k)!r})" for k in row_model if row_model[k] != model.get(k))
    return wrong


def _check_findings(conn: Connection, facts: ChainFacts, report: Callable[[str], None]) -> None:
    result_cols = (RESULT.c.id, RESULT.c.generation, RESULT.c.job_pk, SERIES.c.series_uid, STUDY.c.study_uid)
    joined = RESULT.join(SERIES, SERIES.c.id == RESULT.c.series_pk).join(STUDY, STUDY.c.id == RESULT.c.study_pk)
    query = select(
        FINDING.c.id,
        FINDING.c.kind,
        FINDING.c.probability,
        FINDING.c.operating_point,
        FINDING.c.urgent,
        FINDING.c.model_name,
        FINDING.c.model_version,
        FINDING.c.weights_sha256,
        FINDING.c.regions,
        *[c.label(f"r_{c.name}") for c in result_cols],
    ).select_from(FINDING.join(joined, RESULT.c.id == FINDING.c.result_pk))
    counts: dict[int, int] = {}
    for row in _pages(conn, query, FINDING.c.id):
        what = f"finding {row.id} of study {row.r_study_uid} (series {row.r_series_uid})"
        scored = facts.scored.get((row.r_series_uid, row.r_generation, row.r_job_pk))
        index = counts.get(row.r_id, 0)
        counts[row.r_id] = index + 1
        if scored is None:
            report(f"{what}: no inference event records it")
        elif index >= len(scored.outputs):
            report(f"{what}: not among the outputs of its inference event (seq {scored.seq}; inserted?)")
        else:
            wrong = _finding_differences(row, scored.outputs[index])
            if wrong:
                report(f"{what}: {', '.join(wrong)} differ from its inference event (seq {scored.seq})")
    seen: set[tuple[Any, Any, Any]] = set()
    for row in _pages(conn, select(*result_cols).select_from(joined), RESULT.c.id):
        key = (row.series_uid, row.generation, row.job_pk)
        seen.add(key)
        scored = facts.scored.get(key)
        if scored is not None and counts.get(row.id, 0) < len(scored.outputs):
            report(
                f"series {row.series_uid} of study {row.study_uid}: {counts.get(row.id, 0)} findings, "
                f"its inference event (seq {scored.seq}) recorded {len(scored.outputs)} (deleted?)"
            )
    for key, scored in facts.scored.items():
        if scored.outputs and key not in seen:
            report(f"series {key[0]}: its inference event (seq {scored.seq}) recorded findings, the result is missing (deleted?)")


def _check_studies(conn: Connection, facts: ChainFacts, report: Callable[[str], None]) -> None:
    query = select(STUDY.c.id, STUDY.c.study_uid, STUDY.c.read_state, STUDY.c.claimed_by)
    for row in _pages(conn, query, STUDY.c.id):
        seq, state = facts.state.get(row.study_uid, (None, ReadState.UNREAD.value))
        if row.read_state != state:
            source = f"its event (seq {seq}) says {state}" if seq is not None else "no claim or sign event records a change"
            report(f"study {row.study_uid}: read state {row.read_state}, {source}")
        seq, claimant = facts.claimant.get(row.study_uid, (None, None))
        if row.claimed_by != claimant:
            source = f"its event (seq {seq}) says {claimant or 'unclaimed'}" if seq is not None else "no claim event records it"
            report(f"study {row.study_uid}: claimed by {row.claimed_by or 'nobody'}, {source}")


__all__ = ["MAX_LINES", "ChainFacts", "check_rows"]
