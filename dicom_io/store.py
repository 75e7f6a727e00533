"""The durable instance store: received bytes, as received, on disk.

Layout: ``<root>/studies/<study uid>/<series uid>/<sop uid>.dcm``. A file is
written to a temporary name in its series directory, fsynced, then linked to
its final name (``os.link`` never overwrites, so two writers of one UID cannot
clobber each other, even from two processes on one shared volume), and the
directory is fsynced. Only then is the file durable, and only then may the
caller acknowledge it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_io.errors import StorageError
from dicom_io.uids import check_uid

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
INSTANCE_SUFFIX = ".dcm"


class OutOfSpaceError(StorageError):
    """The data volume is (nearly) full."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class WriteResult:
    path: Path  # absolute
    relpath: str  # relative to the store root, as indexed
    created: bool  # False: a file with this UID was already there (left untouched)


class InstanceStore:
    """Files of received instances under ``root``.

    Parameters
    ----------
    root
        The data directory; instances go under ``root/studies``.
    min_free_bytes
        Writes are refused with :class:`OutOfSpaceError` when the volume has
        less free space than this, so the index and the OS keep room to work.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.studies = self.root / "studies"
        self.conflicts = self.root / "conflicts"
        self.min_free_bytes = min_free_bytes

    def relpath_for(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The indexed relative path; every UID is validated first (PS3.5 9.1)."""
        check_uid(study_uid, "Study Instance UID")
        check_uid(series_uid, "Series Instance UID")
        check_uid(sop_uid, "SOP Instance UID")
        return f"studies/{study_uid}/{series_uid}/{sop_uid}{INSTANCE_SUFFIX}"

    def _check_space(self, needed: int) -> None:
        if not self.min_free_bytes:
            return
        probe = self.studies if self.studies.exists() else self.root
        free = shutil.disk_usage(probe).free
        if free - needed < self.min_free_bytes:
            raise OutOfSpaceError(f"data volume has {free // 2**20} MiB free, below the {self.min_free_bytes // 2**20} MiB reserve")

    def _make_dirs(self, directory: Path) -> None:
        """mkdir -p, fsyncing each parent whose entry we created (a new directory
        is only durable once its parent's entry is)."""
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # another writer made it; it fsyncs its parent
            fsync_dir(d.parent)

    def write(self, relpath: str, payload: bytes, *, sync_dir: bool = True) -> WriteResult:
        """Write ``payload`` durably at ``relpath`` unless a file is already there.

        With ``sync_dir=False`` the file's data is durable but its directory
        entry is not until the caller fsyncs the folder (the index writer does
        that once per folder for a whole group commit).

        Raises
        ------
        OutOfSpaceError
            Below the free-space reserve, or the disk filled up while writing.
        StorageError
            Any other OS error; no partial file is left behind.
        """
        final = self.root / relpath
        if final.exists():
            return WriteResult(final, relpath, created=False)
        self._check_space(len(payload))
        tmp = final.parent / f".{final.stem}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            self._make_dirs(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)
                created = True
            except FileExistsError:
                created = False
            os.unlink(tmp)
            if created and sync_dir:
                fsync_dir(final.parent)
            return WriteResult(final, relpath, created)
        except OSError as exc:
            _unlink_quietly(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError(f"disk full writing {relpath}") from None
            raise StorageError(f"cannot write {relpath}: {exc.strerror or exc}") from None

    def read(self, relpath: str) -> bytes:
        try:
            return (self.root / relpath).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {relpath}: {exc.strerror or exc}") from None

    def remove(self, relpath: str) -> None:
        """Undo a write whose indexing failed, so no unindexed file is left."""
        path = self.root / relpath
        _unlink_quietly(path)
        try:
            fsync_dir(path.parent)
        except OSError:
            pass

    def keep_conflict(self, sop_uid: str, sha256: str, payload: bytes) -> Path:
        """Keep a payload that reused an existing SOP Instance UID with other bytes,
        at ``conflicts/<sop>/<sha256>.dcm``, so nothing received is lost."""
        check_uid(sop_uid, "SOP Instance UID")
        relpath = f"conflicts/{sop_uid}/{sha256}{INSTANCE_SUFFIX}"
        return self.write(relpath, payload).path

    def clean_temp_files(self, older_than_s: float = 0.0) -> int:
        """Remove temporary files left by a crash; returns how many.

        ``older_than_s`` spares younger ones: on storage shared by several
        listeners (scale-out), a temporary file may be another listener's
        store in progress.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        for base in (self.studies, self.conflicts):
            if not base.exists():
                continue
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    if not name.endswith(TEMP_SUFFIX):
                        continue
                    path = Path(dirpath) / name
                    try:
                        if older_than_s and path.stat().st_mtime > cutoff:
                            continue
                    except FileNotFoundError:  # finished by its writer meanwhile
                        continue
                    _unlink_quietly(path)
                    removed += 1
        return removed

    def study_dirs(self) -> Iterator[Path]:
        if self.studies.exists():
            yield from (p for p in sorted(self.studies.iterdir()) if p.is_dir())

    def instance_relpaths(self, study_dir: Path) -> Iterator[str]:
        """Relative paths of the instance files under one study directory."""
        for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
            for f in sorted(series_dir.iterdir()):
                if f.name.endswith(INSTANCE_SUFFIX) and not f.name.startswith("."):
                    yield f.relative_to(self.root).as_posix()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
