"""A throw-away PostgreSQL server for tests and benchmarks, from Debian's binaries.

``PostgresCluster`` runs ``initdb`` and ``pg_ctl`` from the newest
``/usr/lib/postgresql/<version>/bin`` in a fresh temporary directory, listening
on 127.0.0.1 on a free port (and on a unix socket in that directory), with
trust authentication for the ``postgres`` role and a database ``triage``.
``initdb`` refuses to run as root, so as root the server runs as Debian's
``postgres`` system user (``runuser -u postgres --``) in a directory it owns.

Durability is traded for speed (``fsync=off``): the data is thrown away with
the directory when the cluster stops. Not for production data.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from triage.bench.common import free_port
from triage.errors import TriageError

log = logging.getLogger(__name__)

DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"  # Debian's package creates it; the server runs as it when we are root
SUPERUSER = "postgres"  # the database role initdb creates (trust auth, no password)
DEFAULT_DATABASE = "triage"
_START_TIMEOUT_S = 60
_PORT_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind


class PostgresClusterError(TriageError):
    """The throw-away PostgreSQL server cannot be found, started or used; the message says why."""


def find_bin_dir(root: Path = DEBIAN_PG_ROOT) -> Path:
    """The ``bin`` folder of the newest PostgreSQL under ``root`` that has ``initdb``.

    Raises
    ------
    PostgresClusterError
        If there is none.
    """
    found: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for child in root.iterdir():
            if re.fullmatch(r"\d+(\.\d+)*", child.name) and (child / "bin" / "initdb").is_file():
                found.append((tuple(int(p) for p in child.name.split(".")), child / "bin"))
    if not found:
        raise PostgresClusterError(
            f"no PostgreSQL server binaries under {root}/*/bin: install Debian's postgresql package (scripts/install-test-deps)"
        )
    return max(found)[1]


class PostgresCluster:
    """A PostgreSQL server in a temporary directory, stopped and deleted by :meth:`stop`.

    Parameters
    ----------
    bin_dir
        PostgreSQL's ``bin`` folder; the newest under ``/usr/lib/postgresql`` by default.
    database
        The database created at start; :attr:`url` points to it.
    max_connections
        The server's connection limit (several ``triage serve`` processes each
        keep a pool).
    fsync
        Keep PostgreSQL's durability settings; off by default (a throw-away server).

    Examples
    --------
    >>> with PostgresCluster() as pg:  # doctest: +SKIP
    ...     engine = make_engine(pg.url)
    """

    def __init__(
        self, *, bin_dir: Path | None = None, database: str = DEFAULT_DATABASE, max_connections: int = 300, fsync: bool = False
    ) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
            raise PostgresClusterError(f"database name {database!r} must be a lower-case SQL identifier")
        self.bin_dir = bin_dir if bin_dir is not None else find_bin_dir()
        if not (self.bin_dir / "initdb").is_file():
            raise PostgresClusterError(f"no initdb in {self.bin_dir}: install Debian's postgresql package (scripts/install-test-deps)")
        self.database = database
        self.max_connections = max_connections
        self.fsync = fsync
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.root: Path | None = None
        self._finalizer: weakref.finalize | None = None

    # -- addresses -----------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy URL of :attr:`database`: ``postgresql+psycopg://postgres@127.0.0.1:PORT/triage``."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of another database on this server."""
        if self.port is None:
            raise PostgresClusterError("the PostgreSQL cluster is not started")
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def socket_dir(self) -> Path:
        if self.root is None:
            raise PostgresClusterError("the PostgreSQL cluster is not started")
        return self.root

    @property
    def log_path(self) -> Path | None:
        return self.root / "server.log" if self.root is not None else None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> PostgresCluster:
        """initdb, start the server, create :attr:`database`; returns self.

        Raises
        ------
        PostgresClusterError
            If a step fails; the message carries the tool's last output line.
        """
        if self.root is not None:
            return self
        self.root = Path(tempfile.mkdtemp(prefix="triage-pg-"))
        owner = self._owner()
        # The server's user must own its directory, and reach it: mkdtemp makes
        # it 0700 for us, in the world-traversable temp folder.
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        # From here on stop() cleans up, even if the interpreter exits without calling it.
        self._finalizer = weakref.finalize(self, _shutdown, self._as_user, self.bin_dir, self.root)
        try:
            self._run(["initdb", "-D", str(self._data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            self._start_server()
            self._create_database(self.database)
        except BaseException:
            self.stop()
            raise
        log.info("PostgreSQL %s on %s:%d (%s)", self.bin_dir.parent.name, self.host, self.port, self.root)
        return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and delete its directory; idempotent."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.root = None
        self.port = None

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` on this server; returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise PostgresClusterError(f"database name {name!r} must be a lower-case SQL identifier")
        self._create_database(name)
        return self.url_for(name)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------
    @property
    def _data(self) -> Path:
        return self.socket_dir / "data"

    @staticmethod
    def _owner() -> pwd.struct_passwd | None:
        """The system user the server runs as: ``postgres`` when we are root, else None (ourselves)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresClusterError(
                f"running as root and there is no {SYSTEM_USER!r} user to run PostgreSQL as "
                "(initdb refuses root): install Debian's postgresql package (scripts/install-test-deps)"
            ) from None

    @property
    def _as_user(self) -> list[str]:
        return ["runuser", "-u", SYSTEM_USER, "--"] if self._owner() is not None else []

    def _run(self, argv: Sequence[str], timeout: float = _START_TIMEOUT_S) -> str:
        cmd = [*self._as_user, str(self.bin_dir / argv[0]), *argv[1:]]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=self.socket_dir, env={**os.environ, "LC_ALL": "C"}, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresClusterError(f"{argv[0]} failed: {exc}") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"]
            raise PostgresClusterError(f"{argv[0]} failed: {lines[-1]}")
        return done.stdout

    def _start_server(self) -> None:
        assert self.log_path is not None
        for attempt in range(_PORT_ATTEMPTS):
            port = free_port(self.host)
            options = [
                f"-c listen_addresses={self.host}",
                f"-p {port}",
                f"-k {self.socket_dir}",
                f"-c max_connections={self.max_connections}",
            ]
            if not self.fsync:
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            try:
                self._run(
                    [
                        "pg_ctl",
                        "-D",
                        str(self._data),
                        "-l",
                        str(self.log_path),
                        "-o",
                        " ".join(options),
                        "-w",
                        "-t",
                        str(_START_TIMEOUT_S),
                        "start",
                    ]
                )
            except PostgresClusterError as exc:
                tail = self._log_tail()
                if attempt + 1 < _PORT_ATTEMPTS and "could not bind" in tail:
                    continue
                last = tail.strip().splitlines()[-1] if tail.strip() else "(empty)"
                raise PostgresClusterError(f"{exc}; server log: {last}") from None
            self.port = port
            return

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""
        except OSError:
            return ""

    def _create_database(self, name: str) -> None:
        import psycopg

        try:
            with psycopg.connect(
                host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True, connect_timeout=10
            ) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as exc:
            raise PostgresClusterError(f"cannot create database {name}: {str(exc).strip().splitlines()[0]}") from None


def _shutdown(as_user: list[str], bin_dir: Path, root: Path) -> None:
    """Stop the server in ``root`` if it runs, then delete ``root`` (also run at interpreter exit)."""
    data = root / "data"
    if (data / "postmaster.pid").exists():
        done = subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            log.error("pg_ctl stop failed: %s", (done.stderr or done.stdout).strip())
    shutil.rmtree(root, ignore_errors=True)


__all__ = ["PostgresCluster", "PostgresClusterError", "find_bin_dir"]
