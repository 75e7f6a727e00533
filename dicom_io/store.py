"""The durable instance store: received bytes, as received, on disk.

Layout: ``<root>/studies/<study uid>/<series uid>/<sop uid>.dcm``. A file is
written to a temporary name, fsynced, then linked to its final name
(``os.link`` never overwrites, so two writers of one UID cannot clobber each
other, even from two processes on one shared volume), and the directory is
fsynced. Only then is the file durable, and only then may the caller
acknowledge it.

An instance arriving over the network is written as its fragments arrive, to a
:class:`Spool` in ``<root>/incoming`` (the same volume, so that it can be linked
into place): a large instance never sits in memory, and its size is capped.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_io.errors import StorageError
from dicom_io.uids import check_uid

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
INSTANCE_SUFFIX = ".dcm"
INCOMING = "incoming"  # spools of instances being received
# Patient data is not for every local user: folders rwxr-x---, files rw-r----- (the group: the readers').
DIR_MODE = 0o750
FILE_MODE = 0o640
SETGID = 0o2000  # on a folder: what is made in it gets the folder's group
QUARANTINE = "quarantine"  # files found in the store that cannot be read (crash recovery puts them here)


class OutOfSpaceError(StorageError):
    """The data volume is (nearly) full."""


class InstanceTooLargeError(StorageError):
    """An instance is larger than the configured maximum."""


class Spool:
    """One instance being received: a temporary file, hashed as it is written.

    Made by :meth:`InstanceStore.open_spool`; :meth:`InstanceStore.adopt` links
    it into place; :meth:`discard` removes it (always safe to call).
    """

    def __init__(self, path: Path, fd: int, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes  # 0: no limit
        self.size = 0
        self.dataset_offset = 0  # where the dataset starts, after preamble and file meta
        self._fd: int | None = fd
        self._hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``.

        Raises
        ------
        InstanceTooLargeError
            The instance would exceed ``max_bytes`` (nothing more is written).
        OutOfSpaceError, StorageError
            The disk filled up, or another OS error.
        """
        if self._fd is None:
            raise StorageError(f"spool {self.path.name} is closed")
        if self.max_bytes and self.size + len(data) > self.max_bytes:
            raise InstanceTooLargeError(f"instance larger than the maximum of {self.max_bytes // 2**20} MiB")
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError("disk full while receiving an instance") from None
            raise StorageError(f"cannot write {self.path.name}: {exc.strerror or exc}") from None
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def sync(self) -> None:
        """Make the bytes durable (before the file is linked into place)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise StorageError(f"cannot sync {self.path.name}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        self.close()
        _unlink_quietly(self.path)


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
    group
        The readers' group id: folders and files get it (folders setgid, so
        that what another process makes in them gets it too); None keeps the
        process's own group.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0, *, group: int | None = None) -> None:
        self.root = Path(root)
        self.studies = self.root / "studies"
        self.conflicts = self.root / "conflicts"
        self.min_free_bytes = min_free_bytes
        self.group = group

    def _own_dir(self, path: Path) -> None:
        """Give a folder we made its mode and group (mkdir's mode is cut by the umask; chmod is exact)."""
        if self.group is not None:
            os.chown(path, -1, self.group)
        os.chmod(path, DIR_MODE | (SETGID if self.group is not None else 0))

    def _own_file(self, fd: int) -> None:
        if self.group is not None:
            os.fchown(fd, -1, self.group)
        os.fchmod(fd, FILE_MODE)

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
                d.mkdir(mode=DIR_MODE)
            except FileExistsError:
                continue  # another writer made it; it fsyncs its parent
            self._own_dir(d)
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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                self._own_file(fd)
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

    def remove_files(self, relpaths: Iterable[str]) -> tuple[int, int]:
        """Delete stored files (retention), then the folders they leave empty; returns ``(files, bytes)`` removed.

        Only the files named go: a file that arrived meanwhile in one of the
        folders (not yet indexed, so not named) stays, and so does its folder.
        Each touched folder is fsynced, so that a removal is durable once this
        returns. Files already gone are skipped (a purge finished twice).

        Raises
        ------
        StorageError
            A path outside ``studies/`` or ``conflicts/``, or an OS error other than "not there".
        """
        files = size = 0
        touched: set[Path] = set()
        for relpath in relpaths:
            parts = Path(relpath).parts
            if len(parts) < 2 or parts[0] not in (self.studies.name, self.conflicts.name) or ".." in parts:
                raise StorageError(f"refusing to remove {relpath!r}: not an instance path of the store")
            path = self.root / relpath
            try:
                length = path.stat().st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot remove {relpath}: {exc.strerror or exc}") from None
            files, size = files + 1, size + length
            touched.add(path.parent)
        # Deepest first, so that a series folder goes before its study folder.
        for folder in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            try:
                fsync_dir(folder)
            except FileNotFoundError:
                continue
            base = self.studies if folder.is_relative_to(self.studies) else self.conflicts
            while folder != base and folder.is_relative_to(base):
                try:
                    folder.rmdir()
                except OSError:  # not empty (a newer file, a sibling series), or gone
                    break
                fsync_dir(folder.parent)
                folder = folder.parent
        return files, size

    def open_spool(self, max_bytes: int = 0) -> Spool:
        """A new spool in ``<root>/incoming`` for an instance being received.

        Raises
        ------
        OutOfSpaceError
            Below the free-space reserve.
        StorageError
            The folder cannot be made or written.
        """
        self._check_space(0)
        incoming = self.root / INCOMING
        path = incoming / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            self._make_dirs(incoming)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                self._own_file(fd)
            except OSError:
                os.close(fd)
                _unlink_quietly(path)
                raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError("disk full: cannot receive an instance") from None
            raise StorageError(f"cannot receive an instance in {incoming}: {exc.strerror or exc}") from None
        return Spool(path, fd, max_bytes)

    def spool_bytes(self, payload: bytes, max_bytes: int = 0) -> Spool:
        """A spool holding ``payload`` (instances that arrive whole: tests, tools)."""
        spool = self.open_spool(max_bytes)
        try:
            spool.write(payload)
        except BaseException:
            spool.discard()
            raise
        return spool

    def adopt(self, spool: Spool, relpath: str, *, sync_dir: bool = True) -> WriteResult:
        """Link a spool's file durably at ``relpath`` unless a file is already there.

        Same guarantees as :meth:`write`; with ``sync_dir=False`` the caller
        fsyncs the folder. The spool is removed once linked, or on an error;
        when a file was already there (``created`` False) it is left to the
        caller, to keep aside or discard.
        """
        final = self.root / relpath
        if final.exists():
            return WriteResult(final, relpath, created=False)
        try:
            self._check_space(spool.size)
            spool.sync()
            self._make_dirs(final.parent)
            try:
                os.link(spool.path, final)
            except FileExistsError:
                return WriteResult(final, relpath, created=False)
            spool.discard()
            if sync_dir:
                fsync_dir(final.parent)
            return WriteResult(final, relpath, created=True)
        except OSError as exc:
            spool.discard()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfSpaceError(f"disk full writing {relpath}") from None
            raise StorageError(f"cannot write {relpath}: {exc.strerror or exc}") from None
        except StorageError:
            spool.discard()
            raise

    def keep_conflict(self, sop_uid: str, sha256: str, spool: Spool) -> str:
        """Keep an instance that reused an existing SOP Instance UID with other bytes,
        at ``conflicts/<sop>/<sha256>.dcm``, so nothing received is lost; returns its relative path."""
        check_uid(sop_uid, "SOP Instance UID")
        relpath = f"conflicts/{sop_uid}/{sha256}{INSTANCE_SUFFIX}"
        self.adopt(spool, relpath)
        spool.discard()  # already kept (the same bytes set aside before)
        return relpath

    def quarantine(self, relpath: str) -> str:
        """Move an unreadable file out of the store, to ``quarantine/<relpath>``; returns the new relative path."""
        target = f"{QUARANTINE}/{relpath}"
        source, dest = self.root / relpath, self.root / target
        try:
            self._make_dirs(dest.parent)
            os.replace(source, dest)
            fsync_dir(source.parent)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise StorageError(f"cannot quarantine {relpath}: {exc.strerror or exc}") from None
        return target

    def clean_temp_files(self, older_than_s: float = 0.0) -> int:
        """Remove temporary files left by a crash; returns how many.

        ``older_than_s`` spares younger ones: on storage shared by several
        listeners (scale-out), a temporary file may be another listener's
        store in progress.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        for base in (self.studies, self.conflicts, self.root / INCOMING):
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
