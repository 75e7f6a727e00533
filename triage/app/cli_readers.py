"""``triage readers list|passwd``: the readers of ``[readers]`` and their signing passwords.

``passwd`` sets the acting reader's signing password (the second identification
component asked at every signature, ``triage.reading.signing``): it asks the
current one first when one is set, and the new one twice on the terminal, or
reads them from stdin, one per line, with ``--password-stdin``. An admin reader
may reset another reader's password with ``triage readers passwd NAME``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from triage import clock
from triage.app.cli_case import USER_ENV, acting, read_secret
from triage.errors import TriageError
from triage.reading import identity, signing


def _target(settings: Any, name: str | None, me: identity.Reader) -> identity.Reader:
    if not name or name == me.name:
        return me
    readers = identity.readers_of(settings.readers)
    if name not in readers:
        where = "in [readers]" if readers else "(there is no [readers] table: each OS account is only its own reader)"
        raise TriageError(f"no reader {name} {where}")
    return readers[name]


def _cmd_passwd(args: argparse.Namespace, open_worklist: Callable[[argparse.Namespace], Any]) -> int:
    service = open_worklist(args)
    me, account = acting(args, service.settings)
    target = _target(service.settings, args.name, me)
    own = target.name == me.name
    current = None
    if own and target.name in signing.password_set_at(service.engine):
        current = read_secret(f"current signing password for {target.name}: ", args.password_stdin)
    new = read_secret(f"new signing password for {target.name}: ", args.password_stdin)
    if not args.password_stdin and read_secret(f"again, new signing password for {target.name}: ", False) != new:
        raise TriageError("the two new passwords differ; nothing changed")
    signing.set_password(service.engine, target, new, by=me, by_account=account, current_password=current)
    print(f"signing password {'set' if own else 'reset'} for {target.name}" + ("" if own else f" by {me.name}"))
    return 0


def _cmd_list(args: argparse.Namespace, open_worklist: Callable[[argparse.Namespace], Any]) -> int:
    service = open_worklist(args)
    with_password = signing.password_set_at(service.engine)
    readers = identity.readers_of(service.settings.readers)
    if not readers:
        print("no [readers] table: each OS account acts as the reader of its own name and signs with a password")
        readers = {name: identity.own_reader(name) for name in sorted(with_password)}
    for r in sorted(readers.values(), key=lambda r: r.name):
        if r.auth is identity.AuthMethod.PAM:
            secret = "OS account password (PAM)"
        elif r.name in with_password:
            secret = f"password set {clock.shown(with_password[r.name], service.settings.site.zone, date=True)}"
        else:
            secret = "no password set"
        shown = f" ({r.display_name})" if r.display_name != r.name else ""
        print(f"{r.name}{shown}  role {r.role.value}  auth {r.auth.value}  os accounts {', '.join(r.os_accounts)}  {secret}")
    return 0


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None], open_worklist: Callable[[argparse.Namespace], Any]) -> None:
    """Add ``readers list`` and ``readers passwd`` to the CLI; ``add_common`` adds the data-dir/config flags."""
    rd = sub.add_parser("readers", help="the readers ([readers]), their roles and sign-in methods; set signing passwords")
    rsub = rd.add_subparsers(dest="readers", metavar="ACTION", required=True)
    p = rsub.add_parser("list", help="readers, roles, auth method, OS accounts, whether a signing password is set")
    add_common(p)
    p.set_defaults(func=lambda args: _cmd_list(args, open_worklist))
    p = rsub.add_parser("passwd", help="set your signing password (an admin reader may reset another reader's)")
    p.add_argument("name", nargs="?", metavar="NAME", help="the reader whose password to reset (admins only; default: you)")
    p.add_argument("--user", help=f"the reader to act as, among those your OS account is mapped to (default ${USER_ENV})")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the passwords from stdin, one per line: the current one (if one is set and it is yours), then the new one",
    )
    add_common(p)
    p.set_defaults(func=lambda args: _cmd_passwd(args, open_worklist))
