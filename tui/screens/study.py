"""One study: its facts, the AI's suggestions and why it is ranked where it is,
the image preview, and the reader's actions.

Every action goes through :class:`triage.reading.service.WorklistService` (claim,
release, impression, feedback, draft, sign, amend, history); the screen then
opens the study again so that it shows what the index now holds. Refusals
(another reader's claim, a missing impression in blinded mode, no draft to
sign...) come back as :class:`triage.errors.TriageError` and are shown as
notifications through ``app.report_error``, never as tracebacks.

What the reader sees of the AI: in blinded mode nothing (no findings, no
probabilities, no boxes) until they have recorded their own impression; with
display ``flag_only`` the findings but no marks on the image. Every AI finding
is labelled a suggestion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from triage.clock import shown
from triage.flow.cases import FindingRow
from triage.reading.pixels import is_image_series
from triage.reading.states import ClaimConflict, InvalidTransition, NotPermitted, check_user
from triage.reading.views import HIDDEN_REASON, SeriesImages, StudyView
from triage.vocabulary import Verdict
from tui.dialogs import CommentDialog, ConfirmSign, HistoryScreen, ImpressionDialog, MissedFindingDialog, PasswordPrompt, ReportEditor
from tui.formatting import format_person_name
from tui.host import WorklistHost
from tui.model import CONFLICT_MARK
from tui.preview import ImagePreview

log = logging.getLogger(__name__)

T = TypeVar("T")

AI_LABEL = "AI suggestion"
AI_NOTE = "AI output is a suggestion, not a diagnosis."
REPORT_LINES_SHOWN = 6


def display_mode(app: Any) -> str:
    """The preview's display mode, "regions" or "flag_only", as the app was built with (else the config's)."""
    value = getattr(app, "display_mode", None)
    return str(value) if value in ("regions", "flag_only") else str(app.service.settings.worklist.display)


def strongest_finding(findings: tuple[FindingRow, ...]) -> FindingRow | None:
    """The most probable finding (ties: the first), or None."""
    return max(findings, key=lambda f: f.probability, default=None)


def default_series(series: list[SeriesImages], findings: tuple[FindingRow, ...]) -> SeriesImages | None:
    """The series to preview first: that of the strongest finding, else the first image series."""
    best = strongest_finding(findings)
    if best is not None:
        for s in series:
            if s.series_uid == best.series_uid:
                return s
    return next((s for s in series if is_image_series(s)), series[0] if series else None)


class StudyScreen(Screen[None]):
    """A study as one reader sees it, and what they can do to it.

    Parameters
    ----------
    study_uid
        The study to open; it is opened (a ``view`` audit event) on mount and
        after every action.
    """

    DEFAULT_CSS = """
    StudyScreen #study-body { height: 1fr; }
    StudyScreen #study-left { width: 58; min-width: 40; border-right: solid $panel-lighten-2; padding: 0 1; }
    StudyScreen #study-left > Static { height: auto; margin-bottom: 1; }
    StudyScreen #study-right { width: 1fr; padding: 0 1; }
    StudyScreen .ai-note { color: $warning; }
    """

    AUTO_FOCUS = "ImagePreview"  # the slice keys work at once
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("c", "claim", "Claim"),
        Binding("r", "release", "Release", show=False),
        Binding("i", "impression", "Impression"),
        Binding("a", "verdict('agree')", "Agree"),
        Binding("d", "verdict('disagree')", "Disagree"),
        Binding("u", "verdict('unsure')", "Unsure", show=False),
        Binding("tab,right_square_bracket", "select_finding(1)", "Next finding", key_display="tab/]", show=False),
        Binding("shift+tab,left_square_bracket", "select_finding(-1)", "Previous finding", key_display="[", show=False),
        Binding("m", "missed", "AI missed"),
        Binding("e", "edit_report", "Report"),
        Binding("s", "sign", "Sign"),
        Binding("A", "amend", "Amend", key_display="A", show=False),
        Binding("h", "history", "History"),
        Binding("v", "next_series", "Next series", show=False),
        # The preview's own keys, here too so that help lists them and they work wherever focus is.
        Binding("down,j", "preview('slice', 1)", "Next slice", key_display="↓/j", show=False),
        Binding("up,k", "preview('slice', -1)", "Previous slice", key_display="↑/k", show=False),
        Binding("pagedown", "preview('slice', 10)", "10 slices on", show=False),
        Binding("pageup", "preview('slice', -10)", "10 slices back", show=False),
        Binding("n", "preview('next_flagged')", "Next flagged slice", show=False),
        Binding("w", "preview('cycle_window')", "Window preset", show=False),
        Binding("b", "preview('toggle_regions')", "Regions on/off", show=False),
    ]

    def __init__(self, study_uid: str) -> None:
        super().__init__()
        self.study_uid = study_uid
        self.view: StudyView | None = None
        self.series: list[SeriesImages] = []
        self.series_uid: str | None = None  # the series in the preview
        self.selected_finding_id: int | None = None
        self._unsaved: str | None = None  # report text the service refused, offered again next time

    # -- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="study-body"):
            with VerticalScroll(id="study-left", can_focus=False):
                yield Static(AI_NOTE, id="ai-note", classes="ai-note")
                yield Static("", id="facts")
                yield Static("", id="series-list")
                yield Static("", id="urgency")
                yield Static("", id="findings")
                yield Static("", id="reading")
                yield Static("", id="reports")
            with Vertical(id="study-right"):
                yield ImagePreview(display=display_mode(self.app), id="preview")
        yield Footer()

    def on_mount(self) -> None:
        if self.reload() is None:
            self.app.pop_screen()

    @property
    def preview(self) -> ImagePreview:
        return self.query_one(ImagePreview)

    # -- service calls --------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call the service; a refusal (or any failure) becomes a notification and None."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # the reader must see why, never a traceback
            self._worklist_app.report_error(exc)
            return None

    @property
    def _worklist_app(self) -> WorklistHost:
        """The app, with its service and user (this screen runs only in a WorklistApp)."""
        return cast(WorklistHost, self.app)

    @property
    def _service(self) -> Any:
        return self._worklist_app.service

    def _hhmm(self, at: datetime | None) -> str:
        """A time as the reader's wall clock reads it: the site's zone, with its abbreviation."""
        return shown(at, self._worklist_app.service.settings.site.zone)

    @property
    def _user(self) -> str:
        return self._worklist_app.user

    def reload(self) -> StudyView | None:
        """Open the study again (a ``view`` event) and show what the index holds now."""
        view = self._call(self._service.open, self.study_uid, self._user)
        if view is None:
            return None
        series = self._call(self._service.series_images, self.study_uid)
        self.view = view
        self.series = series if series is not None else self.series
        ids = [f.id for f in view.findings]
        if self.selected_finding_id not in ids:
            best = strongest_finding(view.findings)
            self.selected_finding_id = best.id if best is not None else None
        if self.series_uid not in {s.series_uid for s in self.series}:
            chosen = default_series(self.series, view.findings)
            self.series_uid = chosen.series_uid if chosen is not None else None
        self._show_view()
        return view

    # -- rendering ------------------------------------------------------------------------------

    def _show_view(self) -> None:
        view = self.view
        if view is None:
            return
        self.query_one("#facts", Static).update(self._facts_text(view))
        self.query_one("#series-list", Static).update(self._series_text())
        self.query_one("#urgency", Static).update(self._urgency_text(view))
        self.query_one("#findings", Static).update(self._findings_text(view))
        self.query_one("#reading", Static).update(self._reading_text(view))
        self.query_one("#reports", Static).update(self._reports_text(view))
        # Blinded and not yet read: the preview gets no findings at all, so it cannot draw them.
        self.preview.show(self._current_series(), () if view.ai_hidden else view.findings)

    def _current_series(self) -> SeriesImages | None:
        return next((s for s in self.series if s.series_uid == self.series_uid), None)

    def _facts_text(self, view: StudyView) -> Text:
        s = view.study
        text = Text()
        text.append(format_person_name(s.patient_name), style="bold")
        if s.patient_id:
            text.append(f"  ID {s.patient_id}")
        text.append("\n")
        text.append(f"Sex {s.patient_sex or '?'}  Age {s.patient_age or '?'}\n")
        if s.conflicts:
            versions = "version" if s.conflicts == 1 else "versions"
            text.append(
                f"{CONFLICT_MARK}Conflict: {s.conflicts} {versions} re-sent with other content under this study's "
                f"instance UIDs, set aside; identity in doubt (h: history; triage case conflicts)\n",
                style="bold red",
            )
        text.append(f"Accession {s.accession_number or '(none)'}  Date {s.study_date or '?'}\n")
        text.append(f"{s.modality.replace(chr(92), '/')} {s.description or ''}".strip() + "\n")
        text.append(f"Order priority {s.order_priority or '(none)'}")
        if s.patient_location:
            text.append(f"  Location {s.patient_location}")
        if s.requesting_service:
            text.append(f"  From {s.requesting_service}")
        text.append("\n")
        text.append(f"Read state {s.read_state.value}  ", style="bold")
        if s.claimed_by is None:
            text.append("not claimed (c to claim)")
        elif s.claimed_by == self._user:
            text.append(f"claimed by you until {self._hhmm(s.claim_expires)}", style="green")
        else:
            text.append(f"claimed by {s.claimed_by} until {self._hhmm(s.claim_expires)}", style="red")
        return text

    def _series_text(self) -> Text:
        text = Text("Series (v: next)\n", style="bold")
        if not self.series:
            text.append("  (none stored)", style="dim")
        for s in self.series:
            mark = "▶ " if s.series_uid == self.series_uid else "  "
            number = f"#{s.series_number} " if s.series_number is not None else ""
            label = f"{mark}{number}{s.modality or '?'} {s.description or ''}".rstrip()
            text.append(f"{label}  {len(s.files)} images\n", style="bold" if mark.strip() else "")
        text.rstrip()
        return text

    def _urgency_text(self, view: StudyView) -> Text:
        u = view.urgency
        text = Text()
        style = {"critical": "bold red", "urgent": "bold yellow"}.get(u.priority_class.value, "bold")
        text.append(u.priority_class.value.upper(), style=style)
        text.append(f"  score {u.score:.1f}  waiting {u.waiting_min:.0f} min of {u.target_min:.0f}")
        if u.overdue:
            text.append("  OVERDUE", style="bold red")
        for reason in u.reasons:
            text.append(f"\n  • {reason}")
        return text

    def _findings_text(self, view: StudyView) -> Text:
        text = Text(f"{AI_LABEL}s\n", style="bold")
        if view.ai_hidden:
            text.append(f"{HIDDEN_REASON} (i)", style="italic yellow")
            return text
        s = view.study
        if not view.findings:
            if s.ai_status in ("scored", "partial"):
                text.append("none above reporting level", style="dim")
            elif s.ai_status == "failed":
                text.append(f"AI failed: {s.ai_reason or 'unknown reason'}", style="red")
            else:
                text.append(f"AI {s.ai_status}" + (f": {s.ai_reason}" if s.ai_reason else ""), style="dim")
        verdicts = self._verdicts(view)
        for f in view.findings:
            selected = f.id == self.selected_finding_id
            text.append("▶ " if selected else "  ", style="bold")
            text.append(f"{AI_LABEL}: {f.kind}", style="bold" if selected else "")
            text.append("  URGENT" if f.urgent else "  not urgent", style="bold red" if f.urgent else "dim")
            text.append(f"\n    probability {f.probability:.2f}, operating point {f.operating_point:.2f}")
            text.append(f"\n    model {f.model_name} {f.model_version} sha256 {f.weights_sha256[:12]}")
            n = len(f.regions)
            text.append(f"\n    {n} region{'s' if n != 1 else ''}")
            if f.series_uid != self.series_uid:
                text.append(" (another series: v)", style="dim")
            given = verdicts.get(f.id)
            text.append("\n    your feedback: ")
            text.append(given or "none (a agree, d disagree, u unsure)", style="cyan" if given else "dim")
            text.append("\n")
        missed = [fb for fb in view.feedback if fb.verdict is Verdict.MISSED]
        for fb in missed:
            text.append(f"  You noted the AI missed: {fb.kind}" + (f" ({fb.comment})" if fb.comment else "") + "\n")
        text.rstrip()
        return text

    @staticmethod
    def _verdicts(view: StudyView) -> dict[int, str]:
        """The reader's newest verdict per finding (earlier ones stay in the trail)."""
        out: dict[int, str] = {}
        for fb in view.feedback:  # oldest first: later ones overwrite
            if fb.finding_id is not None:
                out[fb.finding_id] = fb.verdict.value + (f" ({fb.comment})" if fb.comment else "")
        return out

    def _reading_text(self, view: StudyView) -> Text:
        text = Text("Your impression\n", style="bold")
        imp = view.impression
        if imp is None:
            text.append("not recorded (i)", style="dim")
        else:
            kinds = ", ".join(imp.kinds) if imp.kinds else "nothing called present"
            text.append(f"{imp.text}\n  [{kinds}] at {self._hhmm(imp.created_at)}")
        return text

    def _reports_text(self, view: StudyView) -> Text:
        text = Text("Report\n", style="bold")
        if not view.reports:
            text.append("no report yet (e to write a draft)", style="dim")
            return text
        by_id = {r.id: r for r in view.reports}
        for r in view.reports:
            line = f"  v{r.version} {r.status.value}"
            if r.signed_by:
                line += f" by {r.signed_by} at {self._hhmm(r.signed_at)}"
            else:
                line += f" by {r.author}"
            if r.amends_id is not None and r.amends_id in by_id:
                line += f", amends v{by_id[r.amends_id].version}"
            text.append(line + "\n")
        newest = view.reports[-1]
        lines = newest.text.strip().splitlines()
        shown = lines[:REPORT_LINES_SHOWN] + (
            [f"… ({len(lines) - REPORT_LINES_SHOWN} more lines)"] if len(lines) > REPORT_LINES_SHOWN else []
        )
        text.append("\n".join(shown), style="italic")
        return text

    # -- selection --------------------------------------------------------------------------------

    def selected_finding(self) -> FindingRow | None:
        """The finding a/d/u apply to."""
        if self.view is None:
            return None
        return next((f for f in self.view.findings if f.id == self.selected_finding_id), None)

    def action_select_finding(self, step: int) -> None:
        if self.view is None or not self.view.findings:
            return
        ids = [f.id for f in self.view.findings]
        at = ids.index(self.selected_finding_id) if self.selected_finding_id in ids else -step
        self.selected_finding_id = ids[(at + step) % len(ids)]
        finding = self.selected_finding()
        if finding is not None and finding.series_uid != self.series_uid:
            self.series_uid = finding.series_uid  # show the selected suggestion's series
        self._show_view()

    def action_next_series(self) -> None:
        if not self.series:
            return
        uids = [s.series_uid for s in self.series]
        at = uids.index(self.series_uid) if self.series_uid in uids else -1
        self.series_uid = uids[(at + 1) % len(uids)]
        self._show_view()

    def action_preview(self, action: str, *args: int) -> None:
        getattr(self.preview, f"action_{action}")(*args)

    # -- actions ----------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_claim(self) -> None:
        expires = self._call(self._service.claim, self.study_uid, self._user)
        if expires is not None:
            self.notify(f"Claimed until {self._hhmm(expires)}")
        self.reload()

    def action_release(self) -> None:
        state = self._call(self._service.release, self.study_uid, self._user)
        if state is not None:
            self.notify(f"Released; the study is {state.value}")
        self.reload()

    def action_impression(self) -> None:
        def done(result: tuple[str, tuple[str, ...]] | None) -> None:
            if result is None:
                return
            text, kinds = result
            if self._call(self._service.record_impression, self.study_uid, self._user, text, kinds) is not None:
                self.notify("Impression recorded" + ("; the AI's suggestions are shown" if self.view and self.view.ai_hidden else ""))
            self.reload()

        self.app.push_screen(ImpressionDialog(), done)

    def action_verdict(self, verdict: str) -> None:
        view = self.view
        if view is None:
            return
        if view.ai_hidden:
            self._worklist_app.report_error(InvalidTransition(f"cannot give feedback on study {self.study_uid}: {HIDDEN_REASON} (i)"))
            return
        finding = self.selected_finding()
        if finding is None:
            self.notify("No AI suggestion to give feedback on (m: the AI missed a finding)", severity="warning")
            return

        def done(comment: str | None) -> None:
            if comment is None:  # cancelled
                return
            done_id = self._call(
                self._service.feedback, self.study_uid, self._user, verdict, finding_id=finding.id, comment=comment or None
            )
            if done_id is not None:
                self.notify(f"{verdict.capitalize()} recorded for the AI's {finding.kind} suggestion")
            self.reload()

        title = f"{verdict.capitalize()}: {AI_LABEL.lower()} {finding.kind} {finding.probability:.2f}"
        self.app.push_screen(CommentDialog(title), done)

    def action_missed(self) -> None:
        def done(result: tuple[str, str | None] | None) -> None:
            if result is None:
                return
            kind, comment = result
            if self._call(self._service.feedback, self.study_uid, self._user, Verdict.MISSED, kind=kind, comment=comment) is not None:
                self.notify(f"Recorded: the AI missed a {kind}")
            self.reload()

        self.app.push_screen(MissedFindingDialog(), done)

    def _newest_report_text(self, status: str) -> str | None:
        if self.view is None:
            return None
        for r in reversed(self.view.reports):
            if r.status.value == status:
                return r.text
        return None

    def action_edit_report(self) -> None:
        view = self.view
        if view is None:
            return
        newest = view.reports[-1] if view.reports else None
        start = self._unsaved
        if start is None:
            start = newest.text if newest is not None and newest.status.value == "draft" else ""
        label = view.study.accession_number or view.study.study_uid

        def done(text: str | None) -> None:
            if text is None:
                return
            version = self._call(self._service.save_draft, self.study_uid, self._user, text)
            if version is None:
                self._unsaved = text  # refused: keep what was typed for the next try
            else:
                self._unsaved = None
                self.notify(f"Draft saved (version {version})")
            self.reload()

        self.app.push_screen(ReportEditor(f"Draft report for {label}", start), done)

    def action_sign(self) -> None:
        view = self.view
        if view is None:
            return
        try:
            user = check_user(self._user, "sign")
            newest = view.reports[-1] if view.reports else None
            if newest is None or newest.status.value != "draft":
                raise InvalidTransition(f"cannot sign study {self.study_uid}: no draft report (e to write one)")
            holder = view.study.claimed_by
            if holder is not None and holder != user:
                until = self._hhmm(view.study.claim_expires)
                raise ClaimConflict(f"cannot sign study {self.study_uid}: it is claimed by {holder} until {until}")
        except Exception as exc:
            self._worklist_app.report_error(exc)
            return

        def signed(secret: str | None) -> None:
            if secret is None:
                return
            # A wrong password is a notification and nothing is signed (the service is not called).
            credential = self._call(self._worklist_app.authenticate, secret)
            if credential is None:
                return
            version = self._call(self._service.sign, self.study_uid, user, credential)
            if version is not None:
                self.notify(f"Signed version {version} as {user}")
            self.reload()

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.app.push_screen(PasswordPrompt(f"Sign as {user}", self._worklist_app.password_prompt()), signed)

        self.app.push_screen(ConfirmSign(user, view.study, newest.text), done)

    def action_amend(self) -> None:
        view = self.view
        if view is None:
            return
        signed = self._newest_report_text("signed")
        if signed is None:
            self._worklist_app.report_error(InvalidTransition(f"cannot amend study {self.study_uid}: no signed report"))
            return
        if view.study.claimed_by != self._user:
            # Refused before the editor and the password prompt, not after the reader typed both.
            self._worklist_app.report_error(
                NotPermitted(f"cannot amend study {self.study_uid}: {self._user} has not claimed it (claim it first)")
            )
            return
        label = view.study.accession_number or view.study.study_uid

        def amended(text: str, secret: str | None) -> None:
            if secret is None:
                return
            credential = self._call(self._worklist_app.authenticate, secret)
            if credential is None:
                return
            version = self._call(self._service.amend, self.study_uid, self._user, text, credential)
            if version is not None:
                self.notify(f"Amendment started (version {version}); s signs it")
            self.reload()

        def done(text: str | None) -> None:
            if text is None:
                return
            prompt = PasswordPrompt(f"Amend the signed report of {label} as {self._user}", self._worklist_app.password_prompt())
            self.app.push_screen(prompt, lambda secret: amended(text, secret))

        self.app.push_screen(ReportEditor(f"Amend the signed report for {label}", signed), done)

    def action_history(self) -> None:
        events = self._call(self._service.history, self.study_uid)
        if events is not None:
            self.app.push_screen(HistoryScreen(self.study_uid, events, self._worklist_app.service.settings.site.zone))
