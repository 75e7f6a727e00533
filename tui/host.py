"""What the screens need of the app that shows them, so that screens do not import the app.

``tui.app.WorklistApp`` satisfies :class:`WorklistHost`; the screens cast
``self.app`` to it. The app imports the screens, never the other way round.
"""

from __future__ import annotations

from typing import Protocol

from triage.reading.service import WorklistService
from triage.reading.signing import SigningCredential

BANNER = "AI output is a suggestion for ordering the worklist, not a diagnosis. The radiologist reads every study and signs every report."


class WorklistHost(Protocol):
    """The app as its screens see it: the service, the reader, and how to open a study or show an error."""

    service: WorklistService
    user: str
    display_mode: str
    blinded: bool
    poll_interval: float

    def open_study(self, study_uid: str) -> None: ...

    def password_prompt(self) -> str:
        """Whose password signing asks for, as the prompt shows it."""
        ...

    def authenticate(self, secret: str) -> SigningCredential:
        """The reader's credential to sign or amend with, if ``secret`` is their password (else raises)."""
        ...

    def report_error(self, exc: Exception) -> None: ...
