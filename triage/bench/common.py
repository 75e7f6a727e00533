"""What the benches share: a free loopback port, the machine in words, the load
before a run, and ratios as text. (Cores: :func:`triage.config.available_cores`.)"""

from __future__ import annotations

import os
import platform
import socket

HOST = "127.0.0.1"


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
