"""dicom_io's own errors: it never imports the application above it.

Each carries the exit code a command line should end with; ``triage``'s CLI
prints any of them as one line (``triage.errors.USER_ERRORS``).
"""

from __future__ import annotations


class DicomIOError(Exception):
    """A problem the user can act on: an unreadable file, a refused peer, a full disk."""

    exit_code: int = 1


class OptionsError(DicomIOError):
    """An option given to dicom_io (a TLS certificate, a listener setting) cannot be used; the message names it."""

    exit_code = 2


class StorageError(DicomIOError):
    """The instance store could not write or read a file."""


class InvalidUIDError(DicomIOError):
    """A string that must be a DICOM UID (PS3.5 section 9.1) is not one."""


class DicomNetworkError(DicomIOError):
    """A DICOM peer could not be reached, refused us, or answered with a failure."""


class IndexFailedError(DicomIOError):
    """The study index (the :class:`dicom_io.ingest.Index` port) refused or failed to record an instance."""


class IndexUnavailableError(IndexFailedError):
    """The study index could not be asked or did not answer: whether the record was committed is unknown."""


class PixelDataError(DicomIOError):
    """Pixel data could not be read, decoded or assembled; the message names why."""
