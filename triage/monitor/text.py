"""The text report of ``triage monitor``: a :class:`triage.monitor.stats.MonitorReport`
as human-readable tables (headline figures, bias-watch strata, weekly drift).

The figures themselves are computed in :mod:`triage.monitor.stats`; the plots are
in :mod:`triage.monitor.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

from triage.monitor.stats import EMPTY, NOTE, DriftCheck, DriftStatus, MonitorReport, Proportion, StratumStatus


def _fmt_p(p: Proportion) -> tuple[str, str, str]:
    """(value, [low, high], k/n) columns; dashes when there is nothing to divide."""
    if p.value is None or p.ci is None:
        return "-", "-", f"{p.k}/{p.n}"
    return f"{p.value:.2f}", f"[{p.ci[0]:.2f}, {p.ci[1]:.2f}]", f"{p.k}/{p.n}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return (indent + "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


STATUS_TEXT = {
    StratumStatus.OK: "ok",
    StratumStatus.LOWER: "FLAG lower than rest",
    StratumStatus.HIGHER: "FLAG higher than rest",
    StratumStatus.TOO_FEW: "too few to judge",
    StratumStatus.NO_COMPARISON: "rest too few to compare",
}


def _drift_text(d: DriftCheck, min_n: int) -> str:
    if d.status is DriftStatus.NO_COMPLETE_WEEK:
        return "drift: no complete week with verdicts yet"
    assert d.agreement is not None and d.overall is not None
    value, ci, kn = _fmt_p(d.agreement)
    where = f"{d.week}: {value} {ci} ({kn}) vs overall {d.overall:.2f}"
    if d.status is DriftStatus.TOO_FEW:
        return f"drift: too few to judge ({where}; fewer than {min_n})"
    if d.status is DriftStatus.DRIFT:
        return f"drift: FLAG, latest complete week entirely below overall ({where})"
    return f"drift: ok ({where})"


def format_text(report: MonitorReport) -> str:
    """The report as human-readable tables (for ``triage monitor``)."""
    lines = [f"Detector monitoring at {report.generated_at:%Y-%m-%d %H:%M} UTC", NOTE]
    if report.empty:
        lines += ["", EMPTY + "."]
        if report.detectors:
            lines.append("Detectors with findings: " + ", ".join(f"{d.label}: {d.findings} findings" for d in report.detectors))
        return "\n".join(lines) + "\n"
    lines.append(
        'Agreement = agree / (agree + disagree); "unsure" is counted but left out. '
        "Intervals are Wilson 95%. Newest verdict per user and finding."
    )
    lines += ["", "Flags"]
    flags = [
        f"  bias: {d.label} {s.dimension}={s.value}: {_fmt_p(s.agreement)[0]} {_fmt_p(s.agreement)[1]} "
        f"vs rest {_fmt_p(s.rest.agreement)[0]} {_fmt_p(s.rest.agreement)[1]} ({s.status.value})"
        for d, s in report.bias_flags
    ] + [f"  {d.label} {_drift_text(d.drift, report.min_n)}" for d in report.drift_flags]
    lines += flags or ["  none"]
    for d in report.detectors:
        lines += ["", f"== {d.label}" + (f", versions {', '.join(d.versions)}" if d.versions else "") + " =="]
        lines.append(
            f"  findings {d.findings} (urgent {d.urgent_findings}); findings reviewed {d.findings_reviewed}; "
            f"verdicts: agree {d.counts.agree}, disagree {d.counts.disagree}, unsure {d.counts.unsure}; "
            f"missed {d.misses}"
        )
        if d.counts.total == 0 and d.misses == 0:
            lines.append("  " + EMPTY + " for this detector.")
            continue
        lines += _table(
            ["metric", "value", "95% CI", "k/n"],
            [["agreement", *_fmt_p(d.agreement)], ["PPV (AI urgent)", *_fmt_p(d.ppv)], ["sensitivity (est.)", *_fmt_p(d.sensitivity)]],
        )
        lines.append("  sensitivity (est.) = agreed urgent / (agreed urgent + recorded misses); unrecorded misses are unseen.")
        if d.misses_shared:
            lines.append(f"  {d.misses_shared} of the misses are shared with another detector of kind {d.kind}.")
        if d.strata:
            lines += ["", f"  Strata (bias watch: interval vs the rest's; n < {report.min_n}: too few to judge)"]
            rows = []
            for s in d.strata:
                value, ci, _ = _fmt_p(s.agreement)
                rest_value, rest_ci, _ = _fmt_p(s.rest.agreement)
                rest = f"{rest_value} {rest_ci}" if s.rest.agreement.n else "-"
                rows.append([s.dimension, s.value, str(s.agreement.n), value, ci, rest, STATUS_TEXT[s.status]])
            lines += _table(["dimension", "stratum", "n", "agreement", "95% CI", "rest", "status"], rows, "    ")
        if d.weeks:
            lines += ["", "  Weekly (ISO week of the feedback)"]
            rows = []
            for w in d.weeks:
                a, ac, _ = _fmt_p(w.agreement)
                p, pc, _ = _fmt_p(w.ppv)
                rows.append([w.week, str(w.agreement.n), a, ac, p, pc, "complete" if w.complete else "in progress"])
            lines += _table(["week", "n", "agreement", "95% CI", "PPV", "95% CI", "week"], rows, "    ")
        lines.append("  " + _drift_text(d.drift, report.min_n))
    if report.unattributed_misses:
        lines += [
            "",
            "Misses of kinds no detector produced: " + ", ".join(f"{k} {n}" for k, n in sorted(report.unattributed_misses.items())),
        ]
    if report.ignored_feedback:
        lines.append(f"Ignored {report.ignored_feedback} feedback rows whose verdict cannot apply to a finding.")
    return "\n".join(lines) + "\n"
