"""``triage db upgrade`` and ``triage db current``: the study index's schema revision.

Every other command and ``triage serve`` refuse an index that is not at the
revision this version needs (:mod:`triage.store.migrations`); ``upgrade``
migrates it in place, in one transaction (on PostgreSQL under the same advisory
lock a starting server takes), keeping every row: studies, reports, the audit
trail.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine, make_url

from triage.config import Settings
from triage.errors import TriageError
from triage.store import migrations
from triage.store.db import make_engine


def _existing_engine(settings: Settings) -> tuple[Engine, str]:
    # create=False: the point is to open an index that make_engine's check refuses.
    if not settings.db and not (settings.data_dir / "triage.db").exists():
        raise TriageError(f"no study index in {settings.data_dir} (has `triage serve` run with this --data-dir?)")
    return make_engine(settings.db_url, create=False), make_url(settings.db_url).render_as_string(hide_password=True)


def _cmd_upgrade(args: argparse.Namespace, settings_of: Callable[[argparse.Namespace], Settings]) -> int:
    engine, shown = _existing_engine(settings_of(args))
    try:
        before, after = migrations.upgrade(engine, shown)
    finally:
        engine.dispose()
    if before == after:
        print(f"the study index at {shown} is already at schema revision {after}")
    else:
        print(f"upgraded the study index at {shown} from schema revision {before or 'none (made before schema migrations)'} to {after}")
    return 0


def _cmd_current(args: argparse.Namespace, settings_of: Callable[[argparse.Namespace], Settings]) -> int:
    engine, shown = _existing_engine(settings_of(args))
    try:
        revision = migrations.current(engine)
    finally:
        engine.dispose()
    head = migrations.head_revision()
    state = "up to date" if revision == head else "run `triage db upgrade`"
    print(f"{revision or 'none'} (this version needs {head}: {state})")
    return 0


def add_parser(
    sub: Any, add_common: Callable[[argparse.ArgumentParser], None], settings_of: Callable[[argparse.Namespace], Settings]
) -> None:
    """Add ``db`` to the CLI; ``add_common`` adds the data-dir/db/config flags, ``settings_of`` reads them."""
    db = sub.add_parser("db", help="the study index's schema: upgrade it in place after installing a new version, show its revision")
    dsub = db.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    p = dsub.add_parser("upgrade", help="migrate the index to this version's schema, in place (back it up and stop triage first)")
    add_common(p)
    p.set_defaults(func=lambda args: _cmd_upgrade(args, settings_of))
    p = dsub.add_parser("current", help="print the index's schema revision and the one this version needs")
    add_common(p)
    p.set_defaults(func=lambda args: _cmd_current(args, settings_of))
