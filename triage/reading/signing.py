"""The second identification component at signing: a reader's password, asked again.

An electronic signature not based on biometrics uses two distinct
identification components (21 CFR 11.200(a)(1)): here the OS account the
reader logged in with (:mod:`triage.reading.identity`) and a password asked at
each signature and amendment. Which password is the reader's ``auth``:

- ``password``: a per-reader signing password, set with ``triage readers
  passwd``, stored in ``reader_secret`` as a scrypt hash (RFC 7914) with its
  own random salt and its parameters, compared in constant time;
- ``pam``: the OS account's own password, checked by PAM (``[worklist]
  pam_service``), through the injectable ``pam`` callable.

:func:`authenticate` returns a :class:`SigningCredential` that
``WorklistService.sign``/``amend`` accept only for the same reader and only
for :data:`CREDENTIAL_MAX_AGE`. Against guessing: each failure is an audit
event (``signature_refused``, 21 CFR 11.300(d)), waits :data:`FAILURE_DELAY_S`,
and after :data:`MAX_FAILURES` consecutive failures signing as that reader is
locked for :data:`LOCK_MINUTES` (the right password included), in the
database, so that a new process does not start afresh.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from triage.clock import as_utc, utcnow
from triage.reading.identity import AuthMethod, Reader, Role
from triage.reading.states import InvalidInput, NotPermitted
from triage.store import audit
from triage.store.tables import READER_LOCKOUT, READER_SECRET

CREDENTIAL_MAX_AGE = timedelta(minutes=2)  # a signature must follow its password within this
MAX_FAILURES = 5  # consecutive wrong passwords before signing as the reader is locked ...
LOCK_MINUTES = 5.0  # ... for this long
FAILURE_DELAY_S = 0.5  # each wrong password waits this long: slows guessing, not a reader's typo
MIN_PASSWORD_CHARS = 8

# scrypt (RFC 7914) cost: N = 2**15, r = 8 -> 32 MiB and ~0.1 s per check on a laptop core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024  # above 128 * N * r, which OpenSSL's default limit is not
_SALT_BYTES, _KEY_BYTES = 16, 32

PamCheck = Callable[[str, str, str], bool]
"""``(os_account, password, pam_service) -> accepted``: the PAM door, injectable for tests."""


class AuthenticationFailed(NotPermitted):
    """The password given at signing was wrong (or PAM refused it)."""


@dataclass(frozen=True)
class SigningCredential:
    """Proof that ``reader`` gave their second identification component at ``at``.

    Attributes
    ----------
    reader
        The reader who authenticated (must be the one who signs).
    method
        How: :class:`triage.reading.identity.AuthMethod`.
    os_account
        The OS account that ran the authentication.
    at
        When, timezone-aware UTC; stale after :data:`CREDENTIAL_MAX_AGE`.
    """

    reader: str
    method: AuthMethod
    os_account: str
    at: datetime


def check_credential(credential: SigningCredential | None, user: str, verb: str, now: datetime) -> SigningCredential:
    """``credential`` if it lets ``user`` ``verb`` at ``now``.

    Raises
    ------
    NotPermitted
        If it is missing, another reader's, older than :data:`CREDENTIAL_MAX_AGE`
        or from the future.
    """
    if not isinstance(credential, SigningCredential):
        raise NotPermitted(f"cannot {verb}: {user} must give their signing password again (second identification component)")
    if credential.reader != user:
        raise NotPermitted(f"cannot {verb} as {user}: the password given was {credential.reader}'s")
    age = now - as_utc(credential.at)
    if age > CREDENTIAL_MAX_AGE or age < -timedelta(seconds=5):
        raise NotPermitted(
            f"cannot {verb}: the password was given at {as_utc(credential.at):%H:%M:%S} UTC, more than "
            f"{CREDENTIAL_MAX_AGE.total_seconds() / 60:.0f} minutes ago; give it again"
        )
    return credential


# --- hashing ------------------------------------------------------------------------------------


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``password`` as ``scrypt$N$r$p$salt$key`` (hex), with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=_KEY_BYTES)
    return f"scrypt${n}${r}${p}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (:func:`hash_password`'s form), in constant time."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(key)
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), maxmem=_SCRYPT_MAXMEM, dklen=len(expected)
        )
    except ValueError:  # a malformed row never verifies
        return False
    return hmac.compare_digest(got, expected)


def pam_check(account: str, password: str, service: str) -> bool:
    """Ask PAM whether ``password`` is ``account``'s (python-pam, through ctypes)."""
    import pam  # here: it loads libpam when imported

    return bool(pam.PamAuthenticator().authenticate(account, password, service=service))


# --- setting a password -------------------------------------------------------------------------


def password_set_at(engine: Engine) -> dict[str, datetime]:
    """Readers with a signing password, and when it was set."""
    with engine.connect() as conn:
        return {row.reader: as_utc(row.set_at) for row in conn.execute(select(READER_SECRET.c.reader, READER_SECRET.c.set_at))}


def _stored_hash(conn: Connection, reader: str) -> str | None:
    return conn.execute(select(READER_SECRET.c.hash).where(READER_SECRET.c.reader == reader)).scalar()


def set_password(
    engine: Engine,
    reader: Reader,
    new_password: str,
    *,
    by: Reader,
    by_account: str,
    current_password: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Set ``reader``'s signing password, as ``by`` (the reader, or an admin resetting it).

    A reader changing their own password gives the current one when one is
    set; an admin (``role = "admin"``) may reset another reader's without it.
    The change is an audit event (``reader_password_set``) naming who set it,
    never the secret. A reset clears a lock.

    Raises
    ------
    NotPermitted
        If ``by`` is neither ``reader`` nor an admin, or ``reader`` signs with PAM.
    AuthenticationFailed
        If the current password is wrong (it counts as a failed attempt).
    InvalidInput
        If the new password is shorter than :data:`MIN_PASSWORD_CHARS` or is the reader's name.
    """
    if reader.auth is not AuthMethod.PASSWORD:
        raise NotPermitted(f"{reader.name} signs with the OS account's password (auth = pam): there is no signing password to set")
    own = by.name == reader.name
    if not own and by.role is not Role.ADMIN:
        raise NotPermitted(f"{by.name} may not set {reader.name}'s signing password (only {reader.name} or an admin reader may)")
    if len(new_password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"the signing password must have at least {MIN_PASSWORD_CHARS} characters")
    if new_password.strip().casefold() in {reader.name.casefold(), reader.display_name.casefold(), by_account.casefold()}:
        raise InvalidInput("the signing password must not be the reader's or the account's name")
    with engine.connect() as conn:
        stored = _stored_hash(conn, reader.name)
    if own and stored is not None:
        # Same lock and failure count as at signing: changing the password is no way around them.
        _verify(engine, reader, by_account, current_password or "", clock=clock, sleep=sleep, pam_service="", pam=None)
    digest = hash_password(new_password)
    now = as_utc(clock())
    with engine.begin() as conn:
        audit.lock_chain(conn)
        conn.execute(delete(READER_SECRET).where(READER_SECRET.c.reader == reader.name))
        conn.execute(insert(READER_SECRET).values(reader=reader.name, hash=digest, set_at=now, set_by=by.name))
        conn.execute(delete(READER_LOCKOUT).where(READER_LOCKOUT.c.reader == reader.name))
        audit.append(
            conn,
            actor=by.name,
            action=audit.Action.READER_PASSWORD_SET,
            study_uid=None,
            detail={"reader": reader.name, "by": by.name, "os_account": by_account, "reset": not own, "first": stored is None},
            at=now,
        )


# --- authenticating -----------------------------------------------------------------------------


def _locked_until(conn: Connection, reader: str, now: datetime) -> datetime | None:
    until = conn.execute(select(READER_LOCKOUT.c.locked_until).where(READER_LOCKOUT.c.reader == reader)).scalar()
    return as_utc(until) if until is not None and as_utc(until) > now else None


def _record_failure(engine: Engine, reader: Reader, account: str, now: datetime) -> datetime | None:
    """Count a failure and audit it, in one transaction; returns the lock it caused, if any."""
    with engine.begin() as conn:
        audit.lock_chain(conn)  # also serialises concurrent failures of one reader
        failures = conn.execute(select(READER_LOCKOUT.c.failures).where(READER_LOCKOUT.c.reader == reader.name)).scalar()
        count = (failures or 0) + 1
        locked = now + timedelta(minutes=LOCK_MINUTES) if count >= MAX_FAILURES else None
        values = {"failures": 0 if locked else count, "last_failure_at": now, "locked_until": locked}
        if failures is None:
            conn.execute(insert(READER_LOCKOUT).values(reader=reader.name, **values))
        else:
            conn.execute(update(READER_LOCKOUT).where(READER_LOCKOUT.c.reader == reader.name).values(**values))
        audit.append(
            conn,
            actor=reader.name,
            action=audit.Action.SIGNATURE_REFUSED,
            study_uid=None,
            detail={
                "reader": reader.name,
                "os_account": account,
                "method": reader.auth.value,
                "failures": count,
                "locked_until": locked.isoformat() if locked else None,
            },
            at=now,
        )
    return locked


def _verify(
    engine: Engine,
    reader: Reader,
    account: str,
    secret: str,
    *,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
    pam_service: str,
    pam: PamCheck | None,
) -> None:
    now = as_utc(clock())
    with engine.connect() as conn:
        locked = _locked_until(conn, reader.name, now)
        stored = _stored_hash(conn, reader.name)
    if locked is not None:
        raise NotPermitted(
            f"signing as {reader.name} is locked until {locked.astimezone(UTC):%H:%M} UTC after {MAX_FAILURES} wrong passwords"
        )
    if reader.auth is AuthMethod.PAM:
        ok = pam is not None and bool(secret) and pam(account, secret, pam_service)
    else:
        if stored is None:
            raise NotPermitted(f"{reader.name} has no signing password yet: set one with `triage readers passwd`")
        ok = verify_password(secret, stored)
    if ok:
        with engine.begin() as conn:
            conn.execute(delete(READER_LOCKOUT).where(READER_LOCKOUT.c.reader == reader.name))
        return
    locked = _record_failure(engine, reader, account, now)
    sleep(FAILURE_DELAY_S)
    what = "the OS account's password" if reader.auth is AuthMethod.PAM else "signing password"
    lock = f"; signing as {reader.name} is locked for {LOCK_MINUTES:.0f} minutes" if locked else ""
    raise AuthenticationFailed(f"wrong {what} for {reader.name}{lock}")


def authenticate(
    engine: Engine,
    reader: Reader,
    account: str,
    secret: str,
    *,
    pam_service: str = "login",
    pam: PamCheck = pam_check,
    clock: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
) -> SigningCredential:
    """Check ``reader``'s second identification component; the credential to sign with.

    Parameters
    ----------
    engine
        The study index (``reader_secret``, ``reader_lockout``, the audit trail).
    reader
        The acting reader (:func:`triage.reading.identity.acting_reader`).
    account
        The OS account running this process; must be one of ``reader.os_accounts``.
    secret
        The password typed: the signing password, or the OS account's for PAM readers.
    pam_service, pam
        The PAM service and the function that asks PAM (injected by tests).
    clock, sleep
        The current time and the wait after a failure (injected by tests).

    Raises
    ------
    NotPermitted
        If ``account`` may not act as ``reader``, no password is set, or signing is locked.
    AuthenticationFailed
        If the password is wrong (audited; counts towards the lock).
    """
    if account not in reader.os_accounts:
        raise NotPermitted(f"OS account {account} may not act as {reader.name}")
    _verify(engine, reader, account, secret, clock=clock, sleep=sleep, pam_service=pam_service, pam=pam)
    return SigningCredential(reader=reader.name, method=reader.auth, os_account=account, at=as_utc(clock()))
