"""``triage case ACTION STUDY``: a radiologist's actions on one case from the command line.

The same worklist service as the terminal UI (``triage.reading.service``), so the
same rules hold: one reader at a time, only named humans, signed reports
immutable, every action audited. For scripts, headless hosts and integration.

(``triage worklist`` is the terminal UI; this is its command-line twin.)
The acting reader is the OS account running the command, or the reader of
``[readers]`` it is mapped to (``triage.reading.identity``); ``--user`` or
``$TRIAGE_USER`` only chooses among those. ``sign`` and ``amend`` ask for the
reader's password again (``triage.reading.signing``), on the terminal or with
``--password-stdin``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import select

from triage.app.case_conflicts import print_conflicts
from triage.app.studies import conflicts_line
from triage.clock import shown
from triage.errors import TriageError
from triage.reading import identity, signing
from triage.store.tables import STUDY
from triage.vocabulary import FINDING_KINDS

USER_ENV = "TRIAGE_USER"


def acting(args: argparse.Namespace, settings: Any) -> tuple[identity.Reader, str]:
    """The acting reader and the OS account: ``--user``/``$TRIAGE_USER`` choose among the account's readers."""
    account = identity.os_account()
    requested = args.user or os.environ.get(USER_ENV) or None
    return identity.acting_reader(settings, requested, account), account


def read_secret(prompt: str, from_stdin: bool) -> str:
    """A password: the first line of stdin with ``--password-stdin``, else asked on the terminal (not echoed)."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise TriageError("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise TriageError("no terminal to ask for the password on: give it with --password-stdin")
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise TriageError("no password given") from None


def credential_for(args: argparse.Namespace, service: Any, reader: identity.Reader, account: str) -> signing.SigningCredential:
    """Ask the reader's password again and check it (the second identification component at signing)."""
    if reader.auth is identity.AuthMethod.PAM:
        prompt = f"password of OS account {account} (to sign as {reader.name}): "
    else:
        prompt = f"signing password for {reader.name}: "
    secret = read_secret(prompt, args.password_stdin)
    return signing.authenticate(service.engine, reader, account, secret, pam_service=service.settings.worklist.pam_service)


def _text(args: argparse.Namespace) -> str:
    if args.file:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise TriageError(f"--file: cannot read {args.file}: {exc.strerror}") from None
    if args.text is None:
        raise TriageError("give the text as an argument or with --file FILE")
    return args.text


def resolve_study(engine: Any, key: str) -> str:
    """A Study Instance UID from a UID or an accession number (which must name one study)."""
    with engine.connect() as conn:
        if conn.execute(select(STUDY.c.id).where(STUDY.c.study_uid == key)).first():
            return key
        uids = conn.execute(select(STUDY.c.study_uid).where(STUDY.c.accession_number == key)).scalars().all()
    if len(uids) == 1:
        return str(uids[0])
    if len(uids) > 1:
        raise TriageError(f"accession number {key} names {len(uids)} studies; give the Study Instance UID")
    raise TriageError(f"no study with Study Instance UID or accession number {key!r}")


def _show(view: Any, zone: tzinfo) -> str:
    """``triage case show``: the study as the reader sees it; times on the site's clock (``zone``)."""
    s, u = view.study, view.urgency
    lines = [
        f"study {s.study_uid}",
        f"  patient {s.patient_id or '-'} {s.patient_name or ''}  sex {s.patient_sex or '-'}  age {s.patient_age or '-'}",
        f"  accession {s.accession_number or '-'}  {s.modality}  {s.description or ''}  order {s.order_priority or '-'}",
        f"  read state {s.read_state.value}"
        + (f", claimed by {s.claimed_by} until {shown(s.claim_expires, zone)}" if s.claimed_by and s.claim_expires else ""),
        f"  priority {u.priority_class.value} (score {u.score:.1f}); AI {s.ai_status}" + (f": {s.ai_reason}" if s.ai_reason else ""),
        *[f"    why: {r}" for r in u.reasons],
    ]
    if warning := conflicts_line(s):
        lines.insert(3, f"  {warning}")
    if view.ai_hidden:
        lines.append("  AI findings hidden until you record your impression (blinded read)")
    for f in view.findings:
        mark = "at/above" if f.urgent else "below"
        lines.append(
            f"  AI suggestion #{f.id}: {f.kind} {f.probability:.2f} ({mark} operating point "
            f"{f.operating_point:.2f}); model {f.model_name} {f.model_version} ({f.weights_sha256[:12]})"
        )
        for r in f.regions[:5]:
            where = f"slice {r.get('slice_index')}, box {tuple(r.get('box', ()))}"
            size = f", {r['diameter_mm']:.0f} mm" if r.get("diameter_mm") else ""
            lines.append(f"      region p {r.get('probability', 0):.2f}: {where}{size}")
        lines += [f"      note: {note}" for note in f.notes]
    if view.impression:
        lines.append(f"  your impression: {view.impression.text} (kinds: {', '.join(view.impression.kinds) or 'none'})")
    for fb in view.feedback:
        lines.append(f"  your feedback: {fb.verdict.value} on {fb.kind}" + (f" #{fb.finding_id}" if fb.finding_id else ""))
    for r in view.reports:
        who = f"signed by {r.signed_by} {shown(r.signed_at, zone, date=True)}" if r.signed_by and r.signed_at else "draft"
        amends = f", amends v{r.amends_id}" if r.amends_id else ""
        lines.append(f"  report v{r.version} ({who}{amends}): {r.text}")
    return "\n".join(lines)


def _run(args: argparse.Namespace, open_worklist: Callable[[argparse.Namespace], Any]) -> int:
    service = open_worklist(args)
    uid = resolve_study(service.engine, args.study)
    action = args.case
    if action == "conflicts":
        return print_conflicts(service.engine, uid, args.json, service.settings.site.zone)
    if action == "history":
        for event in service.history(uid):
            print(json.dumps(event, ensure_ascii=False, sort_keys=True))
        return 0
    reader, account = acting(args, service.settings)
    user = reader.name
    if action == "show":
        print(_show(service.open(uid, user), service.settings.site.zone))
    elif action == "claim":
        until = service.claim(uid, user)
        print(f"claimed {uid} for {user} until {shown(until, service.settings.site.zone, date=True)}")
    elif action == "release":
        state = service.release(uid, user)
        print(f"released {uid}; read state {state.value}")
    elif action == "impression":
        kinds = [k for k in (args.kinds or "").split(",") if k.strip()]
        service.record_impression(uid, user, _text(args), kinds)
        print(f"impression recorded for {uid}")
    elif action == "feedback":
        service.feedback(uid, user, args.verdict, finding_id=args.finding, kind=args.kind, comment=args.comment)
        print(f"feedback recorded for {uid}")
    elif action == "draft":
        version = service.save_draft(uid, user, _text(args))
        print(f"draft report v{version} saved for {uid}")
    elif action == "sign":
        version = service.sign(uid, user, credential_for(args, service, reader, account))
        print(f"report v{version} of {uid} signed by {user}")
    elif action == "amend":
        text = _text(args)
        version = service.amend(uid, user, text, credential_for(args, service, reader, account))
        print(f"amendment v{version} drafted for {uid}; sign it with `triage case sign`")
    else:  # pragma: no cover - argparse restricts the choices
        print(f"unknown action {action}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None], open_worklist: Callable[[argparse.Namespace], Any]) -> None:
    """Add ``case`` and its actions to the CLI; ``add_common`` adds the data-dir/config flags."""
    wl = sub.add_parser("case", help="a reader's actions on one study: show, claim, impression, feedback, draft, sign, amend")
    wsub = wl.add_subparsers(dest="case", metavar="ACTION", required=True)

    def action(name: str, help_text: str, text: bool = False) -> argparse.ArgumentParser:
        p = wsub.add_parser(name, help=help_text)
        p.add_argument("study", metavar="STUDY", help="Study Instance UID or accession number")
        p.add_argument("--user", help=f"the reader to act as, among those your OS account is mapped to (default ${USER_ENV})")
        if text:
            p.add_argument("text", nargs="?", help="the text (or --file)")
            p.add_argument("--file", metavar="FILE", help="read the text from this file")
        add_common(p)
        p.set_defaults(func=lambda args: _run(args, open_worklist))
        return p

    action("show", "open a study: facts, priority and reasons, AI suggestions with regions, reports (audited)")
    action("claim", "take the study (one reader at a time; the claim lapses after [worklist] claim_minutes)")
    action("release", "give the study back")
    p = action("impression", "record your own impression (before the AI output in blinded reads)", text=True)
    p.add_argument("--kinds", metavar="K,K", help="finding kinds you call present: bleed,fracture,nodule")
    p = action("feedback", "agree/disagree/unsure with an AI suggestion, or record a finding the AI missed")
    p.add_argument("verdict", choices=["agree", "disagree", "unsure", "missed"])
    p.add_argument("--finding", type=int, metavar="ID", help="the AI suggestion's id (from `show`)")
    p.add_argument("--kind", choices=FINDING_KINDS, help="for `missed`: what the AI missed")
    p.add_argument("--comment")
    action("draft", "save the report draft", text=True)
    p = action("sign", "sign the draft (named humans only, asks your password again; a signed report never changes)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin (scripts)")
    p = action("amend", "start an amendment of the signed report: a new version pointing to it (asks your password)", text=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin (scripts)")
    action("history", "the study's audit events as JSON lines")
    p = action("conflicts", "versions set aside: re-sent under the study's SOP Instance UIDs with other content")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
