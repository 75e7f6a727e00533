"""Human names versus the system's own identities: who may appear as a reader.

The audit trail tells the AI (``triage-ai``), the DICOM listener and the server
("system") apart from people by name. A reader called ``triage‐ai`` (with
U+2010 HYPHEN), ``Ѕystem`` (Cyrillic DZE) or ``ｔriage-ai`` (fullwidth) would be
a person whose actions read as the system's in any listing, so such names are
refused wherever a reader's name enters: the worklist service
(``triage.reading.states.check_user``) and the ``[readers]`` table of the
settings (``triage.config``).

Two names are "the same to the eye" when their skeletons are equal, in the sense
of Unicode Technical Standard #39 §4 (Confusable Detection): NFKC (which folds
fullwidth and compatibility forms), default-ignorable characters dropped, each
character replaced by a representative of its confusable class, case folded.
The confusable classes come from the Unicode ``confusables.txt`` data as
packaged by ``confusable-homoglyphs``; it lists confusable pairs, which are
joined into classes here (each source character and its prototype). Only
single-character mappings are used: multi-character ones (``rn`` / ``m``) are
left out, which is enough to guard a handful of short ASCII identities.

Pure functions; the data is loaded once, on first use.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable

AI_ACTOR = "triage-ai"  # the AI's identity in the audit trail
LISTENER_ACTOR = "listener"  # DICOM receive events
SYSTEM_ACTOR = "system"  # the server's own decisions: series complete, priority class changed
SYSTEM_IDENTITIES = frozenset({AI_ACTOR, LISTENER_ACTOR, SYSTEM_ACTOR})
"""The identities that are never a person (the audit trail's ``RESERVED_ACTORS``)."""

NAME_MAX_CHARS = 64  # the user columns' width

_DIRECTION_MARKS = "\u200e\u200f"  # confusable-homoglyphs wraps right-to-left characters in these
# Bidirectional embeddings, overrides and isolates (UAX #9): they reorder what is shown, so a
# name containing one can display as another name.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@functools.cache
def _classes() -> dict[str, str]:
    """Character -> representative of its confusable class (the smallest code point in it)."""
    from confusable_homoglyphs.confusables import confusables_data  # loads its JSON on import

    parent: dict[str, str] = {}

    def find(c: str) -> str:
        root = c
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(c, c) != root:  # path compression
            parent[c], c = root, parent[c]
        return root

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for key, homoglyphs in confusables_data.items():
        source = key.strip(_DIRECTION_MARKS)
        if len(source) != 1:
            continue
        for entry in homoglyphs:
            target = entry["c"].strip(_DIRECTION_MARKS)
            if len(target) == 1:
                union(source, target)
    return {c: find(c) for c in parent}


def _default_ignorable(c: str) -> bool:
    # Format characters (zero-width space and joiners, soft hyphen, bidi marks) and
    # variation selectors are invisible: TR39's skeleton drops them (§4, step 2 via NFD; here NFKC).
    return unicodedata.category(c) == "Cf" or "\ufe00" <= c <= "\ufe0f"


def skeleton(text: str) -> str:
    """``text`` as it looks: equal skeletons mean two strings a reader cannot tell apart.

    NFKC, default-ignorable characters dropped, case folded, each character
    mapped to its confusable class, folded and mapped again (so that
    ``LISTENER`` and ``Ⅼistener`` meet ``listener``). See UTS #39 §4.
    """
    classes = _classes()
    visible = "".join(c for c in unicodedata.normalize("NFKC", text) if not _default_ignorable(c))
    # Case folded before mapping too: a capital's class can differ from its small letter's
    # (I is confusable with l, i is not), and the identities are lower case.
    mapped = "".join(classes.get(c, c) for c in visible.casefold())
    return "".join(classes.get(c, c) for c in unicodedata.normalize("NFKC", mapped.casefold()))


def _shapes(text: str) -> list[frozenset[str]]:
    """Per visible character, what it may be read as: its folded class, and the class
    of its class's folded form (capital I looks like l, its small letter i does not)."""
    classes = _classes()

    def mapped(s: str) -> str:
        return "".join(classes.get(c, c) for c in s)

    visible = [c for c in unicodedata.normalize("NFKC", text) if not _default_ignorable(c)]
    return [frozenset({mapped(c.casefold()), mapped(mapped(c).casefold())}) for c in visible]


def looks_alike(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` can be taken for one another, case aside.

    Character by character, as :func:`skeleton` compares whole strings, but a
    character matches when any of its readings (folded, or folded after mapping
    to its confusable class) matches: ``Iistener`` and ``ΤRIAGE-AI`` (Greek Tau)
    look like ``listener`` and ``triage-ai``.
    """
    if skeleton(a) == skeleton(b):
        return True
    sa, sb = _shapes(a), _shapes(b)
    return len(sa) == len(sb) and all(x & y for x, y in zip(sa, sb, strict=True))


def normalise_name(name: str) -> str:
    """A reader's name in its one stored form: NFKC, surrounding space stripped."""
    return unicodedata.normalize("NFKC", name).strip()


def name_problem(name: object, reserved: Iterable[str] = SYSTEM_IDENTITIES) -> str | None:
    """Why ``name`` cannot be a person's name, or None if it can.

    Refused: anything but a non-empty string; longer than :data:`NAME_MAX_CHARS`
    after NFKC; control characters or bidirectional controls; and any name
    that :func:`looks_alike` one of ``reserved`` (case aside, so ``LISTENER``
    and ``Ѕystem`` are refused). Ordinary names in any script
    (``Dr Müller``, ``王医生``) pass.

    Returns
    -------
    str | None
        A short reason (no trailing period), e.g. ``"'Ѕystem' is or looks like the reserved system identity 'system'"``.
    """
    if not isinstance(name, str) or not name.strip():
        return f"a named user is required, got {name!r}"
    normal = normalise_name(name)
    if len(normal) > NAME_MAX_CHARS:
        return f"user name longer than {NAME_MAX_CHARS} characters"
    if any(unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in normal):
        return f"user name {normal!r} contains a control character"
    for identity in sorted(reserved):
        if looks_alike(normal, identity):
            return f"{normal!r} is or looks like the reserved system identity {identity!r}"
    return None
