"""What the benches share: their failure, a free loopback port, the machine in words,
the load before a run, the disk they need, a quiet pynetdicom while a server starts,
and ratios. (Cores: :func:`triage.config.available_cores`.)"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from triage.errors import TriageError

HOST = "127.0.0.1"


class BenchFailure(TriageError):
    """A server failed, or a study or instance was lost, handled twice or not ranked as expected:
    the run's figures are incomplete."""


def free_port(host: str = HOST) -> int:
    """A port nobody listens on now (bound to 0, then released for the server to take)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def machine() -> str:
    """The operating system and Python, for a report's header."""
    return f"{platform.system()} {platform.release()} {platform.machine()}, Python {platform.python_version()}"


def load_average() -> float:
    """The 1-minute load average (other work on the CPUs makes figures noisy); 0 where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def times(value: float | None) -> str:
    """A ratio as shown in reports: ``1.83x``, or ``-`` when it was not measured."""
    return "-" if value is None else f"{value:.2f}x"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either was not measured (or ``b`` is 0)."""
    return a / b if a is not None and b else None


def check_space(root: Path, needed: int, lower: str) -> None:
    """Refuse to start a bench that would fill the disk; ``lower`` names the options that shrink it."""
    free = shutil.disk_usage(root).free
    if free < needed:
        raise TriageError(
            f"the bench needs about {needed / 2**30:.1f} GiB in {root.parent}, only {free / 2**30:.1f} GiB free (lower {lower})"
        )


@contextmanager
def quiet_pynetdicom() -> Iterator[None]:
    """pynetdicom's log muted while a server starts: "connection refused" until it listens is expected."""
    log = logging.getLogger("pynetdicom")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
