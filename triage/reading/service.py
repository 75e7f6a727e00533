"""The worklist service: the only door through which people change reading state.

Every human action (claim, release, open, impression, feedback, draft, sign,
amend) is one transaction that changes the study and appends its audit event,
so that state and audit trail cannot disagree. Only a named human user comes
through here: the AI's identity (and the other system identities of
``triage.store.audit.RESERVED_ACTORS``) is refused for every action, so the AI can
never claim, sign or take a case off the worklist.

The rules it applies (the reading state machine, who may act, the errors) are
in :mod:`triage.reading.states`; what it returns (the worklist's rows and a study as
opened) is in :mod:`triage.reading.views`.

One reader at a time holds a study's claim; a claim lapses ``claim_minutes``
after it was taken or last renewed, and then anyone may take it over. Study
updates are guarded by the state and claim they were decided on, so that two
readers (or processes) acting at once cannot both win: the loser gets
:class:`triage.reading.states.ClaimConflict` and nothing of theirs is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from triage.clock import as_utc, shown, utcnow
from triage.config import Settings
from triage.flow.cases import case_input, current_findings
from triage.flow.policy import assess
from triage.outbox import service as outbox
from triage.reading.signing import SigningCredential, check_credential
from triage.reading.states import (
    VERBS,
    ClaimConflict,
    InvalidInput,
    InvalidTransition,
    NotFound,
    NotPermitted,
    ReadAction,
    check_user,
    claim_is_live,
    next_state,
    release_target,
    utc_or_none,
)
from triage.reading.views import (
    FeedbackView,
    ImpressionView,
    ReportVersion,
    SeriesImages,
    StudyView,
    WorklistItem,
    blind_urgency,
    study_facts,
    worklist_order_key,
)
from triage.store import audit
from triage.store.tables import FEEDBACK, FINDING, IMPRESSION, INSTANCE, REPORT, SERIES, STUDY, inserted_pk
from triage.vocabulary import FINDING_KINDS, ReadState, ReportStatus, Verdict

log = logging.getLogger(__name__)


def _normalise_kinds(kinds: Iterable[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(kinds, str):  # "bleed,nodule", as Impression.kinds stores them
        kinds = [k for k in kinds.split(",") if k.strip()]
    out: list[str] = []
    for kind in kinds:
        k = kind.strip().lower() if isinstance(kind, str) else kind
        if k not in FINDING_KINDS:
            raise InvalidInput(f'{what}: "{kind}" is not a finding kind ({", ".join(FINDING_KINDS)})')
        if k not in out:
            out.append(k)
    return tuple(out)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _signature_detail(credential: SigningCredential) -> dict[str, str]:
    """How the signer was identified (21 CFR 11.50: the signature's manifestation names its meaning and maker)."""
    return {"auth": credential.method.value, "os_account": credential.os_account, "authenticated_at": credential.at.isoformat()}


# --- the service --------------------------------------------------------------------------------


class WorklistService:
    """Claim, read, give feedback, report, sign and amend; list and open studies.

    Parameters
    ----------
    engine
        The study index (``triage.store.db.make_engine``).
    settings
        ``settings.policy`` ranks the studies, ``settings.worklist`` sets claim
        lapse and blinded reads.
    clock
        Returns the current time, timezone-aware UTC (injected by tests).

    Every method takes the acting user's name; every state-changing method and
    :meth:`open` write exactly one audit event with that user as actor, in the
    same transaction as the change. Errors are :class:`triage.reading.states.WorklistError` subclasses.
    """

    def __init__(self, engine: Engine, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock

    # -- helpers --------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = utc_or_none(self.clock())
        assert now is not None
        return now

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction that changes rows and appends an audit event: the audit
        chain's lock comes first, as in every appending writer (``audit.lock_chain``),
        so that on PostgreSQL it cannot deadlock with the index or the scoring worker."""
        with self.engine.begin() as conn:
            audit.lock_chain(conn)
            yield conn

    def _claim_until(self, now: datetime) -> datetime:
        return now + timedelta(minutes=self.settings.worklist.claim_minutes)

    @staticmethod
    def _study(conn: Connection, study_uid: str) -> Row:
        row = conn.execute(select(STUDY).where(STUDY.c.study_uid == study_uid)).first()
        if row is None:
            raise NotFound(f"study {study_uid} not found")
        return row

    def _hhmm(self, value: datetime | None) -> str:
        return shown(utc_or_none(value), self.settings.site.zone)  # the site's clock: what the reader's wall clock reads

    def _require_claimant(self, study: Row, user: str, now: datetime, action: ReadAction) -> None:
        verb = VERBS[action]
        # The user's own claim counts even after it lapsed: had anyone taken it
        # over since, claimed_by would name them.
        if study.claimed_by == user:
            return
        if claim_is_live(study.claimed_by, study.claim_expires, now):
            raise ClaimConflict(
                f"cannot {verb} study {study.study_uid}: it is claimed by {study.claimed_by} until {self._hhmm(study.claim_expires)}"
            )
        raise NotPermitted(f"cannot {verb} study {study.study_uid}: {user} has not claimed it (claim it first)")

    @staticmethod
    def _set_study(conn: Connection, study: Row, action: ReadAction, **values: Any) -> None:
        # Guarded by the state and claim the action was decided on: if another
        # reader changed them since we read the row, no row matches and this
        # action loses (its transaction rolls back).
        result = conn.execute(
            update(STUDY)
            .where(
                STUDY.c.id == study.id,
                STUDY.c.read_state == study.read_state,
                STUDY.c.claimed_by.is_not_distinct_from(study.claimed_by),
                STUDY.c.claim_expires.is_not_distinct_from(study.claim_expires),
            )
            .values(**values)
        )
        if result.rowcount != 1:
            raise ClaimConflict(f"cannot {VERBS[action]} study {study.study_uid}: it changed while you acted; reload and try again")

    @staticmethod
    def _audit(conn: Connection, user: str, action: ReadAction, study_uid: str, detail: Mapping[str, Any], now: datetime) -> int:
        return audit.append(conn, actor=user, action=audit.Action(action.value), study_uid=study_uid, detail=detail, at=now)

    @staticmethod
    def _has_impression(conn: Connection, study_pk: int, user: str) -> bool:
        found = conn.execute(select(IMPRESSION.c.id).where(IMPRESSION.c.study_pk == study_pk, IMPRESSION.c.user == user)).first()
        return found is not None

    @staticmethod
    def _newest_report(conn: Connection, study_pk: int) -> Row | None:
        return conn.execute(select(REPORT).where(REPORT.c.study_pk == study_pk).order_by(REPORT.c.version.desc()).limit(1)).first()

    @staticmethod
    def _newest_signed(conn: Connection, study_pk: int) -> Row | None:
        return conn.execute(
            select(REPORT)
            .where(REPORT.c.study_pk == study_pk, REPORT.c.status == ReportStatus.SIGNED.value)
            .order_by(REPORT.c.version.desc())
            .limit(1)
        ).first()

    def _claimant_step(self, conn: Connection, study_uid: str, user: str, action: ReadAction, now: datetime) -> tuple[Row, ReadState]:
        """Load the study and check state and claim for a claimant-only action."""
        study = self._study(conn, study_uid)
        target = next_state(study.read_state, action, study_uid)
        self._require_claimant(study, user, now, action)
        return study, target

    def _advance(self, conn: Connection, study: Row, action: ReadAction, target: ReadState, now: datetime) -> None:
        """Move a claimant's study to ``target`` and renew the claim: working on it shows they are still reading."""
        self._set_study(conn, study, action, read_state=target.value, claim_expires=self._claim_until(now))

    # -- claim and release ----------------------------------------------------------------------

    def claim(self, study_uid: str, user: str) -> datetime:
        """Claim a study for reading (or amendment), or renew one's own claim.

        ``unread`` becomes ``reading``; ``reading`` and ``signed`` stay. A claim
        by another user blocks until it lapses, ``worklist.claim_minutes`` after
        it was taken or renewed.

        Returns
        -------
        datetime
            When the claim lapses unless renewed.

        Raises
        ------
        NotPermitted, NotFound, ClaimConflict
        """
        user = check_user(user, "claim")
        now = self._now()
        with self._writing() as conn:
            study = self._study(conn, study_uid)
            target = next_state(study.read_state, ReadAction.CLAIM, study_uid)
            live = claim_is_live(study.claimed_by, study.claim_expires, now)
            if live and study.claimed_by != user:
                raise ClaimConflict(f"study {study_uid} is claimed by {study.claimed_by} until {self._hhmm(study.claim_expires)}")
            expires = self._claim_until(now)
            self._set_study(conn, study, ReadAction.CLAIM, read_state=target.value, claimed_by=user, claim_expires=expires)
            detail = {
                "from": study.read_state,
                "to": target.value,
                "expires": expires.isoformat(),
                "renewed": live and study.claimed_by == user,
            }
            if study.claimed_by not in (None, user):
                detail["lapsed_claim_of"] = study.claimed_by
            self._audit(conn, user, ReadAction.CLAIM, study_uid, detail, now)
        return expires

    def release(self, study_uid: str, user: str) -> ReadState:
        """Give up the claim on a study.

        Only the claimant may release while the claim is live; after it lapsed
        anyone may. A study in ``reading`` goes back to ``unread`` only if no
        impression, feedback or report was recorded on it; otherwise it stays.

        Returns
        -------
        ReadState
            The study's state afterwards.

        Raises
        ------
        NotPermitted, NotFound, InvalidTransition, ClaimConflict
        """
        user = check_user(user, "release")
        now = self._now()
        with self._writing() as conn:
            study = self._study(conn, study_uid)
            next_state(study.read_state, ReadAction.RELEASE, study_uid)
            if study.claimed_by is None:
                raise InvalidTransition(f"cannot release study {study_uid}: it is not claimed")
            if study.claimed_by != user and claim_is_live(study.claimed_by, study.claim_expires, now):
                raise ClaimConflict(
                    f"cannot release study {study_uid}: it is claimed by {study.claimed_by} until {self._hhmm(study.claim_expires)}"
                )
            worked = any(
                conn.execute(select(table.c.id).where(table.c.study_pk == study.id).limit(1)).first() is not None
                for table in (IMPRESSION, FEEDBACK, REPORT)
            )
            target = release_target(study.read_state, worked)
            self._set_study(conn, study, ReadAction.RELEASE, read_state=target.value, claimed_by=None, claim_expires=None)
            detail: dict[str, Any] = {"from": study.read_state, "to": target.value}
            if study.claimed_by != user:
                detail["lapsed_claim_of"] = study.claimed_by
            self._audit(conn, user, ReadAction.RELEASE, study_uid, detail, now)
        return target

    # -- reading --------------------------------------------------------------------------------

    def open(self, study_uid: str, user: str) -> StudyView:
        """Open a study: its facts, urgency, AI findings, the user's impression and feedback, the reports.

        Allowed in any state without a claim; recorded as a ``view`` audit event
        (with the finding ids shown, so the trail says what the reader saw). In
        blinded mode the AI output stays hidden until the user has recorded an
        impression of this study.

        Raises
        ------
        NotPermitted, NotFound
        """
        user = check_user(user, "open")
        now = self._now()
        with self.engine.begin() as conn:
            study = self._study(conn, study_uid)
            next_state(study.read_state, ReadAction.VIEW, study_uid)
            findings = tuple(current_findings(conn, [study.id]).get(study.id, []))
            case = case_input(study._mapping, list(findings))
            urgency = assess(case, now, self.settings.policy)
            impression_row = conn.execute(select(IMPRESSION).where(IMPRESSION.c.study_pk == study.id, IMPRESSION.c.user == user)).first()
            hidden = self.settings.worklist.blinded and impression_row is None
            if hidden:
                findings, urgency = (), blind_urgency(case, urgency, now, self.settings.policy)
            feedback_rows = conn.execute(
                select(FEEDBACK)
                .where(FEEDBACK.c.study_pk == study.id, FEEDBACK.c.user == user)
                .order_by(FEEDBACK.c.created_at, FEEDBACK.c.id)
            ).all()
            report_rows = conn.execute(select(REPORT).where(REPORT.c.study_pk == study.id).order_by(REPORT.c.version)).all()
            self._audit(
                conn,
                user,
                ReadAction.VIEW,
                study_uid,
                {"read_state": study.read_state, "ai_hidden": hidden, "findings_shown": [f.id for f in findings]},
                now,
            )
        impression = None
        if impression_row is not None:
            impression = ImpressionView(
                id=impression_row.id,
                user=impression_row.user,
                text=impression_row.text,
                kinds=tuple(k for k in impression_row.kinds.split(",") if k),
                created_at=as_utc(impression_row.created_at),
            )
        return StudyView(
            study=study_facts(study, now),
            urgency=urgency,
            findings=findings,
            ai_hidden=hidden,
            impression=impression,
            feedback=tuple(
                FeedbackView(
                    id=r.id,
                    user=r.user,
                    verdict=Verdict(r.verdict),
                    finding_id=r.finding_pk,
                    kind=r.kind,
                    comment=r.comment,
                    created_at=as_utc(r.created_at),
                )
                for r in feedback_rows
            ),
            reports=tuple(
                ReportVersion(
                    id=r.id,
                    version=r.version,
                    status=ReportStatus(r.status),
                    text=r.text,
                    author=r.author,
                    created_at=as_utc(r.created_at),
                    updated_at=as_utc(r.updated_at),
                    signed_by=r.signed_by,
                    signed_at=utc_or_none(r.signed_at),
                    amends_id=r.amends_pk,
                )
                for r in report_rows
            ),
        )

    def record_impression(self, study_uid: str, user: str, text: str, kinds: Iterable[str] = ()) -> int:
        """Record the user's own impression of a study, before (blinded mode) seeing the AI's.

        Claimant only, in ``reading``; once per user per study.

        Parameters
        ----------
        text
            The impression in words; must not be empty.
        kinds
            The finding kinds the reader calls present (``bleed``, ``fracture``,
            ``nodule``), or one comma-separated string of them; empty means none.

        Returns
        -------
        int
            The impression's id.

        Raises
        ------
        NotPermitted, NotFound, InvalidTransition, ClaimConflict, InvalidInput
        """
        user = check_user(user, "record an impression")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"cannot record an impression on study {study_uid}: the text is empty")
        clean_kinds = _normalise_kinds(kinds, "impression")
        now = self._now()
        with self._writing() as conn:
            study, target = self._claimant_step(conn, study_uid, user, ReadAction.IMPRESSION, now)
            if self._has_impression(conn, study.id, user):
                raise InvalidTransition(f"cannot record an impression on study {study_uid}: {user} already recorded one")
            self._advance(conn, study, ReadAction.IMPRESSION, target, now)
            try:
                impression_id = inserted_pk(
                    conn.execute(
                        insert(IMPRESSION).values(
                            study_pk=study.id, user=user, text=text.strip(), kinds=",".join(clean_kinds), created_at=now
                        )
                    )
                )
            except IntegrityError:  # recorded by a concurrent request of the same user
                raise InvalidTransition(f"cannot record an impression on study {study_uid}: {user} already recorded one") from None
            detail = {"impression_id": impression_id, "kinds": list(clean_kinds)}
            self._audit(conn, user, ReadAction.IMPRESSION, study_uid, detail, now)
        return int(impression_id)

    def feedback(
        self,
        study_uid: str,
        user: str,
        verdict: Verdict | str,
        finding_id: int | None = None,
        kind: str | None = None,
        comment: str | None = None,
    ) -> int:
        """Record the user's verdict on an AI finding, or a finding the AI missed.

        Claimant only, in ``reading``; in blinded mode only after the user's
        impression. A user may give feedback on the same finding again: that
        adds a new row and the newest one counts (earlier ones stay, for audit).

        Parameters
        ----------
        verdict
            ``agree``, ``disagree`` or ``unsure`` on the finding ``finding_id``
            of this study (``kind``, if given, must be the finding's kind); or
            ``missed`` with a ``kind`` and no ``finding_id``.
        comment
            Free text, optional.

        Returns
        -------
        int
            The feedback's id.

        Raises
        ------
        NotPermitted, NotFound, InvalidTransition, ClaimConflict, InvalidInput
        """
        user = check_user(user, "give feedback")
        try:
            verdict = Verdict(verdict.strip().lower() if isinstance(verdict, str) else verdict)
        except ValueError:
            allowed = ", ".join(v.value for v in Verdict)
            raise InvalidInput(f'feedback on study {study_uid}: verdict "{verdict}" is not one of {allowed}') from None
        if verdict is Verdict.MISSED:
            if finding_id is not None:
                raise InvalidInput(f"feedback on study {study_uid}: a missed finding has no finding_id (the AI made none)")
            if kind is None:
                raise InvalidInput(f"feedback on study {study_uid}: a missed finding needs its kind")
        elif finding_id is None:
            raise InvalidInput(f"feedback on study {study_uid}: verdict {verdict.value} needs the finding_id it is about")
        clean_kind = _normalise_kinds([kind], "feedback")[0] if kind is not None else None
        now = self._now()
        with self._writing() as conn:
            study, target = self._claimant_step(conn, study_uid, user, ReadAction.FEEDBACK, now)
            if self.settings.worklist.blinded and not self._has_impression(conn, study.id, user):
                raise InvalidTransition(f"cannot give feedback on study {study_uid}: blinded reads need {user}'s impression first")
            if finding_id is not None:
                finding = conn.execute(
                    select(FINDING.c.id, FINDING.c.kind).where(FINDING.c.id == finding_id, FINDING.c.study_pk == study.id)
                ).first()
                if finding is None:
                    raise NotFound(f"feedback on study {study_uid}: finding {finding_id} is not one of its AI findings")
                if clean_kind is not None and clean_kind != finding.kind:
                    raise InvalidInput(f"feedback on study {study_uid}: finding {finding_id} is a {finding.kind}, not a {clean_kind}")
                clean_kind = finding.kind
            assert clean_kind is not None
            self._advance(conn, study, ReadAction.FEEDBACK, target, now)
            feedback_id = inserted_pk(
                conn.execute(
                    insert(FEEDBACK).values(
                        study_pk=study.id,
                        finding_pk=finding_id,
                        kind=clean_kind,
                        verdict=verdict.value,
                        comment=comment,
                        user=user,
                        created_at=now,
                    )
                )
            )
            self._audit(
                conn,
                user,
                ReadAction.FEEDBACK,
                study_uid,
                {"feedback_id": feedback_id, "verdict": verdict.value, "finding_id": finding_id, "kind": clean_kind},
                now,
            )
        return int(feedback_id)

    # -- reports --------------------------------------------------------------------------------

    def save_draft(self, study_uid: str, user: str, text: str) -> int:
        """Create or update the study's draft report.

        Claimant only, in ``reading``. The draft is the newest report version
        when it is a draft; otherwise a new version is created. A signed
        version is never touched.

        Returns
        -------
        int
            The draft's version number.

        Raises
        ------
        NotPermitted, NotFound, InvalidTransition, ClaimConflict
        """
        user = check_user(user, "save a draft report")
        if not isinstance(text, str):
            raise InvalidInput(f"cannot save a draft report for study {study_uid}: text must be a string")
        now = self._now()
        with self._writing() as conn:
            study, target = self._claimant_step(conn, study_uid, user, ReadAction.DRAFT, now)
            self._advance(conn, study, ReadAction.DRAFT, target, now)
            newest = self._newest_report(conn, study.id)
            if newest is not None and newest.status == ReportStatus.DRAFT.value:
                version, created = newest.version, False
                result = conn.execute(
                    update(REPORT)
                    .where(REPORT.c.id == newest.id, REPORT.c.status == ReportStatus.DRAFT.value)
                    .values(text=text, updated_at=now)
                )
                if result.rowcount != 1:
                    raise ClaimConflict(f"cannot save a draft report for study {study_uid}: it was signed meanwhile")
            else:
                signed = self._newest_signed(conn, study.id)
                version, created = (newest.version + 1 if newest is not None else 1), True
                conn.execute(
                    insert(REPORT).values(
                        study_pk=study.id,
                        version=version,
                        text=text,
                        status=ReportStatus.DRAFT.value,
                        author=user,
                        created_at=now,
                        updated_at=now,
                        amends_pk=signed.id if signed is not None else None,
                    )
                )
            self._audit(
                conn,
                user,
                ReadAction.DRAFT,
                study_uid,
                {"version": version, "created": created, "chars": len(text), "text_sha256": _sha256(text)},
                now,
            )
        return version

    def sign(self, study_uid: str, user: str, credential: SigningCredential | None = None) -> int:
        """Sign the draft report: it becomes an immutable signed version and the study ``signed``.

        Claimant only, in ``reading``, with a non-empty draft, and with the
        reader's fresh ``credential`` (:func:`triage.reading.signing.authenticate`:
        the second identification component, 21 CFR 11.200). The claim is
        cleared. A signed version is never updated again; changes go into an
        amendment (:meth:`amend`). The audit event records how the reader
        authenticated and from which OS account.

        Returns
        -------
        int
            The signed version number.

        Raises
        ------
        NotPermitted, NotFound, InvalidTransition, ClaimConflict
        """
        user = check_user(user, "sign")
        now = self._now()
        credential = check_credential(credential, user, "sign", now)
        with self._writing() as conn:
            study, target = self._claimant_step(conn, study_uid, user, ReadAction.SIGN, now)
            draft = self._newest_report(conn, study.id)
            if draft is None or draft.status != ReportStatus.DRAFT.value:
                raise InvalidTransition(f"cannot sign study {study_uid}: no draft report")
            if not draft.text.strip():
                raise InvalidTransition(f"cannot sign study {study_uid}: the draft report is empty")
            self._set_study(conn, study, ReadAction.SIGN, read_state=target.value, claimed_by=None, claim_expires=None)
            result = conn.execute(
                update(REPORT)
                .where(REPORT.c.id == draft.id, REPORT.c.status == ReportStatus.DRAFT.value)
                .values(status=ReportStatus.SIGNED.value, signed_by=user, signed_at=now, updated_at=now)
            )
            if result.rowcount != 1:
                raise ClaimConflict(f"cannot sign study {study_uid}: the draft was signed meanwhile")
            # The report SR for the PACS is queued in the signing transaction: only a signed report goes out.
            outbox.enqueue_report(conn, self.settings, study.id, draft.id, now)
            self._audit(
                conn,
                user,
                ReadAction.SIGN,
                study_uid,
                {
                    "version": draft.version,
                    "report_id": draft.id,
                    "amends_id": draft.amends_pk,
                    "text_sha256": _sha256(draft.text),
                    **_signature_detail(credential),
                },
                now,
            )
        return int(draft.version)

    def amend(self, study_uid: str, user: str, text: str, credential: SigningCredential | None = None) -> int:
        """Start an amendment of a signed report: a new draft version pointing to the newest signed one.

        Claimant only (claim the signed study first), in ``signed``, with the
        reader's fresh ``credential`` as for :meth:`sign`; the study goes back
        to ``reading`` until :meth:`sign` signs the amendment. The signed
        version is not changed.

        Returns
        -------
        int
            The new version number.

        Raises
        ------
        NotPermitted, NotFound, InvalidTransition, ClaimConflict
        """
        user = check_user(user, "amend")
        if not isinstance(text, str):
            raise InvalidInput(f"cannot amend study {study_uid}: text must be a string")
        now = self._now()
        credential = check_credential(credential, user, "amend", now)
        with self._writing() as conn:
            study, target = self._claimant_step(conn, study_uid, user, ReadAction.AMEND, now)
            signed = self._newest_signed(conn, study.id)
            if signed is None:
                raise InvalidTransition(f"cannot amend study {study_uid}: no signed report")
            newest = self._newest_report(conn, study.id)
            assert newest is not None
            version = newest.version + 1
            self._advance(conn, study, ReadAction.AMEND, target, now)
            conn.execute(
                insert(REPORT).values(
                    study_pk=study.id,
                    version=version,
                    text=text,
                    status=ReportStatus.DRAFT.value,
                    author=user,
                    created_at=now,
                    updated_at=now,
                    amends_pk=signed.id,
                )
            )
            self._audit(
                conn,
                user,
                ReadAction.AMEND,
                study_uid,
                {
                    "version": version,
                    "amends_version": signed.version,
                    "amends_id": signed.id,
                    "text_sha256": _sha256(text),
                    **_signature_detail(credential),
                },
                now,
            )
        return version

    # -- listing --------------------------------------------------------------------------------

    def items(self, user: str | None = None, include_signed: bool = True) -> list[WorklistItem]:
        """Every study, most urgent first, with its urgency and the AI's findings.

        Studies still to be read come first in the policy's order
        (``triage.flow.policy.rank`` at the current clock), then signed ones in the
        policy's order: a signed study has been read, and ageing would
        otherwise float old signed studies above waiting ones. Nothing is left
        out except signed studies when ``include_signed`` is False.

        Parameters
        ----------
        user
            The reader looking. In blinded mode their studies without an
            impression show no findings (``ai_hidden``). ``None`` is the
            unblinded supervisor / command-line view.
        include_signed
            Whether to list signed studies.

        Raises
        ------
        NotPermitted
            If ``user`` is given and is not a named human user.
        """
        if user is not None:
            user = check_user(user, "see the worklist")
        items = self._build_items(None, user, include_signed)
        items.sort(key=worklist_order_key)
        return [dataclasses.replace(item, rank=position) for position, item in enumerate(items, start=1)]

    def items_for(self, study_uids: Iterable[str], user: str | None = None) -> list[WorklistItem]:
        """The current worklist rows of some studies (for a live view's incremental update).

        Same content as :meth:`items`, in no particular order, with ``rank`` 0:
        the caller merges them into the rows it holds and sorts with
        :func:`worklist_order_key`. Unknown UIDs are skipped.
        """
        if user is not None:
            user = check_user(user, "see the worklist")
        wanted = list(dict.fromkeys(study_uids))
        return self._build_items(wanted, user, include_signed=True) if wanted else []

    def _build_items(self, study_uids: list[str] | None, user: str | None, include_signed: bool) -> list[WorklistItem]:
        now = self._now()
        blinded = self.settings.worklist.blinded and user is not None
        with self.engine.connect() as conn:
            query = select(STUDY)
            if not include_signed:
                query = query.where(STUDY.c.read_state != ReadState.SIGNED.value)
            if study_uids is not None:
                query = query.where(STUDY.c.study_uid.in_(study_uids))
            studies = conn.execute(query).all()
            # One query for the findings of all these studies, not one per study.
            findings = current_findings(conn, None if study_uids is None else [s.id for s in studies])
            seen: set[int] = set()
            if blinded:
                seen = set(conn.execute(select(IMPRESSION.c.study_pk).where(IMPRESSION.c.user == user)).scalars())
        out: list[WorklistItem] = []
        for row in studies:
            case = case_input(row._mapping, findings.get(row.id, []))
            urgency = assess(case, now, self.settings.policy)
            hidden = blinded and row.id not in seen
            out.append(
                WorklistItem(
                    rank=0,
                    study=study_facts(row, now),
                    urgency=blind_urgency(case, urgency, now, self.settings.policy) if hidden else urgency,
                    findings=() if hidden else tuple(findings.get(row.id, [])),
                    ai_hidden=hidden,
                )
            )
        return out

    # -- for live views -------------------------------------------------------------------------

    def change_token(self) -> int:
        """A number that grows with every change to any study (the audit trail's length).

        Every change the product makes is an audit event (instances received,
        series complete, inference, rank change, every human action), so a view
        that holds the token of its last load knows whether to look again
        with one tiny read. Waiting time is not a change: views re-rank on a timer.
        """
        with self.engine.connect() as conn:
            seq = conn.execute(select(audit.HEAD.c.seq)).scalar()
        return int(seq or 0)

    def changes_since(self, token: int) -> tuple[int, set[str]]:
        """The studies with an audit event after ``token``, and the new token."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit.EVENT.c.seq, audit.EVENT.c.study_uid).where(audit.EVENT.c.seq > token)).all()
        if not rows:
            return token, set()
        return max(r.seq for r in rows), {r.study_uid for r in rows if r.study_uid}

    def series_images(self, study_uid: str) -> list[SeriesImages]:
        """The study's series and their stored files (for the image preview), in series-number order.

        Raises
        ------
        NotFound
            If there is no such study.
        """
        with self.engine.connect() as conn:
            study = self._study(conn, study_uid)
            series = conn.execute(select(SERIES).where(SERIES.c.study_pk == study.id).order_by(SERIES.c.series_number, SERIES.c.id)).all()
            files = conn.execute(
                select(INSTANCE.c.series_pk, INSTANCE.c.path, INSTANCE.c.sop_instance_uid)
                .where(INSTANCE.c.series_pk.in_([s.id for s in series]))
                .order_by(INSTANCE.c.instance_number, INSTANCE.c.sop_instance_uid)
            ).all()
        by_series: dict[int, list[tuple[Path, str]]] = {}
        for row in files:
            by_series.setdefault(row.series_pk, []).append((self.settings.data_dir / row.path, row.sop_instance_uid))
        return [
            SeriesImages(
                series_uid=s.series_uid,
                modality=s.modality,
                description=s.series_description,
                body_part=s.body_part,
                manufacturer=s.manufacturer,
                series_number=s.series_number,
                files=tuple(p for p, _ in by_series.get(s.id, [])),
                sop_instance_uids=tuple(u for _, u in by_series.get(s.id, [])),
                pixels_purged_at=utc_or_none(study.pixels_purged_at),
            )
            for s in series
        ]

    def results(self, study_uid: str) -> list[outbox.ResultState]:
        """The study's result objects for the PACS (AI SR, key images, report SR), one per destination.

        Each says its kind, destination, status (``pending`` or ``sent``),
        attempts, last error and when it was sent; oldest first.

        Raises
        ------
        NotFound
            If there is no such study.
        """
        with self.engine.connect() as conn:
            study = self._study(conn, study_uid)
            return outbox.results_for(conn, [study.id]).get(study.id, [])

    def results_by_study(self, study_uids: Iterable[str] | None = None) -> dict[str, list[outbox.ResultState]]:
        """:meth:`results` of several studies (all when ``study_uids`` is None) in one query, by Study UID.

        Studies without result objects are left out; unknown UIDs are skipped.
        """
        with self.engine.connect() as conn:
            query = select(STUDY.c.id, STUDY.c.study_uid)
            if study_uids is not None:
                query = query.where(STUDY.c.study_uid.in_(list(dict.fromkeys(study_uids))))
            uids = {pk: uid for pk, uid in conn.execute(query)}
            by_pk = outbox.results_for(conn, None if study_uids is None else list(uids))
        return {uids[pk]: states for pk, states in by_pk.items() if pk in uids}

    def history(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's audit events, oldest first, as ``triage.store.audit.events_for_study`` gives them.

        Each is a dict with ``seq``, ``at`` (ISO 8601 UTC), ``actor``, ``action``,
        ``study_uid``, ``detail`` (parsed), ``prev_hash`` and ``hash``.

        Raises
        ------
        NotFound
            If there is no such study.
        """
        with self.engine.connect() as conn:
            self._study(conn, study_uid)
        return audit.events_for_study(self.engine, study_uid)
