"""The worklist's rows, order, filters and search, kept up to date incrementally (pure; no textual).

:class:`WorklistModel` holds one :class:`triage.reading.views.WorklistItem` per
study UID and the visible rows in the current order. A live update
(:meth:`WorklistModel.apply`) moves only the studies that changed, by
bisection into sorted key lists, so that one new study among 10,000 costs a
few list moves rather than a re-sort.

Rank: the number shown is the study's position in the urgency order among
all unsigned studies, whatever the sort mode, filters or search. It answers
"how many studies should be read before this one", which a filtered or
arrival-ordered view must not change; signed studies have no rank.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

from triage.reading.views import WorklistItem, arrival_order_key, worklist_order_key
from triage.vocabulary import FINDING_KINDS, AIStatus, PriorityClass, ReadState

SORT_MODES = ("urgency", "arrival")
"""Sort modes: the policy's urgency order, or the standard worklist's arrival order."""

STATUS_CHOICES = ("unsigned", "new", "in review", "signed", "AI failed", "not analysed", "AI pending", "AI partial")
"""Values of the status filter (besides None = all); "unsigned" is everything still to be read."""

FINDING_CHOICES = ("any",) + FINDING_KINDS
"""Values of the finding filter (besides None = all): a flagged finding of any kind, or of one kind."""

RADIOGRAPH = frozenset({"CR", "DX"})  # one modality to a reader: computed and digital radiography
NON_IMAGE = frozenset({"SR", "KO", "PR", "SEG", "REG", "DOC"})  # objects that ride along with images

_BADGES = {PriorityClass.CRITICAL: "▲ CRIT", PriorityClass.URGENT: "◆ URG", PriorityClass.ROUTINE: "● ROUT"}


# --- what a row says (pure) ---------------------------------------------------------------------


def badge_text(priority_class: PriorityClass | str) -> str:
    """The class as a symbol and word, so that it never rests on colour alone ("▲ CRIT")."""
    return _BADGES[PriorityClass(priority_class)]


def status_kind(item: WorklistItem) -> str:
    """The study's status as one of :data:`STATUS_CHOICES` other than "unsigned".

    Reading state comes first (signed, in review); an unread study says what
    the AI did with it: failed, not analysed, pending, partial, or "new" when
    it was scored.
    """
    study = item.study
    if study.read_state is ReadState.SIGNED:
        return "signed"
    if study.read_state is ReadState.READING or study.claimed_by is not None:
        return "in review"
    ai = study.ai_status
    if ai == AIStatus.FAILED.value:
        return "AI failed"
    if ai == AIStatus.NOT_ANALYSED.value:
        return "not analysed"
    if ai == AIStatus.PENDING.value:
        return "AI pending"
    if ai == AIStatus.PARTIAL.value:
        return "AI partial"
    return "new"


def status_text(item: WorklistItem) -> str:
    """The status column: "new", "in review by X", "signed", "AI failed", "not analysed", ...

    "in review by X" names the live claimant; a study in reading whose claim
    lapsed says so, since nobody holds it now.
    """
    kind = status_kind(item)
    claimant = item.study.claimed_by
    if kind == "in review":
        return f"in review by {claimant}" if claimant else "in review (claim lapsed)"
    if kind == "signed" and claimant:
        return f"signed, claimed by {claimant}"  # claimed for an amendment
    return kind


def wait_text(minutes: float) -> str:
    """Waiting time, short: "7m", "2h05", "3d04"."""
    total = max(0, int(minutes))
    if total < 60:
        return f"{total}m"
    hours, mins = divmod(total, 60)
    if hours < 24:
        return f"{hours}h{mins:02d}"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}"


CONFLICT_MARK = "⚠ "
"""Before the patient in a row whose study has versions set aside (same SOP Instance UID, other content)."""


def conflict_mark(item: WorklistItem) -> str:
    """:data:`CONFLICT_MARK` when a sender re-sent one of the study's instances with
    other content (its identity is in doubt until someone reconciles it), else ""."""
    return CONFLICT_MARK if item.study.conflicts else ""


def patient_text(item: WorklistItem) -> str:
    """Name, ID, sex and age: "DOE, JANE  P00001 F 64Y" (DICOM PN carets as a comma and spaces)."""
    s = item.study
    name = ""
    if s.patient_name:
        parts = [p for p in s.patient_name.split("^") if p]
        name = parts[0] + (", " + " ".join(parts[1:]) if len(parts) > 1 else "") if parts else ""
    age = s.patient_age or ""
    if len(age) == 4 and age[:3].isdigit():  # DICOM AS "064Y" reads as "64Y"
        age = f"{int(age[:3])}{age[3]}"
    rest = " ".join(x for x in (s.patient_id or "", s.patient_sex or "", age) if x)
    return f"{name}  {rest}".strip() if name else rest or "(no patient)"


@functools.lru_cache(maxsize=512)  # a handful of distinct values across 10,000 rows; filters ask per row
def modality_labels(modality: str) -> tuple[str, ...]:
    """The study's modalities as the filter names them: "CT\\SR" -> ("CT",), "DX" -> ("CR/DX",).

    Non-image objects (SR, KO, ...) count only when the study has nothing else.
    """
    codes = [c.strip().upper() for c in modality.replace("/", "\\").split("\\") if c.strip()]
    images = [c for c in codes if c not in NON_IMAGE] or codes
    labels: list[str] = []
    for code in images:
        label = "CR/DX" if code in RADIOGRAPH else code
        if label not in labels:
            labels.append(label)
    return tuple(labels)


def findings_summary(item: WorklistItem) -> list[tuple[str, bool]]:
    """The AI column as (text, flagged) parts, flagged first, then by probability: [("bleed 0.93", True)].

    One part per finding kind (its highest probability over the series). A
    study without findings says why: hidden (blinded read), awaiting the AI,
    the AI's reason for failing or not analysing, or "no AI findings".
    """
    if item.ai_hidden:
        return [("hidden until impression", False)]
    best: dict[str, tuple[float, bool]] = {}
    for f in item.findings:
        prob, flagged = best.get(f.kind, (-1.0, False))
        best[f.kind] = (max(prob, f.probability), flagged or f.urgent)
    if best:
        ordered = sorted(best.items(), key=lambda kv: (not kv[1][1], -kv[1][0], kv[0]))
        return [(f"{kind} {prob:.2f}", flagged) for kind, (prob, flagged) in ordered]
    ai, reason = item.study.ai_status, item.study.ai_reason
    if ai == AIStatus.PENDING.value:
        return [("awaiting AI", False)]
    if ai == AIStatus.FAILED.value:
        return [(reason or "no AI result", False)]  # the status column says "AI failed"
    if ai == AIStatus.NOT_ANALYSED.value:
        return [(reason or "no detector applies", False)]
    return [("no AI findings", False)]


def flagged_kinds(item: WorklistItem) -> frozenset[str]:
    """Kinds the AI flagged (probability at or over the detector's operating point)."""
    return frozenset(f.kind for f in item.findings if f.urgent)


def matches_search(item: WorklistItem, needle: str) -> bool:
    """Whether ``needle`` (already case-folded) is in the patient ID, patient name or accession."""
    s = item.study
    return any(needle in (v or "").casefold() for v in (s.patient_id, s.patient_name, s.accession_number))


# --- the model ----------------------------------------------------------------------------------

_Key = tuple[Any, ...]  # a sort key whose last element is the study UID
_KEEP: Any = object()  # set_filters: "leave this filter as it is"


def _key_for(mode: str) -> Callable[[WorklistItem], _Key]:
    return worklist_order_key if mode == "urgency" else arrival_order_key


def _remove(keys: list[_Key], key: _Key) -> bool:
    at = bisect.bisect_left(keys, key)
    if at < len(keys) and keys[at] == key:
        del keys[at]
        return True
    return False


class _UidView(Sequence[str]):
    """The visible rows' study UIDs, read straight off the sorted key list (no copy)."""

    def __init__(self, keys: list[_Key]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [k[-1] for k in self._keys[index]]
        return self._keys[index][-1]

    def __iter__(self) -> Iterator[str]:
        return (k[-1] for k in self._keys)


class WorklistModel:
    """The worklist's rows by study UID, in urgency or arrival order, filtered and searched.

    Parameters
    ----------
    sort
        "urgency" (:func:`triage.reading.views.worklist_order_key`) or "arrival"
        (:func:`triage.reading.views.arrival_order_key`).

    Filters are ``None`` for all: ``modality`` a label of :func:`modality_labels`
    ("CT", "CR/DX"), ``status`` one of :data:`STATUS_CHOICES`, ``finding`` one
    of :data:`FINDING_CHOICES`. ``search`` is a case-insensitive substring of
    patient ID, patient name or accession number.
    """

    def __init__(self, sort: str = "urgency") -> None:
        self._check_sort(sort)
        self._sort = sort
        self._items: dict[str, WorklistItem] = {}
        self._urgency: list[_Key] = []  # every study, urgency order: the rank's reference
        self._unsigned = 0
        self._visible: list[_Key] = []  # matching studies, current order
        self.modality: str | None = None
        self.status: str | None = None
        self.finding: str | None = None
        self._search = ""
        self._needle = ""

    # -- state ----------------------------------------------------------------------------------

    @staticmethod
    def _check_sort(sort: str) -> None:
        if sort not in SORT_MODES:
            raise ValueError(f'sort mode must be one of {", ".join(SORT_MODES)}, got "{sort}"')

    @property
    def sort(self) -> str:
        """The current sort mode, "urgency" or "arrival"."""
        return self._sort

    @property
    def search(self) -> str:
        """The search text as typed ("" for none)."""
        return self._search

    @property
    def visible(self) -> Sequence[str]:
        """Study UIDs of the rows shown, in order (a live view: it follows later updates)."""
        return _UidView(self._visible)

    @property
    def total(self) -> int:
        """Number of studies held, shown or not."""
        return len(self._items)

    @property
    def unsigned(self) -> int:
        """Number of studies still to be read (not signed)."""
        return self._unsigned

    def __len__(self) -> int:
        return len(self._visible)

    def __contains__(self, uid: object) -> bool:
        return uid in self._items

    def get(self, uid: str) -> WorklistItem | None:
        """The item of a study, shown or not."""
        return self._items.get(uid)

    def row(self, index: int) -> WorklistItem:
        """The item of visible row ``index`` (0-based)."""
        return self._items[self._visible[index][-1]]

    def index_of(self, uid: str | None) -> int | None:
        """The visible row of a study, or None when it is filtered out or unknown (O(log n))."""
        item = self._items.get(uid) if uid is not None else None
        if item is None:
            return None
        key = _key_for(self._sort)(item)
        at = bisect.bisect_left(self._visible, key)
        return at if at < len(self._visible) and self._visible[at] == key else None

    def rank_of(self, uid: str) -> int | None:
        """1-based position among unsigned studies in urgency order; None for signed or unknown ones."""
        item = self._items.get(uid)
        if item is None or item.study.read_state is ReadState.SIGNED:
            return None
        return bisect.bisect_left(self._urgency, worklist_order_key(item)) + 1

    def modality_choices(self) -> list[str]:
        """The modality filter's values present in the data, sorted ("CR/DX", "CT", ...)."""
        labels: set[str] = set()
        for item in self._items.values():
            labels.update(modality_labels(item.study.modality))
        return sorted(labels)

    # -- filtering ------------------------------------------------------------------------------

    def matches(self, item: WorklistItem) -> bool:
        """Whether ``item`` passes the current filters and search."""
        if self.modality is not None and self.modality not in modality_labels(item.study.modality):
            return False
        if self.status is not None:
            kind = status_kind(item)
            if self.status == "unsigned":
                if kind == "signed":
                    return False
            elif kind != self.status:
                return False
        if self.finding is not None:
            flagged = flagged_kinds(item)
            wanted = bool(flagged) if self.finding == "any" else self.finding in flagged
            if not wanted:
                return False
        return not self._needle or matches_search(item, self._needle)

    def set_filters(self, *, modality: str | None = _KEEP, status: str | None = _KEEP, finding: str | None = _KEEP) -> None:
        """Change some filters (an argument left out keeps its filter; None shows all).

        Raises
        ------
        ValueError
            If ``status`` or ``finding`` is not one of its choices.
        """
        if status is not _KEEP and status is not None and status not in STATUS_CHOICES:
            raise ValueError(f'status filter must be one of {", ".join(STATUS_CHOICES)}, got "{status}"')
        if finding is not _KEEP and finding is not None and finding not in FINDING_CHOICES:
            raise ValueError(f'finding filter must be one of {", ".join(FINDING_CHOICES)}, got "{finding}"')
        if modality is not _KEEP:
            self.modality = modality
        if status is not _KEEP:
            self.status = status
        if finding is not _KEEP:
            self.finding = finding
        self._rebuild_visible()

    def set_search(self, text: str) -> None:
        """Show only studies whose patient ID, name or accession contains ``text`` (any case)."""
        text = text or ""
        if text == self._search:
            return
        self._search = text
        self._needle = text.strip().casefold()
        self._rebuild_visible()

    def set_sort(self, sort: str) -> None:
        """Order the rows by "urgency" or "arrival"."""
        self._check_sort(sort)
        if sort != self._sort:
            self._sort = sort
            self._rebuild_visible()

    def toggle_sort(self) -> str:
        """Switch between urgency and arrival order; returns the new mode."""
        self.set_sort("arrival" if self._sort == "urgency" else "urgency")
        return self._sort

    def _rebuild_visible(self) -> None:
        key = _key_for(self._sort)
        self._visible = sorted(key(i) for i in self._items.values() if self.matches(i))

    # -- updates --------------------------------------------------------------------------------

    def load(self, items: Iterable[WorklistItem]) -> None:
        """Replace every row (a full reload: ageing has moved every score)."""
        self._items = {item.study.study_uid: item for item in items}
        self._urgency = sorted(worklist_order_key(i) for i in self._items.values())
        self._unsigned = sum(1 for i in self._items.values() if i.study.read_state is not ReadState.SIGNED)
        self._rebuild_visible()

    def apply(self, items: Iterable[WorklistItem]) -> set[str]:
        """Merge new and changed studies by UID, moving only them (bisection, no re-sort).

        Returns
        -------
        set[str]
            UIDs whose row changed (new or different); unchanged items are skipped.
        """
        changed: set[str] = set()
        key = _key_for(self._sort)
        for item in items:
            uid = item.study.study_uid
            old = self._items.get(uid)
            if old is not None and old == item:
                continue
            if old is not None:
                _remove(self._urgency, worklist_order_key(old))
                _remove(self._visible, key(old))  # absent when it was filtered out
                self._unsigned -= old.study.read_state is not ReadState.SIGNED
            self._items[uid] = item
            bisect.insort(self._urgency, worklist_order_key(item))
            self._unsigned += item.study.read_state is not ReadState.SIGNED
            if self.matches(item):
                bisect.insort(self._visible, key(item))
            changed.add(uid)
        return changed
