"""The instance store and UID validation, on a real temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_io.headers import HeaderError, order_priority, read_header
from dicom_io.store import InstanceStore, OutOfSpaceError
from dicom_io.uids import is_valid_uid
from triage.errors import InvalidUIDError


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0.0", "2.25.123456789012345678901234567890"])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["", "1", "1..2", "1.2.", ".1.2", "1.02", "1.2/3", "../1.2", "1.2\\3", "1." + "9" * 63, None, 12])
def test_invalid_uids(uid: object) -> None:
    assert not is_valid_uid(uid)


def test_relpath_validates_every_uid(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    assert store.relpath_for("1.2", "1.2.3", "1.2.3.4") == "studies/1.2/1.2.3/1.2.3.4.dcm"
    with pytest.raises(InvalidUIDError, match="Series Instance UID"):
        store.relpath_for("1.2", "..", "1.2.3.4")


def test_write_never_overwrites(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    rel = store.relpath_for("1.2", "1.2.3", "1.2.3.4")
    first = store.write(rel, b"first")
    second = store.write(rel, b"second")
    assert (first.created, second.created) == (True, False)
    assert (tmp_path / rel).read_bytes() == b"first"
    assert [p.name for p in (tmp_path / rel).parent.iterdir()] == ["1.2.3.4.dcm"]  # no temp file left


def test_reserve_and_cleanup(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_bytes=1 << 60)
    with pytest.raises(OutOfSpaceError):
        store.write("studies/1.2/1.2.3/1.2.3.4.dcm", b"x")
    (tmp_path / "studies" / "1.2").mkdir(parents=True)
    (tmp_path / "studies" / "1.2" / ".x.tmp").write_bytes(b"")
    assert store.clean_temp_files() == 1


def test_read_header_refuses_garbage() -> None:
    with pytest.raises(HeaderError):
        read_header(b"\x00" * 128 + b"DICM" + b"garbage" * 10)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"RequestedProcedurePriority": "stat"}, "STAT"),
        ({(0x0032, 0x000C): ("CS", "MED")}, "MEDIUM"),
        ({"RequestedProcedurePriority": "whenever"}, None),
        ({}, None),
    ],
)
def test_order_priority(attrs: dict, expected: str | None) -> None:
    ds = Dataset()
    for key, value in attrs.items():
        if isinstance(key, tuple):
            ds.add_new(key, *value)
        else:
            setattr(ds, key, value)
    assert order_priority(ds) == expected


def test_temp_files_younger_than_the_age_are_spared(tmp_path) -> None:
    import os
    import time

    from dicom_io.store import TEMP_SUFFIX, InstanceStore

    store = InstanceStore(tmp_path)
    folder = tmp_path / "studies" / "1.2" / "1.2.3"
    folder.mkdir(parents=True)
    old, young = folder / f"a{TEMP_SUFFIX}", folder / f"b{TEMP_SUFFIX}"
    old.write_bytes(b"x")
    young.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.clean_temp_files(older_than_s=3600) == 1
    assert not old.exists() and young.exists()  # another listener's store in progress
    assert store.clean_temp_files() == 1 and not young.exists()
