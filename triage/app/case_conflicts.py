"""``triage case conflicts STUDY``: the versions set aside for one study.

A version is set aside when a sender re-sends one of the study's SOP Instance
UIDs with other content (``triage.store.conflicts``): the first version stays
indexed and scored; the later one is kept under ``conflicts/`` in the data
directory for someone to reconcile with the sender.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, tzinfo
from typing import Any

from triage.clock import shown
from triage.store.conflicts import FIELD_LABELS, SetAside, set_aside_versions


def format_conflicts(study_uid: str, versions: Sequence[SetAside], zone: tzinfo = UTC) -> str:
    """Plain text: one block per version set aside, its differing fields under it; times on ``zone``'s clock."""
    if not versions:
        return f"study {study_uid}: no versions set aside"
    lines = [f"study {study_uid}: {len(versions)} version{'s' if len(versions) != 1 else ''} set aside (the indexed version is kept)"]
    for v in versions:
        lines.append(
            f"  {v.sop_instance_uid}  received {shown(v.received_at, zone, date=True, seconds=True)}  from {v.sender}  "
            f"sha256 {v.sha256[:12]} (kept {v.kept_sha256[:12]})"
        )
        lines.append(f"    kept aside at {v.path}")
        if not v.differences:
            lines.append("    identifying fields: the same (other content: pixels or other attributes)")
        for name, (kept, aside) in v.differences.items():
            lines.append(f"    {FIELD_LABELS.get(name, name)}: kept {kept or '(none)'}, set aside {aside or '(none)'}")
    return "\n".join(lines)


def print_conflicts(engine: Any, study_uid: str, as_json: bool, zone: tzinfo = UTC) -> int:
    """Print the study's set-aside versions as text (times on ``zone``'s clock) or one JSON document (UTC); returns the exit code."""
    versions = set_aside_versions(engine, study_uid)
    if as_json:
        doc = {"study_uid": study_uid, "conflicts": [v.as_json() for v in versions]}
        print(json.dumps(doc, ensure_ascii=False, sort_keys=True, indent=2))
    else:
        print(format_conflicts(study_uid, versions, zone))
    return 0
