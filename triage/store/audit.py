"""The audit trail: every inference and every human action, append-only and
hash-chained with a key.

Each event stores the HMAC-SHA256 of its own contents, keyed with a secret
kept outside the database (:mod:`triage.store.audit_key`), and the hash of the
event before it, so that editing, deleting or reordering any event breaks the chain
from there on; :func:`verify` finds the first break. One row, ``audit_head``,
holds the last seq and hash: every append updates it, so concurrent writers
serialise on it (a row lock on PostgreSQL, the one write lock on SQLite), and
deleting the newest events (which leaves a valid but shorter chain) is seen as
a head that runs past the table. The head also records the key's id, so that
a wrong or missing key file is named as such, not reported as a broken chain.

An event is written by :func:`append` on the caller's connection, inside the
caller's transaction: the event commits or rolls back with the change it
records. With an ORM ``Session``, pass ``session.connection()``.

The hashed document of an event is the canonical JSON (sorted keys, no
spaces, UTF-8, no NaN) of ``{seq, at, actor, action, study_uid, detail,
prev_hash}`` where ``at`` is ISO 8601 UTC with microseconds and ``detail`` is
the object stored (as canonical JSON) in the ``detail`` column; an auditor
with the key file can recompute it from :func:`export`'s output alone.

:func:`verify` checks the chain, the anchors (:mod:`triage.store.audit_anchor`)
and then the current rows against the chain (:mod:`triage.store.audit_state`):
a signed report's text against its sign event's SHA-256, each finding against
its inference event, each study's read state and claim against its last
claim, release, sign or amend.

What the key protects against: whoever can edit the database but cannot read
the key file (a database administrator, a copied or restored database, another
local user, a backup tool) cannot write an event, or rewrite the chain from an
edit on, that verifies: without the key no valid HMAC can be made, and a chain
rebuilt with another key (or with plain SHA-256) fails at its first event.
What it does not protect against: someone who can read the key file (the
accounts that run triage, root) can rebuild a valid chain; anchors written
outside the database (and shipped with the logs) then still catch a chain
rewritten or truncated before the newest anchor, but not events changed after
it. Deleting the newest events and moving the head back is caught by the
anchors only. Keep a backup of the key file apart from the database's: without
it the chain can no longer be verified.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from typing import Any
from uuid import UUID

from sqlalchemy import String, insert, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from triage.errors import DatabaseError, TriageError
from triage.names import AI_ACTOR, LISTENER_ACTOR, SYSTEM_ACTOR, SYSTEM_IDENTITIES
from triage.store.audit_anchor import Anchor, Anchorer, AnchorError, anchor, read_anchors
from triage.store.audit_key import AuditKey, AuditKeyError, bind_key, create_key, key_for, read_key, set_key_file
from triage.store.audit_state import ChainFacts, check_rows
from triage.store.tables import EVENT, HEAD

RESERVED_ACTORS = SYSTEM_IDENTITIES  # never a person: the AI, the listener, the server

GENESIS_HASH = "0" * 64  # the "previous hash" of event 1
HEAD_ID = 1


# Column widths in triage.store.models; checked here so that PostgreSQL never
# truncates or refuses an event the caller thinks is written.
_ACTOR_MAX = 64
_STUDY_UID_MAX = 64
_PAGE = 1000  # events read per query by verify/export


class Action(str, enum.Enum):
    """What an audit event records (``AuditEvent.action``)."""

    INSTANCES_RECEIVED = "instances_received"
    INSTANCE_CONFLICT = "instance_conflict"  # other content under an indexed SOP Instance UID, kept aside (triage.store.index)
    SERIES_COMPLETE = "series_complete"
    INFERENCE = "inference"
    INFERENCE_FAILED = "inference_failed"
    RANK_CHANGED = "rank_changed"
    VIEW = "view"
    CLAIM = "claim"
    RELEASE = "release"
    IMPRESSION = "impression"
    FEEDBACK = "feedback"
    DRAFT = "draft"
    SIGN = "sign"
    AMEND = "amend"
    RESULT_SENT = "result_sent"  # an AI result or signed report acknowledged by a PACS (triage.outbox.service)
    READER_PASSWORD_SET = "reader_password_set"  # a reader's signing password set or reset (triage.reading.signing)
    SIGNATURE_REFUSED = "signature_refused"  # a wrong signing password or PAM refusal (21 CFR 11.300(d))
    PIXELS_PURGED = "pixels_purged"  # a study's stored instances deleted by retention (triage.store.retention)


class AuditError(TriageError):
    """An audit event cannot be written or read as given; the message names why."""


@dataclass(frozen=True)
class AuditVerification:
    """The outcome of :func:`verify`.

    Attributes
    ----------
    ok
        True when the whole chain and the head are intact.
    events
        Events verified intact: the whole log when ``ok``, else those before
        the first break.
    first_broken_seq
        The seq of the first event that fails (missing, out of order, edited),
        or None when ``ok`` or when the problem is the head row alone.
    problem
        One line naming the event and the kind of breakage, or None when ``ok``;
        with an intact chain, the first row that differs from it.
    mismatches
        Every row that differs from the intact chain, one line each
        ("report v1 of study X: text differs from its sign event (seq 42)").
    """

    ok: bool
    events: int
    first_broken_seq: int | None = None
    problem: str | None = None
    mismatches: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["mismatches"] = list(self.mismatches)
        return doc


# -- canonical JSON and hashing (pure) --------------------------------------


def _json_default(obj: Any) -> Any:
    # Values that have one obvious JSON form; anything else is refused rather
    # than stringified, so that a detail never silently loses meaning.
    if isinstance(obj, datetime):
        return _iso_utc(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (PurePath, UUID)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if callable(getattr(obj, "tolist", None)):  # numpy scalars and arrays, without importing numpy
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that the audit trail hashes and stores.

    Sorted keys, no whitespace, non-ASCII kept as UTF-8; datetimes become ISO
    8601 UTC, dates ISO, enums their value, paths and UUIDs strings, sets sorted
    lists, numpy values Python numbers.

    Raises
    ------
    AuditError
        If ``obj`` holds NaN or infinity, a value with no JSON form, keys that
        cannot be sorted, a reference cycle, or text that is not valid Unicode.
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
        text.encode("utf-8")  # lone surrogates cannot be stored or hashed
    except (TypeError, ValueError, RecursionError) as exc:
        raise AuditError(f"audit detail is not canonical JSON: {exc}") from None
    return text


def _iso_utc(at: datetime) -> str:
    # Naive times are UTC by the project's convention (triage.clock).
    if at.utcoffset() is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _event_hash(
    *, secret: bytes, seq: int, at_iso: str, actor: str, action: str, study_uid: str | None, detail: Any, prev_hash: str
) -> str:
    document = {
        "seq": seq,
        "at": at_iso,
        "actor": actor,
        "action": action,
        "study_uid": study_uid,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    mac = _keyed(secret).copy()
    mac.update(canonical_json(document).encode("utf-8"))
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    # A keyed HMAC to copy per event: copying skips the key setup (a fifth of an HMAC of a short event).
    return hmac.new(secret, digestmod=hashlib.sha256)


def _canonical_detail(detail: Mapping[str, Any]) -> tuple[str, Any]:
    """The stored text of ``detail`` and the object that verify will parse back from it."""
    if not isinstance(detail, Mapping):
        raise AuditError(f"audit detail must be a mapping, got {type(detail).__name__}")
    text = canonical_json(dict(detail))
    parsed = json.loads(text)
    # Refuse what would not verify later (e.g. keys 1 and "1" both becoming "1").
    if canonical_json(parsed) != text:
        raise AuditError("audit detail does not survive a JSON round trip (keys that collide as strings?)")
    return text, parsed


def _normalise_action(action: Action | str) -> str:
    try:
        return Action(action).value
    except ValueError:
        raise AuditError(f"unknown audit action {action!r}") from None


def _check_text(name: str, value: object, max_len: int, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise AuditError(f"audit {name} must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise AuditError(f"audit {name} is longer than {max_len} characters: {value[:20]!r}...")


def _db_reason(exc: SQLAlchemyError) -> str:
    # The driver's own message, first line only: SQLAlchemy appends the SQL and a URL.
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines() or [""]
    return f"{orig.__class__.__name__}: {lines[0]}"


# -- writing ------------------------------------------------------------------


def _lock_head(conn: Connection) -> tuple[int, str, str | None]:
    """Create the head row if missing, lock it, return (seq, hash, key id).

    The insert comes first on purpose: on SQLite a write statement takes the
    database's one write lock, so the head read that follows sees the latest
    commit and no other writer can move it (a plain SELECT would not: with
    pysqlite it runs outside any transaction). On PostgreSQL the conflicting
    insert does nothing and ``FOR UPDATE`` takes the row lock.
    """
    values = {"id": HEAD_ID, "seq": 0, "hash": GENESIS_HASH}
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.execute(sqlite.insert(HEAD).values(**values).on_conflict_do_nothing(index_elements=["id"]))
    elif dialect == "postgresql":
        conn.execute(postgresql.insert(HEAD).values(**values).on_conflict_do_nothing(index_elements=["id"]))
    elif conn.execute(select(HEAD.c.id).where(HEAD.c.id == HEAD_ID)).first() is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(HEAD).values(**values))
        except IntegrityError:
            pass  # another writer created it first
    row = conn.execute(select(HEAD.c.seq, HEAD.c.hash, HEAD.c.key_id).where(HEAD.c.id == HEAD_ID).with_for_update()).one()
    return int(row.seq), str(row.hash), row.key_id


def _missing_key(path: Path, head_key_id: str | None) -> str:
    return f"audit key file {path} is missing; this database's chain is keyed with key id {head_key_id}: restore the key file"


def _check_key_id(key: AuditKey, head_seq: int, head_key_id: str | None) -> None:
    if head_key_id is None:
        if head_seq != 0:
            raise AuditError(f"audit head has {head_seq} events but no key id (edited?); run `triage audit verify`")
    elif head_key_id != key.key_id:
        raise AuditKeyError(
            f"audit key {key.path} (key id {key.key_id}) does not match this database's (key id {head_key_id}); restore the key file"
        )


def _key_to_append(engine: Engine, head_seq: int, head_key_id: str | None) -> AuditKey:
    """The key for the next event: created on the chain's first append, else it must be the chain's."""
    key, path = key_for(engine)
    if key is None:
        if head_seq != 0 or head_key_id is not None:
            raise AuditKeyError(_missing_key(path, head_key_id))
        key = create_key(path)
    _check_key_id(key, head_seq, head_key_id)
    return key


def prepare_key(engine: Engine, path: Path) -> AuditKey:
    """The key in ``path`` for ``engine``'s chain, created (0600) if the chain has no key yet.

    The server calls it at start and binds the key (:func:`bind_key`), so that
    a missing or wrong key stops it there with one line, not at the first event.

    Raises
    ------
    AuditKeyError
        If the file is missing while the chain has a key, is not the chain's
        key, is open to other users, or cannot be read or created.
    DatabaseError
        If the database cannot be read.
    """
    try:
        with engine.connect() as conn:
            head = conn.execute(select(HEAD.c.seq, HEAD.c.key_id).where(HEAD.c.id == HEAD_ID)).first()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the audit head: {_db_reason(exc)}") from exc
    head_seq, head_key_id = (int(head.seq), head.key_id) if head is not None else (0, None)
    key = read_key(path)
    if key is None:
        if head_seq != 0 or head_key_id is not None:
            raise AuditKeyError(_missing_key(path, head_key_id))
        key = create_key(path)
    _check_key_id(key, head_seq, head_key_id)
    return key


def lock_chain(conn: Connection) -> None:
    """Take the audit chain's lock now, at the start of a transaction that will append.

    Every append holds the head row's lock until its transaction ends. On
    PostgreSQL a transaction that first locked other rows (a study, a series,
    a job) and then waits for the head can deadlock with one that holds the
    head and waits for those rows; taking the head first, in every writer
    that appends, gives all of them one lock order. On SQLite the database's
    one write lock already orders writers: nothing to do there.

    Raises
    ------
    AuditError
        If ``conn`` is not in a transaction.
    DatabaseError
        If the database refuses the lock.
    """
    if conn.dialect.name == "sqlite":
        return
    if not conn.in_transaction():
        raise AuditError("audit lock needs the caller's transaction: use engine.begin() or session.connection()")
    try:
        _lock_head(conn)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot lock the audit chain: {_db_reason(exc)}") from exc


def append(
    conn: Connection, *, actor: str, action: Action | str, study_uid: str | None, detail: Mapping[str, Any], at: datetime | None = None
) -> int:
    """Append one event inside the caller's transaction (same commit as the change); returns its seq.

    Parameters
    ----------
    conn
        A connection in a transaction (``engine.begin()``, or
        ``session.connection()``); the event commits or rolls back with it.
    actor
        Who acted: a user name, :data:`AI_ACTOR` or :data:`LISTENER_ACTOR`.
    action
        An :class:`Action` or its value.
    study_uid
        The study concerned, or None for events about no one study.
    detail
        What happened, JSON-serialisable (see :func:`canonical_json`).
    at
        When, timezone-aware; now (UTC) by default.

    Returns
    -------
    int
        The event's seq (1, 2, 3, ... without gaps).

    Raises
    ------
    AuditError
        If an argument is invalid, ``detail`` has no canonical JSON form, or
        ``conn`` is not in a transaction.
    DatabaseError
        If the database refuses the write; the caller's transaction must roll back.
    """
    _check_text("actor", actor, _ACTOR_MAX, optional=False)
    action_value = _normalise_action(action)
    _check_text("study_uid", study_uid, _STUDY_UID_MAX, optional=True)
    detail_text, detail_obj = _canonical_detail(detail)
    if at is None:
        at = datetime.now(UTC)
    elif at.utcoffset() is None:
        raise AuditError(f"audit time must be timezone-aware, got naive {at.isoformat()}")
    at = at.astimezone(UTC)
    if not conn.in_transaction():
        # An event written outside the change's transaction could commit without it, or it without the event.
        raise AuditError("audit append needs the caller's transaction: use engine.begin() or session.connection()")

    if conn.dialect.name == "sqlite":
        # The index writer appends one event per group commit on the ingest hot
        # path; SQLAlchemy's per-statement overhead was a fifth of ingest's CPU.
        return _append_sqlite(conn, at, actor, action_value, study_uid, detail_obj, detail_text)
    try:
        head_seq, prev_hash, head_key_id = _lock_head(conn)
        key = _key_to_append(conn.engine, head_seq, head_key_id)
        seq = head_seq + 1
        digest = _event_hash(
            secret=key.secret,
            seq=seq,
            at_iso=_iso_utc(at),
            actor=actor,
            action=action_value,
            study_uid=study_uid,
            detail=detail_obj,
            prev_hash=prev_hash,
        )
        conn.execute(
            insert(EVENT).values(
                seq=seq, at=at, actor=actor, action=action_value, study_uid=study_uid, detail=detail_text, prev_hash=prev_hash, hash=digest
            )
        )
        # Guarded on the old seq: on a database where FOR UPDATE were ignored,
        # a concurrent append shows up here instead of forking the chain.
        moved = conn.execute(
            update(HEAD).where(HEAD.c.id == HEAD_ID, HEAD.c.seq == head_seq).values(seq=seq, hash=digest, key_id=key.key_id)
        )
        if moved.rowcount != 1:
            raise DatabaseError(f"audit head moved during append of event {seq}; retry the transaction")
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot append audit event ({action_value} by {actor}): {_db_reason(exc)}") from exc
    return seq


_SQLITE_HEAD_INIT = "INSERT INTO audit_head (id, seq, hash) VALUES (?, 0, ?) ON CONFLICT (id) DO NOTHING"
_SQLITE_HEAD = "SELECT seq, hash, key_id FROM audit_head WHERE id = ?"
_SQLITE_EVENT = "INSERT INTO audit_event (seq, at, actor, action, study_uid, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_SQLITE_MOVE = "UPDATE audit_head SET seq = ?, hash = ?, key_id = ? WHERE id = ? AND seq = ?"


def _append_sqlite(
    conn: Connection, at: datetime, actor: str, action: str, study_uid: str | None, detail_obj: Any, detail_text: str
) -> int:
    """:func:`append` on SQLite with the raw driver connection (same transaction), same rows and hashes.

    Times are stored as SQLAlchemy stores them on SQLite: UTC text, no offset.
    """
    raw = conn.connection.driver_connection
    assert raw is not None, "a live connection has its driver connection"
    try:
        raw.execute(_SQLITE_HEAD_INIT, (HEAD_ID, GENESIS_HASH))  # takes the write lock first, see _lock_head
        head_seq, prev_hash, head_key_id = raw.execute(_SQLITE_HEAD, (HEAD_ID,)).fetchone()
        key = _key_to_append(conn.engine, int(head_seq), head_key_id)
        seq = int(head_seq) + 1
        digest = _event_hash(
            secret=key.secret,
            seq=seq,
            at_iso=_iso_utc(at),
            actor=actor,
            action=action,
            study_uid=study_uid,
            detail=detail_obj,
            prev_hash=prev_hash,
        )
        stored_at = at.strftime("%Y-%m-%d %H:%M:%S.%f")
        raw.execute(_SQLITE_EVENT, (seq, stored_at, actor, action, study_uid, detail_text, prev_hash, digest))
        if raw.execute(_SQLITE_MOVE, (seq, digest, key.key_id, HEAD_ID, int(head_seq))).rowcount != 1:
            raise DatabaseError(f"audit head moved during append of event {seq}; retry the transaction")
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot append audit event ({action} by {actor}): {type(exc).__name__}: {exc}") from exc
    return seq


# -- reading ------------------------------------------------------------------

# ``at`` is read as stored (text on SQLite, a datetime on PostgreSQL) so that
# one edited, unparseable time is reported as such instead of aborting the read.
_COLUMNS = (
    EVENT.c.id,
    EVENT.c.seq,
    type_coerce(EVENT.c.at, String).label("at"),
    EVENT.c.actor,
    EVENT.c.action,
    EVENT.c.study_uid,
    EVENT.c.detail,
    EVENT.c.prev_hash,
    EVENT.c.hash,
)


class _Unreadable(Exception):
    """A stored field cannot be parsed (the message says which)."""


def _parse_at(value: object) -> str:
    if isinstance(value, datetime):
        return _iso_utc(value)
    if isinstance(value, str):
        try:
            return _iso_utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise _Unreadable("time is unreadable")


def _parse_detail(text: object) -> Any:
    if not isinstance(text, str):
        raise _Unreadable("detail is not valid JSON")
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        raise _Unreadable("detail is not valid JSON") from None
    try:
        canonical = canonical_json(obj)
    except AuditError:
        raise _Unreadable("detail is not valid JSON") from None
    if canonical != text:
        raise _Unreadable("detail is not in canonical form")
    return obj


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _row_dict(row: Any) -> dict[str, Any]:
    """An event as export gives it; raises _Unreadable."""
    return {
        "seq": int(row.seq),
        "at": _parse_at(row.at),
        "actor": row.actor,
        "action": row.action,
        "study_uid": row.study_uid,
        "detail": _parse_detail(row.detail),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def _check_event(row: Any, prev_hash: str, secret: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """What is wrong with an event in its right place (None if nothing), and the event when readable (pure)."""
    seq = int(row.seq)
    if row.prev_hash != prev_hash:
        if seq == 1:
            return "event 1: previous hash is not the chain's start (edited?)", None
        return f"event {seq}: previous hash does not match event {seq - 1} (chain broken)", None
    try:
        ev = _row_dict(row)
    except _Unreadable as exc:
        return f"event {seq}: {exc} (edited?)", None
    digest = _event_hash(
        secret=secret,
        seq=seq,
        at_iso=ev["at"],
        actor=ev["actor"],
        action=ev["action"],
        study_uid=ev["study_uid"],
        detail=ev["detail"],
        prev_hash=ev["prev_hash"],
    )
    if not hmac.compare_digest(digest, str(row.hash)):
        return f"event {seq}: hash does not match its contents (edited?)", ev
    return None, ev


def _check_head(head: Any, last_seq: int, last_hash: str) -> AuditVerification | None:
    """The verdict once the table is read to its end, or None to read further (pure)."""
    if head is None:
        if last_seq == 0:
            return AuditVerification(ok=True, events=0)
        problem = f"audit head is missing, table has {last_seq} events (deleted?)"
        return AuditVerification(False, last_seq, None, problem)
    if head.seq < last_seq:
        return AuditVerification(False, head.seq, head.seq + 1, f"head says {head.seq} events, table has {last_seq} (inserted?)")
    if head.seq > last_seq:
        return None
    if head.hash != last_hash:
        if last_seq == 0:
            return AuditVerification(False, 0, None, "head hash is not the empty chain's (edited?)")
        return AuditVerification(False, last_seq - 1, last_seq, f"head hash does not match event {last_seq} (edited?)")
    return AuditVerification(ok=True, events=last_seq)


class _Walk:
    """The chain read so far: where it ends, what its events say about the rows, and the anchors to meet."""

    def __init__(self, secret: bytes, anchors: list[Anchor]) -> None:
        self.secret = secret
        self.anchored: dict[int, list[Anchor]] = {}
        for a in anchors:
            self.anchored.setdefault(a.seq, []).append(a)
        self.facts = ChainFacts()
        self.last_id: int | None = None
        self.last_seq, self.last_hash = 0, GENESIS_HASH

    def run(self, conn: Connection) -> AuditVerification:
        """Read and check events from where the last run stopped up to the head; the verdict on the chain."""
        reread = False
        while True:
            query = select(*_COLUMNS).order_by(EVENT.c.id).limit(_PAGE)
            if self.last_id is not None:  # no lower bound on the first page: even an edited id <= 0 is read
                query = query.where(EVENT.c.id > self.last_id)
            rows = conn.execute(query).all()
            if not rows:
                head = conn.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == HEAD_ID)).first()
                verdict = _check_head(head, self.last_seq, self.last_hash)
                if verdict is not None:
                    return verdict
                if reread:  # the head was read before this page: its events were committed by then
                    assert head is not None  # _check_head decides a missing head
                    problem = f"head says {head.seq} events, table ends at {self.last_seq} (deleted?)"
                    return AuditVerification(False, self.last_seq, self.last_seq + 1, problem)
                reread = True  # events may have been appended between the empty page and the head
                continue
            reread = False
            for row in rows:
                expected = self.last_seq + 1
                if row.seq != expected:
                    elsewhere = conn.execute(select(EVENT.c.id).where(EVENT.c.seq == expected)).first()
                    kind = "out of order" if elsewhere is not None else "missing (deleted?)"
                    return AuditVerification(False, self.last_seq, expected, f"event {expected} {kind}")
                wrong, ev = _check_event(row, self.last_hash, self.secret)
                if wrong is not None:
                    return AuditVerification(False, self.last_seq, expected, wrong)
                for a in self.anchored.get(expected, ()):
                    if a.hash != row.hash:
                        problem = f"event {expected}: hash differs from the anchor of {a.at} (chain rewritten?)"
                        return AuditVerification(False, self.last_seq, expected, problem)
                assert ev is not None  # a readable event when nothing is wrong
                self.facts.observe(expected, ev["actor"], ev["action"], ev["study_uid"], ev["detail"])
                self.last_id, self.last_seq, self.last_hash = row.id, expected, str(row.hash)  # equal to the digest just checked

    def anchors_met(self) -> AuditVerification | None:
        """A verdict if the chain falls short of an anchor (truncated, or the empty chain's anchor edited)."""
        for a in self.anchored.get(0, ()):
            if a.hash != GENESIS_HASH:
                return AuditVerification(False, 0, None, f"the anchor of {a.at} names event 0 with a hash that is not the chain's start")
        if self.anchored:
            newest = max(self.anchored)
            if newest > self.last_seq:
                a = self.anchored[newest][-1]
                problem = f"chain ends at event {self.last_seq}, but the anchor of {a.at} names event {newest} (truncated?)"
                return AuditVerification(False, self.last_seq, self.last_seq + 1, problem)
        return None


_RECHECKS = 5  # rows that differ while the head moved: read the new events and check again, this often


def verify(engine: Engine, key: AuditKey | None = None, anchor_file: Path | None = None) -> AuditVerification:
    """Walk the whole audit log, meet the anchors, then check the current rows against the chain.

    Events are read in id (insertion) order, a page at a time, and must have
    seq 1, 2, 3, ... without gaps, each ``prev_hash`` equal to the hash of the
    event before, each hash equal to the keyed hash of its stored contents,
    each anchored seq the anchored hash, and the head row must name the last
    event's seq and hash; the chain must reach the newest anchor. Then each
    signed report, draft, finding and study is compared with what the events
    say of it (:mod:`triage.store.audit_state`). Appends running meanwhile are
    fine: the head is read after the events, events committed in between are
    read and checked too, and a row that differs while the head moved is
    checked again against the new events.

    Parameters
    ----------
    engine
        The database.
    key
        The chain's key; by default the key for ``engine`` (bound, else the
        process's key file, see :mod:`triage.store.audit_key`).
    anchor_file
        The anchors to check (``[audit] anchor_file``); None checks none.

    Returns
    -------
    AuditVerification
        ``ok`` with the number of events, or the first broken seq and the
        problem in words ("event 17: hash does not match its contents (edited?)"),
        or, with an intact chain, every row that differs from it.

    Raises
    ------
    AuditKeyError
        If the key file is missing, unsafe, or not this database's key.
    AnchorError
        If the anchor file cannot be read or holds a line that is not an anchor.
    DatabaseError
        If the database cannot be read.
    """
    anchors = read_anchors(anchor_file) if anchor_file is not None else []  # before the walk: each names a seq it reaches
    try:
        with engine.connect() as conn:
            head = conn.execute(select(HEAD.c.seq, HEAD.c.key_id).where(HEAD.c.id == HEAD_ID)).first()
            head_seq, head_key_id = (int(head.seq), head.key_id) if head is not None else (0, None)
            path = key.path if key is not None else None
            if key is None:
                key, path = key_for(engine)
            if head_key_id is None and head_seq > 0:
                return AuditVerification(False, 0, None, f"audit head has {head_seq} events but no key id (edited?)")
            secret = b""  # no key and no keyed event: nothing to hash with it
            if key is not None:
                _check_key_id(key, head_seq, head_key_id)
                secret = key.secret
            elif head_key_id is not None or conn.execute(select(EVENT.c.id).limit(1)).first() is not None:
                raise AuditKeyError(_missing_key(path or Path("audit.key"), head_key_id))
            walk = _Walk(secret, anchors)
            verdict = walk.run(conn)
            if verdict.ok:
                verdict = walk.anchors_met() or verdict
            if not verdict.ok:
                return verdict
            for _ in range(_RECHECKS):
                mismatches = check_rows(conn, walk.facts)
                if not mismatches:
                    return verdict
                moved = conn.execute(select(HEAD.c.seq).where(HEAD.c.id == HEAD_ID)).scalar()
                if moved is None or moved <= walk.last_seq:
                    break  # no event since the walk: the rows really differ
                verdict = walk.run(conn)
                if not verdict.ok:
                    return verdict
            return AuditVerification(False, walk.last_seq, None, mismatches[0], tuple(mismatches))
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the audit log: {_db_reason(exc)}") from exc


def export(engine: Engine, since: datetime | None = None, study_uid: str | None = None) -> Iterator[dict[str, Any]]:
    """The audit events in seq order, as JSON-ready dicts (one per JSON line).

    Parameters
    ----------
    engine
        The database.
    since
        Only events at or after this time (naive is taken as UTC).
    study_uid
        Only events about this study.

    Yields
    ------
    dict
        ``seq``, ``at`` (ISO 8601 UTC), ``actor``, ``action``, ``study_uid``,
        ``detail`` (the parsed object), ``prev_hash``, ``hash``: with the key file,
        enough to recompute each hash without the database.

    Raises
    ------
    AuditError
        If a stored event cannot be parsed (run :func:`verify`).
    DatabaseError
        If the database cannot be read.
    """
    conditions = []
    if since is not None:
        if since.utcoffset() is None:
            since = since.replace(tzinfo=UTC)
        conditions.append(EVENT.c.at >= since)
    if study_uid is not None:
        conditions.append(EVENT.c.study_uid == study_uid)
    last_seq: int | None = None
    while True:
        # Keyset pages, each on a short-lived connection: a slow consumer
        # never holds a read snapshot (and SQLite's WAL) open.
        query = select(*_COLUMNS).where(*conditions).order_by(EVENT.c.seq).limit(_PAGE)
        if last_seq is not None:
            query = query.where(EVENT.c.seq > last_seq)
        try:
            with engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot read the audit log: {_db_reason(exc)}") from exc
        if not rows:
            return
        for row in rows:
            try:
                event = _row_dict(row)
            except _Unreadable as exc:
                raise AuditError(f"audit event {row.seq}: {exc}; run `triage audit verify`") from None
            yield event
        last_seq = rows[-1].seq


def events_for_study(engine: Engine, study_uid: str) -> list[dict[str, Any]]:
    """Every audit event about one study, oldest first (the worklist's history view).

    Raises
    ------
    AuditError
        If a stored event cannot be parsed.
    DatabaseError
        If the database cannot be read.
    """
    return list(export(engine, study_uid=study_uid))


__all__ = [
    "AI_ACTOR",
    "GENESIS_HASH",
    "LISTENER_ACTOR",
    "SYSTEM_ACTOR",
    "RESERVED_ACTORS",
    "Action",
    "AuditError",
    "Anchor",
    "AnchorError",
    "Anchorer",
    "AuditKey",
    "AuditKeyError",
    "AuditVerification",
    "anchor",
    "append",
    "bind_key",
    "canonical_json",
    "events_for_study",
    "export",
    "lock_chain",
    "prepare_key",
    "set_key_file",
    "verify",
]
