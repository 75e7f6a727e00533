"""Anchors: the audit chain's head, written now and then outside the database.

The keyed chain stops whoever cannot read the key file from rewriting
events; it cannot stop anyone from deleting the newest events and moving the
head back (a shorter chain is still a valid one), nor someone who holds the
key from rebuilding the chain. An anchor is one JSON line,
``{"at", "seq", "hash"}``, appended to ``[audit] anchor_file`` (default
``<data_dir>/audit-anchors.jsonl``, mode 0640, ``O_APPEND``) and logged at
INFO on logger ``triage.audit``, so that the same line also lands wherever
the logs are shipped. ``verify`` then checks that each anchored event still
has the anchored hash and that the chain reaches the newest anchored seq.

The server anchors every ``[audit] anchor_interval_s`` when the head has
moved, and once more at shutdown (:class:`Anchorer`); ``triage audit anchor``
anchors on demand.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from triage.errors import DatabaseError, TriageError
from triage.store.audit_key import AuditKey, AuditKeyError
from triage.store.tables import HEAD

log = logging.getLogger("triage.audit")

_HEAD_ID = 1
_TAIL_BYTES = 4096  # enough for the last line of the anchor file


class AnchorError(TriageError):
    """The anchor file cannot be written or read; the message names it."""


@dataclass(frozen=True)
class Anchor:
    """One anchored head: when, the seq and hash of the chain's newest event then."""

    at: str
    seq: int
    hash: str

    def line(self) -> str:
        return json.dumps({"at": self.at, "seq": self.seq, "hash": self.hash}, sort_keys=True, separators=(",", ":"))


def _parse(line: str) -> Anchor | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    at, seq, digest = doc.get("at"), doc.get("seq"), doc.get("hash")
    if not isinstance(at, str) or type(seq) is not int or seq < 0 or not isinstance(digest, str) or len(digest) != 64:
        return None
    return Anchor(at, seq, digest)


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in ``path``, oldest first; none if the file does not exist.

    Raises
    ------
    AnchorError
        If the file cannot be read or a line is not an anchor (the line is named).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorError(f"cannot read audit anchor file {path}: {exc}") from None
    anchors: list[Anchor] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        found = _parse(line)
        if found is None:
            raise AnchorError(f"audit anchor file {path} line {number} is not an anchor (edited?)")
        anchors.append(found)
    return anchors


def last_anchor(path: Path) -> Anchor | None:
    """The newest anchor in ``path`` (reads the file's tail only), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AnchorError(f"cannot read audit anchor file {path}: {exc.strerror}") from None
    lines = [line for line in tail.splitlines() if line.strip()]
    return _parse(lines[-1]) if lines else None


def anchor(engine: Engine, key: AuditKey | None, path: Path, *, only_if_moved: bool = False) -> Anchor | None:
    """Append the chain's head to the anchor file and log it; returns the anchor (None: nothing written).

    Parameters
    ----------
    engine
        The database.
    key
        The key this process appends with: a head written under another key
        is not anchored (its chain would not verify). None skips the check.
    path
        The anchor file (created mode 0640).
    only_if_moved
        Write nothing when the newest anchor in the file already names the head's seq and hash.

    Raises
    ------
    AuditKeyError
        If ``key`` is not the key of the database's chain.
    AnchorError
        If the anchor file cannot be written.
    DatabaseError
        If the database cannot be read.
    """
    try:
        with engine.connect() as conn:
            head = conn.execute(select(HEAD.c.seq, HEAD.c.hash, HEAD.c.key_id).where(HEAD.c.id == _HEAD_ID)).first()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the audit head: {type(exc).__name__}") from exc
    if head is None:
        return None  # no event yet: nothing to anchor
    if key is not None and head.key_id is not None and head.key_id != key.key_id:
        raise AuditKeyError(
            f"audit key {key.path} (key id {key.key_id}) does not match this database's (key id {head.key_id}); restore the key file"
        )
    now = Anchor(datetime.now(UTC).isoformat(timespec="microseconds"), int(head.seq), str(head.hash))
    if only_if_moved:
        last = last_anchor(path)
        if last is not None and (last.seq, last.hash) == (now.seq, now.hash):
            return None
    line = now.line()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))  # one write: O_APPEND keeps concurrent lines whole
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise AnchorError(f"cannot write audit anchor file {path}: {exc.strerror or exc}") from None
    log.info("audit anchor %s", line)
    return now


class Anchorer:
    """The server's anchoring thread: every ``interval`` seconds when the head moved, and at :meth:`stop`."""

    def __init__(self, engine: Engine, key: AuditKey | None, path: Path, interval: float) -> None:
        self.engine, self.key, self.path, self.interval = engine, key, path, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-anchor", daemon=True)
        self._thread.start()

    def _anchor(self) -> None:
        try:
            anchor(self.engine, self.key, self.path, only_if_moved=True)
        except TriageError as exc:  # logged, tried again next time: an anchor missed is not worth stopping the server
            log.error("audit anchor not written: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._anchor()

    def stop(self) -> None:
        """Stop the thread, then anchor the final head (the events of the shutdown included)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._anchor()


__all__ = ["Anchor", "AnchorError", "Anchorer", "anchor", "last_anchor", "read_anchors"]
