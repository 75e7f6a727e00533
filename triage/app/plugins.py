"""What triage finds at run time instead of importing: the terminal worklist.

Dependencies point one way (``tui -> triage``): triage never imports the tui
package. The tui registers itself through entry points in ``pyproject.toml``,
and the commands that need it look it up here:

- ``triage.reading.service``, name ``terminal``: ``run_worklist(settings, user)``,
  what ``triage worklist`` and ``triage demo`` open;
- ``triage.bench``: ``add_command(subparsers)``, benches of the layers above
  triage (``triage bench tui``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from triage.errors import TriageError

if TYPE_CHECKING:
    from triage.config import Settings

WORKLIST_GROUP = "triage.worklist"
BENCH_GROUP = "triage.bench"

WorklistRunner = Callable[["Settings", "str | None"], None]


def worklist_runner() -> WorklistRunner:
    """The installed terminal worklist; :class:`TriageError` when none is installed."""
    found = entry_points(group=WORKLIST_GROUP, name="terminal")
    if not found:
        raise TriageError(
            f"no terminal worklist is installed (entry point {WORKLIST_GROUP}:terminal); reinstall the package: pip install -e ."
        )
    runner: WorklistRunner = next(iter(found)).load()
    return runner


def add_bench_commands(subparsers: Any) -> None:
    """Let installed packages add their ``triage bench`` sub-commands."""
    for entry in sorted(entry_points(group=BENCH_GROUP), key=lambda e: e.name):
        add: Callable[[argparse._SubParsersAction], None] = entry.load()
        add(subparsers)
