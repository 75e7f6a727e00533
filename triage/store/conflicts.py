"""Conflicting re-sends: other content received under an indexed SOP Instance UID.

A SOP Instance UID names one instance for ever (PS3.3 C.12.1.1.1, PS3.5 9.1):
a sender that re-sends it with other content (a corrected patient identity,
say) breaks that rule, and the listener keeps the first version indexed and
sets the new one aside (``dicom_io.ingest``). :class:`triage.store.index.SqlIndex`
records each distinct set-aside payload in ``instance_conflict`` with an
``instance_conflict`` audit event; this module says what differs between the
two versions (:func:`identity_differences`, pure) and lists a study's
set-aside versions (:func:`set_aside_versions`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from triage.clock import as_utc
from triage.errors import DatabaseError
from triage.store.tables import INSTANCE_CONFLICT, STUDY

if TYPE_CHECKING:  # only a type here: reading the index needs no pydicom
    from dicom_io.headers import InstanceHeader

IDENTITY_FIELDS: tuple[str, ...] = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "study_uid",
    "series_uid",
)
"""The identifying header fields compared between the kept and the set-aside version, in display order."""

FIELD_LABELS: Mapping[str, str] = {
    "patient_id": "patient ID",
    "patient_name": "patient name",
    "patient_birth_date": "birth date",
    "patient_sex": "sex",
    "accession_number": "accession",
    "study_uid": "Study Instance UID",
    "series_uid": "Series Instance UID",
}


def _value(value: object) -> str | None:
    # An absent attribute and an empty one say the same (PS3.5 7.4: type 2 may be empty).
    text = "" if value is None else str(value).strip()
    return text or None


def identity_differences(kept: Mapping[str, Any], new: InstanceHeader) -> dict[str, list[str | None]]:
    """The identifying fields whose value differs between the kept version and ``new``.

    Parameters
    ----------
    kept
        The indexed version's values by :data:`IDENTITY_FIELDS` name (its
        study's and series' rows).
    new
        The header of the payload set aside.

    Returns
    -------
    dict
        ``{field: [kept value, new value]}`` in :data:`IDENTITY_FIELDS` order;
        empty when the versions agree on all of them.
    """
    out: dict[str, list[str | None]] = {}
    for name in IDENTITY_FIELDS:
        before, after = _value(kept.get(name)), _value(getattr(new, name))
        if before != after:
            out[name] = [before, after]
    return out


def differences_text(differences: Mapping[str, Any]) -> str:
    """``patient ID P1 -> P2; patient name DOE^J -> ROE^J`` ("same identifying fields" when empty)."""
    if not differences:
        return "same identifying fields"
    parts = []
    for name, pair in differences.items():
        before, after = (list(pair) + [None, None])[:2]
        parts.append(f"{FIELD_LABELS.get(name, name)} {before or '(none)'} -> {after or '(none)'}")
    return "; ".join(parts)


@dataclass(frozen=True)
class SetAside:
    """One version kept aside for a study: what came, from whom, and how it differs."""

    sop_instance_uid: str
    received_at: datetime
    calling_ae: str | None
    peer_address: str | None
    sha256: str
    kept_sha256: str
    path: str  # relative to the data directory
    differences: dict[str, list[str | None]]  # field -> [kept, set aside]

    @property
    def sender(self) -> str:
        """``AE@address``, with ``?`` for what is unknown."""
        return f"{self.calling_ae or '?'}@{self.peer_address or '?'}"

    def as_json(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "received_at": self.received_at.isoformat(),
            "calling_ae": self.calling_ae,
            "peer_address": self.peer_address,
            "sha256": self.sha256,
            "kept_sha256": self.kept_sha256,
            "path": self.path,
            "differences": {k: {"kept": v[0], "set_aside": v[1]} for k, v in self.differences.items()},
        }


def set_aside_versions(engine: Engine, study_uid: str) -> list[SetAside]:
    """The versions set aside for one study, oldest first.

    Read from ``instance_conflict`` rather than the audit trail: one indexed
    query per study, no JSON to scan, and the same rows that keep repeats
    idempotent; the audit events carry the same facts for the auditor.

    Raises
    ------
    DatabaseError
        If the index cannot be read.
    """
    query = (
        select(INSTANCE_CONFLICT)
        .join(STUDY, STUDY.c.id == INSTANCE_CONFLICT.c.study_pk)
        .where(STUDY.c.study_uid == study_uid)
        .order_by(INSTANCE_CONFLICT.c.received_at, INSTANCE_CONFLICT.c.id)
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot read the conflicts of {study_uid}: {exc.__class__.__name__}") from None
    return [
        SetAside(
            sop_instance_uid=row.sop_instance_uid,
            received_at=as_utc(row.received_at),
            calling_ae=row.calling_ae,
            peer_address=row.peer_address,
            sha256=row.sha256,
            kept_sha256=row.kept_sha256,
            path=row.path,
            differences=json.loads(row.differences or "{}"),
        )
        for row in rows
    ]


__all__ = ["FIELD_LABELS", "IDENTITY_FIELDS", "SetAside", "differences_text", "identity_differences", "set_aside_versions"]
