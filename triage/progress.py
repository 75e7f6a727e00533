"""A progress bar on stderr for long CLI operations (rich), silent when asked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TimeRemainingColumn


@contextmanager
def progress_bar(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable, safe to call from several threads."""
    if not enabled:
        yield lambda: None
        return
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)
