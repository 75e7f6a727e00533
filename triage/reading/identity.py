"""Who acts: the OS account running the command, mapped to a reader.

The acting reader is never a name someone types: it is the OS account that
runs the process (its effective uid, from the password database, not
``$USER``/``$LOGNAME``, which anyone can set), or a reader of the settings'
``[readers]`` table that lists this account in its ``os_accounts``. ``--user``,
``$TRIAGE_USER`` and ``[worklist] user`` only choose among the readers the
account may act as; anything else is refused with one line naming the account
and the readers it may act as.

With no ``[readers]`` table every OS account is the reader of its own name,
signing with a per-reader password (``auth = "password"``).

:func:`resolve_reader` is pure (the readers table, the account and the
requested name in; the reader out); :func:`os_account` and
:func:`acting_reader` read the process's account.
"""

from __future__ import annotations

import enum
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from triage.config import ReaderSettings, Settings
from triage.names import normalise_name
from triage.reading.states import NotPermitted, check_user


class Role(str, enum.Enum):
    """What a reader may do beyond reading (``[readers.NAME] role``)."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"  # may also reset other readers' signing passwords


class AuthMethod(str, enum.Enum):
    """The second identification component asked for at signing (``[readers.NAME] auth``)."""

    PASSWORD = "password"  # a per-reader secret, stored as a scrypt hash (triage.reading.signing)
    PAM = "pam"  # the OS account's own password, checked by PAM


@dataclass(frozen=True)
class Reader:
    """A reader: the name every action is recorded under, and how they sign.

    Attributes
    ----------
    name
        The reader's name (the audit actor, the report's signer).
    display_name
        How to show them ("Dr A. Example"); the name when not configured.
    role
        :class:`Role`.
    auth
        :class:`AuthMethod`: what signing asks for.
    os_accounts
        The OS accounts that may act as this reader.
    """

    name: str
    display_name: str
    role: Role
    auth: AuthMethod
    os_accounts: tuple[str, ...]


def readers_of(table: Mapping[str, ReaderSettings]) -> dict[str, Reader]:
    """The ``[readers]`` table as :class:`Reader` values, by name (names are checked when the settings load)."""
    return {
        name: Reader(
            name=name,
            display_name=cfg.display_name or name,
            role=Role(cfg.role),
            auth=AuthMethod(cfg.auth),
            os_accounts=tuple(cfg.os_accounts) if cfg.os_accounts is not None else (name,),
        )
        for name, cfg in table.items()
    }


def own_reader(account: str) -> Reader:
    """The reader an OS account is when there is no ``[readers]`` table: itself, signing with a password."""
    name = check_user(account, "act")
    return Reader(name=name, display_name=name, role=Role.RADIOLOGIST, auth=AuthMethod.PASSWORD, os_accounts=(account,))


def allowed_readers(table: Mapping[str, ReaderSettings], account: str) -> list[Reader]:
    """The readers ``account`` may act as, by name."""
    if not table:
        return [own_reader(account)]
    return sorted((r for r in readers_of(table).values() if account in r.os_accounts), key=lambda r: r.name)


def resolve_reader(table: Mapping[str, ReaderSettings], account: str, requested: str | None = None) -> Reader:
    """The reader that OS account ``account`` acts as, given the name it asked for.

    Parameters
    ----------
    table
        The settings' ``[readers]`` table (``Settings.readers``); empty: every
        account is the reader of its own name.
    account
        The OS account running the command (:func:`os_account`).
    requested
        ``--user`` / ``$TRIAGE_USER`` / ``[worklist] user``, or None/empty:
        the account's only reader.

    Raises
    ------
    NotPermitted
        If ``account`` may not act as ``requested``, is mapped to no reader, or
        is mapped to several and none was chosen; the message names the
        account and the readers it may act as.
    """
    allowed = allowed_readers(table, account)
    names = ", ".join(r.name for r in allowed)
    if requested and requested.strip():
        wanted = normalise_name(requested)
        for reader in allowed:
            if reader.name == wanted:
                return reader
        if not allowed:
            raise NotPermitted(f"OS account {account} may not act as {wanted}: it is mapped to no reader in [readers]")
        raise NotPermitted(f"OS account {account} may not act as {wanted}; it may act as: {names}")
    if len(allowed) == 1:
        return allowed[0]
    if not allowed:
        raise NotPermitted(f"OS account {account} is mapped to no reader in [readers]: it may not act")
    raise NotPermitted(f"OS account {account} may act as several readers ({names}): choose one with --user")


def os_account() -> str:
    """The OS account running this process: the effective uid's name in the password database.

    Never ``$USER`` or ``$LOGNAME``: anyone can set those.

    Raises
    ------
    NotPermitted
        If the effective uid has no entry in the password database (some containers).
    """
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise NotPermitted(f"uid {uid} has no account in the password database: nobody to act as") from None


def acting_reader(settings: Settings, requested: str | None = None, account: str | None = None) -> Reader:
    """The reader this process acts as: :func:`resolve_reader` with the settings and :func:`os_account`.

    ``requested`` None falls back on ``[worklist] user``.
    """
    return resolve_reader(settings.readers, account or os_account(), requested or settings.worklist.user or None)
