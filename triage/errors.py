"""One exception hierarchy for the application, over dicom_io's own.

The CLI prints any of :data:`USER_ERRORS` as one line on stderr and exits with
its ``exit_code``; anything else is a bug and keeps its traceback. dicom_io
never imports this module: its errors (re-exported here) are the base of the
storage, UID, network and index errors that both layers raise.
"""

from __future__ import annotations

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


# What a command reports as one line (exit code from the error) instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (TriageError, DicomIOError)
