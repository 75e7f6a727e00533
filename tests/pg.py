"""A real PostgreSQL server for the tests (Debian's binaries, on loopback).

One :class:`~triage.bench.pgcluster.PostgresCluster` per test session
(``postgres_cluster``), and a fresh empty database per test (``postgres_url``),
so that tests never see each other's rows. Without the binaries the tests
skip, except under ``$CI`` where they fail: CI installs them with
``scripts/install-test-deps``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from triage.bench.pgcluster import PostgresCluster, PostgresClusterError, find_bin_dir

_database_numbers = itertools.count(1)


def require_postgres() -> None:
    """Skip (fail under ``$CI``) when PostgreSQL's server binaries are not installed."""
    try:
        find_bin_dir()
    except PostgresClusterError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL server for the session, stopped at its end."""
    require_postgres()
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """SQLAlchemy URL of a new, empty database (``t_<n>``) on the session's server."""
    return postgres_cluster.create_database(f"t_{next(_database_numbers)}")
