"""One exception hierarchy for the application, over dicom_io's own.

The CLI prints any of :data:`USER_ERRORS` as one line on stderr and exits with
its ``exit_code``; anything else is a bug and keeps its traceback. dicom_io
never imports this module: its errors (re-exported here) are the base of the
storage, UID, network and index errors that both layers raise.
"""

from __future__ import annotations

import importlib.util

from dicom_io.errors import (
    DicomIOError,
    DicomNetworkError,
    IndexFailedError,
    IndexUnavailableError,
    InvalidUIDError,
    OptionsError,
    PixelDataError,
    StorageError,
)

__all__ = [
    "USER_ERRORS",
    "ConfigError",
    "DatabaseError",
    "DicomIOError",
    "DicomNetworkError",
    "IndexUnreachableError",
    "InvalidUIDError",
    "MissingExtraError",
    "OptionsError",
    "PixelDataError",
    "StorageError",
    "TriageError",
]


class TriageError(Exception):
    """A problem the user can act on (bad input, bad config, unreachable peer)."""

    exit_code: int = 1


class ConfigError(TriageError):
    """A configuration key or value is wrong; the message names it."""

    exit_code = 2


class DatabaseError(TriageError, IndexFailedError):
    """The study index (database) could not record or answer something.

    To dicom_io's ingest path it is the index failing (its ``Index`` port)."""


class IndexUnreachableError(DatabaseError, IndexUnavailableError):
    """The index process could not be asked or did not answer: whether the
    record was committed is unknown."""


# The distribution's name on PyPI (pyproject.toml), which `pip install` wants, not the import name.
DISTRIBUTION = "triage-worklist"
# Third-party packages that only an optional extra installs (pyproject.toml), by top-level import name.
EXTRA_OF_MODULE: dict[str, tuple[str, str]] = {
    "torch": ("ai", "AI"),
    "torchvision": ("ai", "AI"),
    "matplotlib": ("ai", "AI"),
    "scipy": ("ai", "AI"),
    "tomlkit": ("ai", "AI"),
    "psycopg": ("pg", "PostgreSQL"),
}


class MissingExtraError(TriageError):
    """A command needs a package of an optional extra that this install lacks (a listener-only host)."""

    def __init__(self, extra: str, label: str) -> None:
        super().__init__(f"needs the {label} extra: pip install '{DISTRIBUTION}[{extra}]'")
        self.extra = extra


def missing_extra(exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The one-line error for ``exc`` if the module it misses belongs to an extra, else None (a bug).

    The CLI turns an import deep inside a command (``import torch`` as the detectors load) into
    this line, so each command that needs the extra need not check for it beforehand."""
    extra = EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
    return MissingExtraError(*extra) if extra else None


def require_extra(*modules: str) -> None:
    """Raise :class:`MissingExtraError` unless each of ``modules`` (top-level names) can be imported.

    For work that would otherwise fail late or in another process (a server's scoring worker
    loads torch after it has started listening). Finds the modules without importing them."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a finder that refuses the name, or a half-initialised module
            found = False
        if not found:
            raise MissingExtraError(*EXTRA_OF_MODULE[module])


# What a command reports as one line (exit code from the error) instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (TriageError, DicomIOError)
