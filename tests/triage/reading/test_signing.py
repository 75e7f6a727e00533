"""Who acts and the second factor at signing: names, the OS account's readers, passwords, PAM, credentials.

A real SQLite file; the service signs only with a fresh credential of the same reader.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from tests.triage.rows import T0, add_study
from triage.config import ReaderSettings, Settings, load_settings
from triage.errors import ConfigError
from triage.names import SYSTEM_IDENTITIES, name_problem, skeleton
from triage.reading import identity, signing
from triage.reading.identity import AuthMethod, Reader, Role, resolve_reader
from triage.reading.service import WorklistService
from triage.reading.signing import AuthenticationFailed, SigningCredential
from triage.reading.states import NotPermitted, check_user
from triage.store import audit
from triage.store.db import make_engine
from triage.store.tables import READER_SECRET

ADA = Reader("dr.ada", "Dr Ada", Role.RADIOLOGIST, AuthMethod.PASSWORD, ("alice",))
BOB = Reader("dr.bob", "Dr Bob", Role.RADIOLOGIST, AuthMethod.PASSWORD, ("bob",))
ROOT = Reader("boss", "Boss", Role.ADMIN, AuthMethod.PASSWORD, ("admin",))
PAM_READER = Reader("dr.pam", "Dr Pam", Role.RADIOLOGIST, AuthMethod.PAM, ("pam-user",))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # noqa: ANN204 - a datetime
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    yield eng
    eng.dispose()


def no_sleep(_: float) -> None:
    pass


def events(engine: Engine, action: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(audit.EVENT).where(audit.EVENT.c.action == action).order_by(audit.EVENT.c.seq)).all()
    return [{"actor": r.actor, **json.loads(r.detail)} for r in rows]


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["triage\u2010ai", "\u0405ystem", "\uff54riage-ai", "LISTENER", "Iistener", "sys\u200btem", "\u03a4RIAGE-AI"]
)
def test_look_alike_names_are_refused(name: str) -> None:
    with pytest.raises(NotPermitted, match=r"reserved system identity|the AI \(triage-ai\) cannot sign"):
        check_user(name, "sign")


@pytest.mark.parametrize("name", ["Dr Müller", "王医生", "dr.ada", "Ольга", "systemd", "listeners"])
def test_ordinary_names_in_any_script_are_accepted(name: str) -> None:
    assert check_user(name) == name and name_problem(name) is None


def test_names_are_nfkc_and_every_audit_identity_is_reserved() -> None:
    assert check_user(" \uff44r.ada ") == "dr.ada"  # fullwidth folds: one stored form per name
    assert skeleton("\u0405YSTEM") == skeleton("system")
    assert {audit.AI_ACTOR, audit.LISTENER_ACTOR, audit.SYSTEM_ACTOR} <= SYSTEM_IDENTITIES == audit.RESERVED_ACTORS
    with pytest.raises(NotPermitted, match="control character"):
        check_user("dr\u202eada")


def test_reader_names_are_checked_when_the_settings_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[readers."triage\u2010ai"]\nos_accounts = ["x"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(bad, environ={})
    assert str(err.value).startswith("config: readers: reader [readers.triage\u2010ai]:") and "\n" not in str(err.value)
    twins = tmp_path / "twins.toml"
    twins.write_text('[readers."dr.ada"]\n[readers."dr.\u0430da"]\n', encoding="utf-8")  # Cyrillic a
    with pytest.raises(ConfigError, match="looks like reader 'dr.ada'"):
        load_settings(twins, environ={})


# --- who acts -----------------------------------------------------------------------------------


def test_the_os_account_chooses_among_its_readers_only() -> None:
    table = {
        "dr.ada": ReaderSettings(os_accounts=["alice"], display_name="Dr A"),
        "dr.ada2": ReaderSettings(os_accounts=["alice"], role="admin", auth="pam"),
        "bob": ReaderSettings(),  # default: the account named like the reader
    }
    assert resolve_reader(table, "bob").name == "bob"
    assert resolve_reader(table, "alice", "dr.ada2").auth is AuthMethod.PAM
    with pytest.raises(NotPermitted) as err:
        resolve_reader(table, "alice")
    assert str(err.value) == "OS account alice may act as several readers (dr.ada, dr.ada2): choose one with --user"
    with pytest.raises(NotPermitted) as err:
        resolve_reader(table, "alice", "bob")
    assert str(err.value) == "OS account alice may not act as bob; it may act as: dr.ada, dr.ada2"
    with pytest.raises(NotPermitted, match="OS account mallory is mapped to no reader"):
        resolve_reader(table, "mallory")
    # No [readers]: the account is its own reader, and only that.
    assert resolve_reader({}, "carol") == identity.own_reader("carol")
    with pytest.raises(NotPermitted, match="may not act as dr.ada; it may act as: carol"):
        resolve_reader({}, "carol", "dr.ada")


def test_the_account_comes_from_the_password_database_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    monkeypatch.setenv("USER", "dr.someone-else")
    monkeypatch.setenv("LOGNAME", "dr.someone-else")
    assert identity.os_account() == pwd.getpwuid(os.geteuid()).pw_name


# --- passwords ----------------------------------------------------------------------------------


def test_password_hash_is_salted_scrypt_with_its_parameters() -> None:
    a, b = signing.hash_password("correct horse"), signing.hash_password("correct horse")
    assert a != b and a.startswith(f"scrypt${signing.SCRYPT_N}${signing.SCRYPT_R}${signing.SCRYPT_P}$")
    assert signing.verify_password("correct horse", a) and not signing.verify_password("correct hors", a)
    assert not signing.verify_password("x", "garbage")
    cheap = signing.hash_password("pw", n=1 << 10, r=4, p=1)  # parameters read back from the row
    assert signing.verify_password("pw", cheap)


def test_passwd_round_trip_admin_reset_and_audit(engine: Engine) -> None:
    clock = Clock()
    signing.set_password(engine, ADA, "ada-first-pw", by=ADA, by_account="alice", clock=clock)
    with pytest.raises(AuthenticationFailed):
        signing.set_password(engine, ADA, "ada-second-pw", by=ADA, by_account="alice", current_password="nope", clock=clock, sleep=no_sleep)
    signing.set_password(engine, ADA, "ada-second-pw", by=ADA, by_account="alice", current_password="ada-first-pw", clock=clock)
    with pytest.raises(NotPermitted, match="dr.bob may not set dr.ada's"):
        signing.set_password(engine, ADA, "bob-sets-it", by=BOB, by_account="bob")
    signing.set_password(engine, ADA, "reset-by-boss", by=ROOT, by_account="admin", clock=clock)
    with pytest.raises(signing.InvalidInput, match="at least 8"):
        signing.set_password(engine, ADA, "short", by=ROOT, by_account="admin")
    with pytest.raises(NotPermitted, match="auth = pam"):
        signing.set_password(engine, PAM_READER, "whatever-pw", by=ROOT, by_account="admin")

    cred = signing.authenticate(engine, ADA, "alice", "reset-by-boss", clock=clock)
    assert cred == SigningCredential("dr.ada", AuthMethod.PASSWORD, "alice", T0)
    with engine.connect() as conn:
        (row,) = conn.execute(select(READER_SECRET)).all()
    assert row.set_by == "boss" and "reset-by-boss" not in row.hash
    sets = events(engine, "reader_password_set")
    assert [(e["actor"], e["reader"], e["reset"]) for e in sets] == [("dr.ada", "dr.ada", False)] * 2 + [("boss", "dr.ada", True)]
    assert audit.verify(engine).events == len(sets) + 1  # and the wrong current password


def test_wrong_passwords_are_audited_and_lock_signing(engine: Engine) -> None:
    clock = Clock()
    signing.set_password(engine, ADA, "ada-signs-42", by=ADA, by_account="alice", clock=clock)
    with pytest.raises(NotPermitted, match="OS account bob may not act as dr.ada"):
        signing.authenticate(engine, ADA, "bob", "ada-signs-42", clock=clock)
    waits: list[float] = []
    for attempt in range(1, signing.MAX_FAILURES + 1):
        with pytest.raises(AuthenticationFailed) as err:
            signing.authenticate(engine, ADA, "alice", f"guess-{attempt}", clock=clock, sleep=waits.append)
        assert "\n" not in str(err.value)
    assert "locked for 5 minutes" in str(err.value) and waits == [signing.FAILURE_DELAY_S] * signing.MAX_FAILURES
    with pytest.raises(NotPermitted, match="locked until"):  # the right one too, while locked
        signing.authenticate(engine, ADA, "alice", "ada-signs-42", clock=clock)
    clock.now += timedelta(minutes=signing.LOCK_MINUTES, seconds=1)
    assert signing.authenticate(engine, ADA, "alice", "ada-signs-42", clock=clock).reader == "dr.ada"
    refused = events(engine, "signature_refused")
    assert [e["failures"] for e in refused] == [1, 2, 3, 4, 5] and refused[-1]["locked_until"] is not None
    assert {e["os_account"] for e in refused} == {"alice"} and all(e["actor"] == "dr.ada" for e in refused)


def test_pam_readers_sign_with_the_accounts_password_through_pam(engine: Engine) -> None:
    asked: list[tuple[str, str, str]] = []

    def fake_pam(account: str, password: str, service: str) -> bool:
        asked.append((account, password, service))
        return password == "os-password"

    cred = signing.authenticate(engine, PAM_READER, "pam-user", "os-password", pam_service="triage", pam=fake_pam)
    assert (cred.method, cred.os_account) == (AuthMethod.PAM, "pam-user") and asked == [("pam-user", "os-password", "triage")]
    with pytest.raises(AuthenticationFailed, match="wrong the OS account's password for dr.pam"):
        signing.authenticate(engine, PAM_READER, "pam-user", "bad", pam=fake_pam, sleep=no_sleep)


def _can_make_users() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a throw-away OS account"
    if not (shutil.which("useradd") and shutil.which("chpasswd") and shutil.which("userdel")):
        return "useradd/chpasswd/userdel not installed"
    if not Path("/etc/pam.d/login").is_file() and not Path("/etc/pam.d/other").is_file():
        return "no PAM 'login' service configured"
    return None


@pytest.mark.skipif(_can_make_users() is not None, reason=str(_can_make_users()))
def test_real_pam_checks_a_throw_away_accounts_password(engine: Engine) -> None:
    account = f"trg{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", account], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{account}:{password}\n", text=True, check=True)
        reader = Reader("dr.real", "Dr Real", Role.RADIOLOGIST, AuthMethod.PAM, (account,))
        assert signing.authenticate(engine, reader, account, password, pam_service="login").method is AuthMethod.PAM
        with pytest.raises(AuthenticationFailed):
            signing.authenticate(engine, reader, account, password + "x", pam_service="login", sleep=no_sleep)
    finally:
        subprocess.run(["userdel", account], check=False)


# --- the service takes only a fresh credential of the signer ------------------------------------


def test_sign_and_amend_refuse_missing_foreign_and_stale_credentials(engine: Engine, tmp_path: Path) -> None:
    clock = Clock()
    svc = WorklistService(engine, Settings(data_dir=tmp_path), clock=clock)
    add_study(engine, "1.2.3")
    svc.claim("1.2.3", "dr.ada")
    svc.save_draft("1.2.3", "dr.ada", "No bleed.")
    fresh = SigningCredential("dr.ada", AuthMethod.PASSWORD, "alice", T0)
    with pytest.raises(NotPermitted, match="must give their signing password again"):
        svc.sign("1.2.3", "dr.ada")
    with pytest.raises(NotPermitted, match="the password given was dr.bob's"):
        svc.sign("1.2.3", "dr.ada", SigningCredential("dr.bob", AuthMethod.PASSWORD, "bob", T0))
    clock.now = T0 + signing.CREDENTIAL_MAX_AGE + timedelta(seconds=1)
    with pytest.raises(NotPermitted, match="more than 2 minutes ago"):
        svc.sign("1.2.3", "dr.ada", fresh)
    assert svc.open("1.2.3", "dr.ada").reports[-1].signed_by is None

    clock.now = T0 + timedelta(seconds=30)
    assert svc.sign("1.2.3", "dr.ada", fresh) == 1
    svc.claim("1.2.3", "dr.ada")
    with pytest.raises(NotPermitted, match="the password given was dr.bob's"):
        svc.amend("1.2.3", "dr.ada", "Addendum.", SigningCredential("dr.bob", AuthMethod.PASSWORD, "bob", clock.now))
    pam_cred = SigningCredential("dr.ada", AuthMethod.PAM, "alice-2", clock.now)
    assert svc.amend("1.2.3", "dr.ada", "Addendum.", pam_cred) == 2
    history = {e["action"]: e["detail"] for e in svc.history("1.2.3")}
    assert (history["sign"]["auth"], history["sign"]["os_account"]) == ("password", "alice")
    assert (history["amend"]["auth"], history["amend"]["os_account"]) == ("pam", "alice-2")
