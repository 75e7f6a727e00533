"""Pure text helpers of the TUI: how names, times, keys and audit events are written.

They take values and return strings, with no widget and no terminal, so
they are tested on their own and shared by the dialogs (:mod:`tui.dialogs`)
and the screens without pulling in any textual code. Kept apart from the
dialogs because what an event's one-line summary says (the history view's
rules for each audit action) is a concern of its own, which grows with the
audit vocabulary, not with the dialogs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from triage.clock import shown
from triage.store.conflicts import differences_text

log = logging.getLogger(__name__)

SUMMARY_MAX_CHARS = 90  # one history row's detail column
_GENERIC_PAIRS = 4  # key=value pairs shown for an event without a tailored summary


def format_person_name(name: str | None) -> str:
    """A DICOM PN value (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``) as people write it: ``FAMILY, GIVEN MIDDLE``.

    Only the alphabetic group (before any ``=``) is used; an empty name is ``"(no name)"``.
    """
    if not name or not name.strip():
        return "(no name)"
    alphabetic = name.split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family = parts[0] if parts else ""
    rest = " ".join(p for p in parts[1:] if p)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest or name.strip()


def format_time(at: datetime | str | None, zone: tzinfo = UTC) -> str:
    """An event time as ``YYYY-MM-DD HH:MM:SS CET``, on ``zone``'s clock (the site's).

    Naive values are UTC (as the index stores them); unparsable ones are shown as given.
    """
    if at is None:
        return ""
    if isinstance(at, str):
        try:
            value = datetime.fromisoformat(at)
        except ValueError:
            return at
    else:
        value = at
    return shown(value, zone, date=True, seconds=True)


def truncate(text: str, max_chars: int = SUMMARY_MAX_CHARS) -> str:
    """``text`` on one line, cut to ``max_chars`` with an ellipsis when longer."""
    one_line = " ".join(text.split())
    if len(one_line) <= max_chars:
        return one_line
    return one_line[: max(max_chars - 1, 0)] + "…"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _short_uid(uid: object) -> str:
    # The last components tell series of one study apart; the full UID is in the export.
    text = str(uid)
    return text if len(text) <= 16 else "…" + text[-12:]


def _scalar(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return f"[{len(value)}]"
    if isinstance(value, Mapping):
        return "{…}"
    return str(value)


def _generic_summary(detail: Mapping[str, Any]) -> str:
    pairs = [f"{k}={_scalar(v)}" for k, v in list(detail.items())[:_GENERIC_PAIRS]]
    more = len(detail) - _GENERIC_PAIRS
    return " ".join(pairs) + (f" (+{more} more)" if more > 0 else "")


def _models(detail: Mapping[str, Any]) -> str:
    names: list[str] = []
    for model in detail.get("models") or []:
        # The pipeline stores each model identity as a JSON string (sorted, de-duplicated).
        ident = json.loads(model) if isinstance(model, str) else model
        if isinstance(ident, Mapping):
            label = " ".join(str(ident[k]) for k in ("name", "version") if ident.get(k))
        else:
            label = str(ident)
        if label and label not in names:
            names.append(label)
    return ", ".join(names)


def _inference(detail: Mapping[str, Any]) -> str:
    outputs = detail.get("outputs") or []
    found = ", ".join(f"{o['kind']} {float(o['probability']):.2f}" + (" urgent" if o.get("urgent") else "") for o in outputs)
    if outputs:
        text = found
    elif detail.get("analysed") is False:
        text = "not analysed" + (f": {detail['route']}" if detail.get("route") else "")
    else:
        text = "no findings"
    models = _models(detail)
    if models:
        text += f" by {models}"
    if detail.get("device"):
        text += f" on {detail['device']}"
    failures = detail.get("failures") or []
    if failures:
        text += f"; {plural(len(failures), 'failure')}: {failures[0]}"
    return text


def _inference_failed(detail: Mapping[str, Any]) -> str:
    failures = detail.get("failures") or []
    text = f"failed: {failures[0]}" if failures else "failed"
    if detail.get("attempts"):
        text += f" (after {plural(int(detail['attempts']), 'attempt')})"
    return text


def _instances_received(detail: Mapping[str, Any]) -> str:
    instances = detail.get("instances") or []
    n = len(instances) if isinstance(instances, list) else int(instances)
    text = plural(n, "instance")
    if detail.get("found_by_recovery"):
        return text + " found in storage (recovery)"
    if detail.get("calling_ae"):
        text += f" from {detail['calling_ae']}"
        if detail.get("peer"):
            text += f" ({detail['peer']})"
    elif detail.get("peer"):
        text += f" from {detail['peer']}"
    return text


def _instance_conflict(detail: Mapping[str, Any]) -> str:
    sender = detail.get("calling_ae") or detail.get("peer") or "?"
    sop = _short_uid(detail.get("sop_instance_uid", "?"))
    return f"{sop} re-sent by {sender} with other content, set aside: {differences_text(detail.get('differences') or {})}"


def _series_complete(detail: Mapping[str, Any]) -> str:
    text = f"{detail.get('modality') or ''} series {_short_uid(detail.get('series_uid', '?'))}".strip()
    return f"{text}: {plural(int(detail.get('instances', 0)), 'instance')}"


def _rank_changed(detail: Mapping[str, Any]) -> str:
    text = f"{detail.get('from') or 'none'} -> {detail.get('to')}"
    if detail.get("score") is not None:
        text += f" (score {float(detail['score']):.1f})"
    reasons = detail.get("reasons") or []
    if reasons:
        text += f": {reasons[0]}"
    return text


def _claim(detail: Mapping[str, Any], zone: tzinfo = UTC) -> str:
    text = f"{detail.get('from')} -> {detail.get('to')}"
    if detail.get("expires"):
        text += f", until {shown(datetime.fromisoformat(str(detail['expires'])), zone)}"
    if detail.get("renewed"):
        text += " (renewed)"
    if detail.get("lapsed_claim_of"):
        text += f" (took over from {detail['lapsed_claim_of']})"
    return text


def _release(detail: Mapping[str, Any]) -> str:
    text = f"{detail.get('from')} -> {detail.get('to')}"
    if detail.get("lapsed_claim_of"):
        text += f" (claim of {detail['lapsed_claim_of']})"
    return text


def _view(detail: Mapping[str, Any]) -> str:
    if detail.get("ai_hidden"):
        return "opened, AI output hidden"
    return f"opened, {plural(len(detail.get('findings_shown') or []), 'finding')} shown"


def _impression(detail: Mapping[str, Any]) -> str:
    kinds = detail.get("kinds") or []
    return "present: " + ", ".join(kinds) if kinds else "no finding called present"


def _feedback(detail: Mapping[str, Any]) -> str:
    text = f"{detail.get('verdict')} {detail.get('kind') or ''}".strip()
    if detail.get("finding_id") is not None:
        text += f" (finding {detail['finding_id']})"
    return text


def _draft(detail: Mapping[str, Any]) -> str:
    text = f"version {detail.get('version')}"
    if detail.get("chars") is not None:
        text += f", {detail['chars']} chars"
    return text


def _sign(detail: Mapping[str, Any]) -> str:
    return f"version {detail.get('version')}"


def _amend(detail: Mapping[str, Any]) -> str:
    return f"version {detail.get('version')} amends version {detail.get('amends_version')}"


_SUMMARIES = {
    "inference": _inference,
    "inference_failed": _inference_failed,
    "instances_received": _instances_received,
    "instance_conflict": _instance_conflict,
    "series_complete": _series_complete,
    "rank_changed": _rank_changed,
    "claim": _claim,
    "release": _release,
    "view": _view,
    "impression": _impression,
    "feedback": _feedback,
    "draft": _draft,
    "sign": _sign,
    "amend": _amend,
}


def summarize_event(action: str, detail: Mapping[str, Any] | None, max_chars: int = SUMMARY_MAX_CHARS, zone: tzinfo = UTC) -> str:
    """A one-line summary of an audit event's detail for the history table.

    Parameters
    ----------
    action
        The event's action (a ``triage.store.audit.Action`` value).
    detail
        The event's parsed detail.
    max_chars
        The summary is cut to this many characters.
    zone
        The site's zone, for the times a summary shows (a claim's expiry).

    Returns
    -------
    str
        For example ``"bleed 0.93 urgent by bleed-ct 1.0.0 on cpu"`` (inference),
        ``"version 1"`` (sign), ``"24 instances from PACS1 (10.0.0.5)"``
        (instances received); other actions show their first key=value pairs.
        A detail that does not have the expected shape falls back to that
        generic form: the history view must show every event, never fail.
    """
    if not detail:
        return ""
    if not isinstance(detail, Mapping):
        return truncate(str(detail), max_chars)
    summarize = _SUMMARIES.get(str(action))
    text = ""
    if summarize is not None:
        try:
            text = _claim(detail, zone) if summarize is _claim else summarize(detail)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            log.debug("audit detail of %s not in the expected shape; shown generically", action)
    return truncate(text or _generic_summary(detail), max_chars)


_KEY_NAMES = {
    "question_mark": "?",
    "escape": "esc",
    "full_stop": ".",
    "comma": ",",
    "slash": "/",
    "plus": "+",
    "minus": "-",
    "space": "space",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "greater_than_sign": ">",
    "less_than_sign": "<",
}


def format_key(key: str) -> str:
    """A binding's key as the reader types it: ``question_mark`` -> ``?``, ``j,down`` -> ``j / down``."""

    def one(k: str) -> str:
        mods, _, base = k.strip().rpartition("+")
        shown = _KEY_NAMES.get(base, base)
        return f"{mods}+{shown}" if mods else shown

    return " / ".join(one(k) for k in key.split(",") if k.strip())


def group_bindings(bindings: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Bindings grouped by where they apply, groups in order of first appearance, exact repeats dropped."""
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for where, key, description in bindings:
        row = (where, key, description)
        rows = groups.setdefault(where, [])
        if row not in rows:
            rows.append(row)
    return [row for rows in groups.values() for row in rows]


__all__ = ["SUMMARY_MAX_CHARS", "format_key", "format_person_name", "format_time", "group_bindings", "summarize_event", "truncate"]
