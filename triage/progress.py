"""A progress bar on stderr for long CLI operations (rich), silent when asked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TaskProgressColumn, TimeRemainingColumn


@contextmanager
def progress_bar(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable, safe to call from several threads."""
    if not enabled:
        yield lambda: None
        return
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


@contextmanager
def stage_progress(prefix: str = "", enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``update(stage, done, total)``: one bar per stage, added when the stage first reports.

    For work that announces its own stages and totals as it goes (training:
    phantoms, training steps, validation).
    """
    if not enabled:
        yield lambda _stage, _done, _total: None
        return
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{prefix}{stage}", total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield update
