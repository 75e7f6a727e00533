"""Who may read the data directory: the server's account and the readers' group, nobody else."""

from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path

import pytest

from tests.scu import store
from triage.errors import ConfigError
from triage.store.permissions import group_id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_data_directory_and_instances_are_private(make_server, make_ct_series) -> None:
    server = make_server()
    data = server.settings.data_dir
    assert store(server.port, make_ct_series(slices=1, size=16)) == [0]
    [instance] = (data / "studies").rglob("*.dcm")
    assert mode(data) == 0o750
    assert mode(data / "triage.db") == 0o640
    for folder in [data / "studies", instance.parent, instance.parent.parent]:
        assert mode(folder) == 0o750
    assert mode(instance) == 0o640


def test_readers_group_gets_folders_files_and_a_writable_index(make_server, make_ct_series) -> None:
    group = grp.getgrgid(os.getgid()).gr_name  # a group this process may give files to
    server = make_server(**{"storage.group": group})
    data = server.settings.data_dir
    assert store(server.port, make_ct_series(slices=1, size=16)) == [0]
    [instance] = (data / "studies").rglob("*.dcm")
    assert mode(data) == 0o2750  # setgid: what other processes make inside gets the group too
    assert mode(data / "triage.db") == 0o660  # readers record claims and reports in it
    assert mode(instance) == 0o640
    assert {p.stat().st_gid for p in (data, data / "triage.db", instance, instance.parent)} == {os.getgid()}


def test_an_existing_open_data_directory_is_left_alone_with_a_warning(make_server, tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    with caplog.at_level(logging.WARNING):
        make_server(data_dir=str(data))
    assert mode(data) == 0o755
    assert "open to other local users (mode 0755)" in caplog.text


def test_unknown_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"storage\.group: no group named 'no-such-group-here'"):
        group_id("no-such-group-here")
