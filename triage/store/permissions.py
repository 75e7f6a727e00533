"""Who may read the data directory: the server's account and the readers' group, nobody else.

Instances and the index hold patient data. New folders are made rwxr-x---
(setgid when a readers' group is configured, so that everything made inside
gets that group) and files rw-r----- (:mod:`dicom_io.store` makes the instance
files). The SQLite index is rw-rw---- when a readers' group is configured,
because readers record their claims and reports in it; rw-r----- otherwise.
Folders and files that already exist are never changed: a warning names them
and the command that would fix them.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from dicom_io.store import DIR_MODE, SETGID
from triage.errors import ConfigError

log = logging.getLogger(__name__)

INDEX_MODE = 0o640
INDEX_MODE_SHARED = 0o660  # with a readers' group: readers write claims, impressions and reports


def group_id(name: str) -> int | None:
    """The id of the readers' group ``name`` (``storage.group``); None when not set.

    Raises
    ------
    ConfigError
        If there is no such group.
    """
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"config: storage.group: no group named {name!r} on this host") from None


def _too_open(path: Path, allowed: int) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & ~allowed & 0o777)


def prepare_data_dir(data_dir: Path, db_url: str, group: int | None) -> None:
    """Make the data directory (and the SQLite index file) with private modes, or warn about existing open ones."""
    if data_dir.exists():
        if _too_open(data_dir, DIR_MODE):
            log.warning(
                "data directory %s is open to other local users (mode %04o); it holds patient data: chmod o-rwx it",
                data_dir,
                stat.S_IMODE(data_dir.stat().st_mode),
            )
    else:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            data_dir.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        else:
            if group is not None:
                os.chown(data_dir, -1, group)
            os.chmod(data_dir, DIR_MODE | (SETGID if group is not None else 0))
    _prepare_sqlite_index(db_url, group)


def _prepare_sqlite_index(db_url: str, group: int | None) -> None:
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database)
    mode = INDEX_MODE_SHARED if group is not None else INDEX_MODE
    if path.exists():
        if _too_open(path, INDEX_MODE_SHARED):
            log.warning(
                "study index %s is readable by other local users (mode %04o); it holds patient data: chmod o-rwx it",
                path,
                stat.S_IMODE(path.stat().st_mode),
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Made empty here with its mode, before SQLite opens it: SQLite gives its -wal and -shm files the same mode.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
