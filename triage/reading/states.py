"""The reading state machine and who may act: pure rules, no database.

A study's reading state (:class:`triage.store.models.ReadState`) moves only along
:data:`TRANSITIONS`::

    unread --claim--> reading --sign--> signed --claim--> signed --amend--> reading
       ^                 |
       +----release------+   (only while nothing was recorded; else it stays reading)

Only a named human user may act (:func:`check_user`): the AI's identity and the
other system identities of ``triage.store.audit.RESERVED_ACTORS`` are refused. One
reader at a time holds a study's claim; a claim lapses at its expiry
(:func:`claim_is_live`). The errors here are the ones every worklist action
raises (:class:`WorklistError` and its subclasses); the service that applies
these rules to the database is :class:`triage.reading.service.WorklistService`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from triage import names
from triage.clock import as_utc
from triage.errors import TriageError
from triage.store import audit
from triage.vocabulary import ReadState

USER_MAX_CHARS = names.NAME_MAX_CHARS  # the user columns' width


# --- errors -------------------------------------------------------------------------------------


class WorklistError(TriageError):
    """A worklist action was refused; the message says what and why."""


class NotFound(WorklistError):
    """The study (or finding) named does not exist."""


class InvalidTransition(WorklistError):
    """The action is not allowed in the study's reading state, or its precondition is missing."""


class ClaimConflict(WorklistError):
    """Another reader holds a live claim on the study, or took it while this action ran."""


class NotPermitted(WorklistError):
    """The acting user may not do this: not a named human user, or not the claimant."""


class InvalidInput(WorklistError):
    """An argument is malformed (unknown verdict or finding kind, empty impression)."""


# --- the state machine (pure) -------------------------------------------------------------------


class ReadAction(str, enum.Enum):
    """What a reader can do to a study; the values are the audit actions they record."""

    CLAIM = "claim"
    RELEASE = "release"
    VIEW = "view"  # WorklistService.open
    IMPRESSION = "impression"
    FEEDBACK = "feedback"
    DRAFT = "draft"
    SIGN = "sign"
    AMEND = "amend"


_U, _R, _S = ReadState.UNREAD, ReadState.READING, ReadState.SIGNED
_A = ReadAction

TRANSITIONS: Mapping[tuple[ReadState, ReadAction], ReadState] = MappingProxyType(
    {
        (_U, _A.CLAIM): _R,
        (_R, _A.CLAIM): _R,  # a second reader takes over a lapsed claim; the claimant renews
        (_S, _A.CLAIM): _S,  # claimed for an amendment
        # Back to unread only while nothing was recorded (see release_target):
        # an impression, feedback or draft keeps the study in reading.
        (_R, _A.RELEASE): _U,
        (_S, _A.RELEASE): _S,
        (_U, _A.VIEW): _U,
        (_R, _A.VIEW): _R,
        (_S, _A.VIEW): _S,
        (_R, _A.IMPRESSION): _R,
        (_R, _A.FEEDBACK): _R,
        (_R, _A.DRAFT): _R,
        (_R, _A.SIGN): _S,
        (_S, _A.AMEND): _R,
    }
)
"""Every allowed (state, action) and the state it leads to; anything else is refused."""

VERBS = {
    _A.CLAIM: "claim",
    _A.RELEASE: "release",
    _A.VIEW: "open",
    _A.IMPRESSION: "record an impression on",
    _A.FEEDBACK: "give feedback on",
    _A.DRAFT: "save a draft report for",
    _A.SIGN: "sign",
    _A.AMEND: "amend",
}


def next_state(state: ReadState | str, action: ReadAction | str, study_uid: str = "") -> ReadState:
    """The state ``action`` leads to from ``state``, per :data:`TRANSITIONS`.

    Raises
    ------
    InvalidTransition
        If the table has no such transition; the message names state and action.
    """
    state, action = ReadState(state), ReadAction(action)
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        allowed = " or ".join(s.value for (s, a) in TRANSITIONS if a is action)
        what = f"study {study_uid}" if study_uid else "a study"
        raise InvalidTransition(f"cannot {VERBS[action]} {what} in state {state.value} ({action.value} needs {allowed})") from None


def release_target(state: ReadState | str, work_recorded: bool) -> ReadState:
    """The state after a release: the table's, except that a study with work on it stays reading."""
    target = next_state(state, ReadAction.RELEASE)
    if target is ReadState.UNREAD and work_recorded:
        return ReadState.READING
    return target


def check_user(user: object, verb: str = "act") -> str:
    """The acting user's name, NFKC-normalised and stripped, if it names a human user.

    Raises
    ------
    NotPermitted
        If ``user`` is not a non-empty string, is too long, contains a control
        character, or is or looks like a reserved system identity (the AI, the
        listener, "system"): case aside, after NFKC, and through Unicode
        confusables (``triage‐ai`` with U+2010, ``Ѕystem`` with a Cyrillic S;
        see :func:`triage.names.name_problem`).
    """
    if isinstance(user, str) and names.normalise_name(user).casefold() == audit.AI_ACTOR.casefold():
        raise NotPermitted(f"the AI ({audit.AI_ACTOR}) cannot {verb}")
    problem = names.name_problem(user, audit.RESERVED_ACTORS)
    if problem is not None:
        raise NotPermitted(f"cannot {verb}: {problem}")
    assert isinstance(user, str)
    return names.normalise_name(user)


def utc_or_none(value: datetime | None) -> datetime | None:
    """``value`` as aware UTC (None stays None)."""
    return None if value is None else as_utc(value)


def claim_is_live(claimed_by: str | None, claim_expires: datetime | None, now: datetime) -> bool:
    """Whether a claim still holds at ``now`` (it lapses at ``claim_expires``)."""
    expires = utc_or_none(claim_expires)
    return claimed_by is not None and expires is not None and now < expires
