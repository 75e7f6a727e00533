"""One exception hierarchy for the whole project.

The CLI prints a ``TriageError`` as one line on stderr and exits with its
``exit_code``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TriageError(Exception):
    """A problem the user can act on (bad input, bad config, unreachable peer)."""

    exit_code: int = 1


class ConfigError(TriageError):
    """A configuration key or value is wrong; the message names it."""

    exit_code = 2


class StorageError(TriageError):
    """The instance store could not write or read a file."""


class DatabaseError(TriageError):
    """The study index (database) could not record or answer something."""


class IndexUnreachableError(DatabaseError):
    """The index process could not be asked or did not answer: whether the
    record was committed is unknown."""


class DicomNetworkError(TriageError):
    """A DICOM peer could not be reached, refused us, or answered with a failure."""


class InvalidUIDError(TriageError):
    """A string that must be a DICOM UID (PS3.5 section 9.1) is not one."""
