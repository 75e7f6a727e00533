"""The audit chain's HMAC key: a file outside the database.

The key is 32 random bytes, stored as 64 hex digits and a newline in
``[audit] key_file`` (default ``<user config dir>/audit.key``). It is created
on first use, mode 0600, written to a temporary file and linked into place
(``O_EXCL`` on both), so that two processes starting together end with one
key and no reader ever sees half a key.

Like ssh with a private key, a key file that other users can read or write
(``mode & 0o007``) is refused. Group access is allowed on purpose: on a shared
reading workstation the readers' accounts are in one group, and each reader's
``triage worklist`` appends audit events, so each must be able to read the key.

Which key a process uses: the key bound to the engine (:func:`bind_key`, the
server does it at start), else the key file set for the process
(:func:`set_key_file`, the CLI does it from the settings), else the default
path. Keys are read once per path and kept.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from weakref import WeakKeyDictionary

import platformdirs
from sqlalchemy.engine import Engine

from triage.errors import TriageError

KEY_BYTES = 32


class AuditKeyError(TriageError):
    """The audit key file is missing, unsafe, unreadable or not this database's; the message names the file."""


@dataclass(frozen=True)
class AuditKey:
    """An HMAC key and where it came from.

    Attributes
    ----------
    secret
        The 32 key bytes (never logged or shown).
    path
        The key file.
    key_id
        First 16 hex digits of the SHA-256 of the key: recorded in the
        database's audit head, safe to show.
    """

    secret: bytes = field(repr=False)
    path: Path
    key_id: str

    @classmethod
    def from_secret(cls, secret: bytes, path: Path) -> AuditKey:
        return cls(secret=secret, path=path, key_id=hashlib.sha256(secret).hexdigest()[:16])


_bound: WeakKeyDictionary[Engine, AuditKey] = WeakKeyDictionary()
_key_file: Path | None = None
_loaded: dict[Path, AuditKey] = {}
_lock = threading.Lock()


def default_key_file() -> Path:
    """``<user config dir>/audit.key`` (``platformdirs.user_config_dir("triage")``)."""
    return Path(platformdirs.user_config_dir("triage")) / "audit.key"


def set_key_file(path: Path | None) -> None:
    """The key file of this process's engines that have no bound key (None: the default)."""
    global _key_file
    _key_file = path


def key_file() -> Path:
    """The key file used for an engine without a bound key."""
    return _key_file if _key_file is not None else default_key_file()


def bind_key(engine: Engine, key: AuditKey) -> None:
    """Use ``key`` for every append to and verify of ``engine``."""
    _bound[engine] = key


def bound_key(engine: Engine) -> AuditKey | None:
    return _bound.get(engine)


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise AuditKeyError(f"audit key file {path} is not a regular file")
    if st.st_mode & 0o007:
        raise AuditKeyError(
            f"audit key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}` (or 640 for a readers' group)"
        )


def read_key(path: Path) -> AuditKey | None:
    """The key in ``path``, or None if there is no such file.

    Raises
    ------
    AuditKeyError
        If the file is open to other users, unreadable, or not 64 hex digits.
    """
    path = Path(path)
    with _lock:
        cached = _loaded.get(path)
    if cached is not None:
        return cached
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key file {path}: {exc.strerror}") from None
    try:
        _check_mode(path, os.fstat(fd))  # the file opened, not a name that may change meanwhile
        data = os.read(fd, 4 * KEY_BYTES)
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES:
        raise AuditKeyError(f"audit key file {path} does not hold a key ({2 * KEY_BYTES} hex digits)")
    key = AuditKey.from_secret(secret, path)
    with _lock:
        return _loaded.setdefault(path, key)


def create_key(path: Path) -> AuditKey:
    """Create a new key file at ``path`` (mode 0600) unless one appears meanwhile; returns the key in the file.

    Raises
    ------
    AuditKeyError
        If the file cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (secrets.token_bytes(KEY_BYTES).hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if it exists: never replaces a key
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditKeyError(f"cannot create audit key file {path}: {exc.strerror or exc}") from None
    key = read_key(path)
    if key is None:
        raise AuditKeyError(f"audit key file {path} vanished as it was created")
    return key


def key_for(engine: Engine) -> tuple[AuditKey | None, Path]:
    """The key for ``engine`` (None if its file does not exist yet) and the file it comes from.

    Raises
    ------
    AuditKeyError
        If the key file exists but is unsafe or unreadable.
    """
    key = _bound.get(engine)
    if key is not None:
        return key, key.path
    path = key_file()
    return read_key(path), path


def forget_loaded_keys() -> None:
    """Drop the keys read so far (tests that replace a key file in place)."""
    with _lock:
        _loaded.clear()


__all__ = [
    "KEY_BYTES",
    "AuditKey",
    "AuditKeyError",
    "bind_key",
    "bound_key",
    "create_key",
    "default_key_file",
    "forget_loaded_keys",
    "key_file",
    "key_for",
    "read_key",
    "set_key_file",
]
