"""Shared fixtures: settings on a temporary data directory, a running server on
a free loopback port, synthetic CT series and pydicom's bundled test files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_io.writer import StudyMeta, ct_datasets, simple_head_volume, write_datasets
from tests.pg import postgres_cluster, postgres_url  # noqa: F401  (fixtures: a real PostgreSQL server)
from triage.app.server import TriageServer
from triage.config import Settings, load_settings
from triage.store.audit_key import set_key_file


@pytest.fixture(autouse=True, scope="session")
def _config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user config dir (where the audit key file is created) in a temporary dir, never the real home,
    and the host's zone UTC (tests of other zones set ``site.timezone``).

    Set in the environment, so that `triage` subprocesses find the same key.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
        # Nor the host's /etc/triage/triage.toml (in this process; tests of the lookup set their own).
        mp.setattr("triage.config.SYSTEM_CONFIG_FILE", tmp_path_factory.mktemp("etc-triage") / "triage.toml")
        # [site] timezone defaults to the host's zone ($TZ first): times shown read the same on every machine.
        mp.setenv("TZ", "UTC")
        yield


@pytest.fixture(autouse=True)
def _default_audit_key_file() -> Iterator[None]:
    """Each test starts with the process's audit key file at its default: a CLI run (``main([...])``)
    sets it from its settings, and a later test's rows must not be written with that test's key."""
    set_key_file(None)
    yield
    set_key_file(None)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on ``tmp_path/data``, listening on a free loopback port."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "listener.host": "127.0.0.1",
            "listener.port": 0,
            "listener.min_free_mb": 0,
            "listener.shutdown_grace": 1.0,
            "listener.processes": 1,
            # Ingest tests need no detectors; pipeline tests turn scoring on.
            "pipeline.enabled": False,
        }
        base.update(overrides)
        return load_settings(overrides=base, environ={})

    return make


@pytest.fixture
def make_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TriageServer]]:
    """Start a TriageServer (stopped at teardown)."""
    started: list[TriageServer] = []

    def make(**overrides: Any) -> TriageServer:
        server = TriageServer(make_settings(**overrides))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., TriageServer]) -> TriageServer:
    return make_server()


@pytest.fixture
def make_ct_series(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write a synthetic CT series; returns its file paths."""
    counter = iter(range(10_000))

    def make(slices: int = 8, size: int = 64, meta: StudyMeta | None = None, **kwargs: Any) -> list[Path]:
        out = tmp_path / f"series{next(counter)}"
        volume = simple_head_volume(slices, size, seed=slices)
        return write_datasets(ct_datasets(volume, meta=meta or StudyMeta(), **kwargs), out)

    return make
