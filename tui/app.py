"""The terminal worklist app: one factory for the CLI and the tests.

The app holds the worklist service and the reader's name and shows the
ranked list; a study opens in its own screen. Every change goes through the
service (``triage.reading.service``), whose errors appear as notifications.
The reader is the OS account's (``triage.reading.identity``); signing and
amending ask for their password again (:meth:`WorklistApp.authenticate`).
"""

from __future__ import annotations

import logging

from textual.app import App
from textual.binding import Binding

from triage.config import Settings
from triage.errors import USER_ERRORS
from triage.reading import identity, signing
from triage.reading.service import WorklistService
from triage.reading.states import NotPermitted, check_user
from triage.store.db import make_engine

log = logging.getLogger(__name__)


class WorklistApp(App[None]):
    """The worklist for one reader.

    Parameters
    ----------
    service
        The worklist service (the only door to the study index).
    user
        The reader: every action is recorded under this name.
    display
        "regions" draws the AI's regions on the preview; "flag_only" does not.
    poll_interval
        Seconds between looks for changes (new studies, new results, other readers).
    reader, account
        The reader ``user`` names and the OS account running the app
        (:func:`triage.reading.identity.acting_reader`); None: resolved from
        the settings' ``[readers]`` and the process's account when signing.
    pam
        Asks PAM for ``auth = "pam"`` readers (injected by tests).
    """

    TITLE = "triage worklist"
    CSS = """
    Screen { layers: base overlay; }
    .banner { background: $warning 20%; color: $text; padding: 0 1; height: auto; }
    """
    BINDINGS = [Binding("question_mark", "help", "Keys", key_display="?"), Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(
        self,
        service: WorklistService,
        user: str,
        *,
        display: str = "regions",
        poll_interval: float = 0.5,
        reader: identity.Reader | None = None,
        account: str | None = None,
        pam: signing.PamCheck = signing.pam_check,
    ) -> None:
        super().__init__()
        self.service = service
        self.user = check_user(user, "use the worklist")
        self.reader = reader
        self.account = account
        self.pam = pam
        self.display_mode = display  # not `display`: a textual style property of every widget
        self.blinded = service.settings.worklist.blinded
        self.poll_interval = poll_interval
        self.sub_title = f"{self.user}" + ("  (blinded first read)" if self.blinded else "")

    def on_mount(self) -> None:
        from tui.screens.worklist import WorklistScreen

        self.push_screen(WorklistScreen())

    def open_study(self, study_uid: str) -> None:
        from tui.screens.study import StudyScreen

        self.push_screen(StudyScreen(study_uid))

    def _signer(self) -> tuple[identity.Reader, str]:
        account = self.account or identity.os_account()
        reader = self.reader or identity.resolve_reader(self.service.settings.readers, account, self.user)
        if reader.name != self.user:  # the name shown (and recorded) is the one that authenticates
            raise NotPermitted(f"this worklist is {self.user}'s; it cannot sign as {reader.name}")
        return reader, account

    def password_prompt(self) -> str:
        """Whose password signing asks for: the reader's signing password, or the OS account's (PAM)."""
        try:
            reader, account = self._signer()
        except NotPermitted:
            return f"Signing password for {self.user}"
        if reader.auth is identity.AuthMethod.PAM:
            return f"Password of OS account {account} (signing as {reader.name})"
        return f"Signing password for {reader.name}"

    def authenticate(self, secret: str) -> signing.SigningCredential:
        """The reader's credential to sign or amend with (``triage.reading.signing.authenticate``).

        Raises
        ------
        NotPermitted
            If the account may not act as the reader, no password is set, the
            password is wrong (``AuthenticationFailed``) or signing is locked.
        """
        reader, account = self._signer()
        return signing.authenticate(
            self.service.engine,
            reader,
            account,
            secret,
            pam_service=self.service.settings.worklist.pam_service,
            pam=self.pam,
            clock=self.service.clock,
        )

    def report_error(self, exc: Exception) -> None:
        """A problem the reader can act on, shown as a notification (never a traceback)."""
        if not isinstance(exc, USER_ERRORS):
            log.exception("unexpected error in the worklist")
        self.notify(str(exc), title="Not done", severity="error", timeout=8)

    def action_help(self) -> None:
        from tui.dialogs import HelpScreen

        rows: list[tuple[str, str, str]] = []
        screen = self.screen
        for where, bindings in ((type(screen).__name__, screen.BINDINGS), ("app", self.BINDINGS)):
            for b in bindings:
                if isinstance(b, Binding):
                    rows.append((where, b.key_display or b.key, b.description))
                else:
                    rows.append((where, b[0], b[2] if len(b) > 2 else ""))
        self.push_screen(HelpScreen(rows))


def default_user(settings: Settings, given: str | None) -> str:
    """The reader this OS account acts as: ``--user`` (else ``[worklist] user``) chooses among
    the readers the account is mapped to (:func:`triage.reading.identity.acting_reader`).

    Raises
    ------
    NotPermitted
        If the account may not act as the reader asked for, or as any.
    """
    return identity.acting_reader(settings, given).name


def build_app(settings: Settings, user: str | None = None, *, poll_interval: float = 0.5) -> WorklistApp:
    """The app on the settings' study index, for the reader this OS account acts as (see :func:`default_user`)."""
    account = identity.os_account()
    reader = identity.acting_reader(settings, user, account)
    service = WorklistService(make_engine(settings.db_url), settings)
    return WorklistApp(service, reader.name, display=settings.worklist.display, poll_interval=poll_interval, reader=reader, account=account)


def run_worklist(settings: Settings, user: str | None = None) -> None:
    """Run the worklist in this terminal until the reader quits (the CLI and the demo)."""
    from tui.preview import probe_graphics

    probe_graphics()  # before textual owns stdin: the terminal answers on it
    build_app(settings, user).run()
