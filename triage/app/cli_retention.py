"""``triage retention [--dry-run] [--json]``: what retention deletes now, and (without --dry-run) deleting it.

The rules are :mod:`triage.store.retention`'s: only signed studies whose every
result the configured destinations acknowledged, after ``[retention] days``
from the signature, or the oldest of them while the data volume is above
``high_water_percent``. The server runs the same pass every
``interval_s``; this command runs it on demand (and shows it first).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from dicom_io.store import InstanceStore
from triage.store.retention import Planned, Purged, Retention, age_days, used_percent


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_plan(planned: Sequence[Planned], now: Any) -> str:
    """One line per study: uid, signed at, age, files, bytes, why."""
    if not planned:
        return "nothing to delete"
    lines = [f"{'study':<40} {'signed at':<16} {'age':>7} {'files':>6} {'size':>11}  why"]
    for p in planned:
        c = p.candidate
        files = c.instances + c.conflict_files
        age = f"{age_days(c.signed_at, now):.1f}d"
        lines.append(f"{c.study_uid:<40} {c.signed_at:%Y-%m-%d %H:%M} {age:>7} {files:>6} {_mib(c.bytes):>11}  {p.reason.value}")
    total = sum(p.candidate.bytes for p in planned)
    lines.append(f"{len(planned)} {'study' if len(planned) == 1 else 'studies'}, {_mib(total)}")
    return "\n".join(lines)


def _purged_json(p: Purged, now: Any) -> dict[str, Any]:
    return p.planned.as_json(now) | {"audit_seq": p.audit_seq, "files_removed": p.files_removed, "bytes_removed": p.bytes_removed}


def _cmd_retention(args: argparse.Namespace, open_worklist: Callable[[argparse.Namespace], Any]) -> int:
    service = open_worklist(args)
    settings = service.settings
    retention = Retention(service.engine, InstanceStore(settings.data_dir), settings)
    now = retention.clock()
    used = used_percent(retention.disk_usage(settings.data_dir))
    if args.dry_run:
        planned = retention.plan(now)
        if args.json:
            doc = {"dry_run": True, "enabled": settings.retention.enabled, "volume_used_percent": round(used, 1)}
            print(json.dumps(doc | {"studies": [p.as_json(now) for p in planned]}, indent=2))
        else:
            off = "" if settings.retention.enabled else " (retention is off: [retention] enabled = false)"
            print(f"dry run{off}; data volume {used:.1f}% used")
            print(format_plan(planned, now))
        return 0
    purged = retention.run()
    after = used_percent(retention.disk_usage(settings.data_dir))
    if args.json:
        doc = {"dry_run": False, "volume_used_percent": round(after, 1), "studies": [_purged_json(p, now) for p in purged]}
        print(json.dumps(doc, indent=2))
    else:
        print(format_plan([p.planned for p in purged], now).replace("nothing to delete", "nothing deleted"))
        removed = sum(p.bytes_removed for p in purged)
        print(f"deleted {sum(p.files_removed for p in purged)} files ({_mib(removed)}); data volume {used:.1f}% -> {after:.1f}% used")
    return 0


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None], open_worklist: Callable[[argparse.Namespace], Any]) -> None:
    """Add ``retention`` to the CLI; ``add_common`` adds the data-dir/config flags."""
    p = sub.add_parser("retention", help="delete the stored pixels of signed, delivered studies past [retention] (list with --dry-run)")
    add_common(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted and why; delete nothing")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=lambda args: _cmd_retention(args, open_worklist))
