"""The end-to-end tests' fixture: ``triage serve`` subprocesses, stopped and checked at teardown.

The helpers (ports, waiting, binaries, reading back what a server stored) are in
:mod:`tests.e2e.support`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import ServeFactory


@pytest.fixture
def triage_serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """A factory of ``triage serve`` subprocesses, each stopped with SIGTERM at
    teardown and required to exit 0 (unless the test killed it on purpose)."""
    factory = ServeFactory(tmp_path)
    yield factory
    problems = factory.stop_all()
    if problems:
        pytest.fail("\n\n".join(problems))
