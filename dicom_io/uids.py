"""DICOM UID validation (PS3.5 section 9.1).

A UID is at most 64 characters of digits and dots; each component is a number
without a leading zero (except "0" itself). Because UIDs become directory and
file names in the store, anything else is refused before it touches a path.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from dicom_io.errors import InvalidUIDError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: object) -> TypeGuard[str]:
    """True if ``value`` is a str that is a valid DICOM UID."""
    return isinstance(value, str) and len(value) <= 64 and _UID.match(value) is not None


def check_uid(value: object, name: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUIDError` naming it."""
    if value is None or value == "":
        raise InvalidUIDError(f"{name} is missing")
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUIDError(f"{name} is not a valid DICOM UID: {shown}")
    return value
