"""PNG plots of ``triage monitor``: agreement per subgroup with its interval,
and the weekly trend, per detector. matplotlib is imported here only (the
Agg canvas, no pyplot state), so the monitor's figures need no display.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from triage.monitor.stats import EMPTY, DetectorMonitor, MonitorError, MonitorReport, Proportion, StratumStatus, iso_week
from triage.monitor.text import STATUS_TEXT

logger = logging.getLogger(__name__)

PLOT_FOOTER = "radiologist feedback; not a clinical validation"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "detector"


def write_plots(report: MonitorReport, out_dir: str | Path) -> list[Path]:
    """Write PNGs: ``trend.png`` (weekly agreement and PPV per detector) and
    one ``strata-<detector>-<kind>.png`` (agreement per stratum with Wilson
    95% error bars) per detector with verdicts.

    ``trend.png`` is written even for an empty report (it then says so), so
    that its presence is predictable.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    MonitorError
        If ``out_dir`` cannot be created or written.
    """
    # Explicit Agg canvas, not pyplot: no global backend or figure state (safe in a server).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)

    def new_figure(size: tuple[float, float]) -> Figure:
        fig = Figure(figsize=size, dpi=100)
        FigureCanvasAgg(fig)
        return fig

    def save(fig: Figure, path: Path) -> Path:
        fig.text(0.5, 0.01, PLOT_FOOTER, ha="center", va="bottom", fontsize=8, color="0.35")
        fig.tight_layout(rect=(0.0, 0.04, 1.0, 1.0))
        fig.savefig(path, format="png")
        logger.info("wrote %s", path)
        return path

    try:
        out.mkdir(parents=True, exist_ok=True)
        written = [save(_trend_figure(new_figure((10.0, 6.4)), report), out / "trend.png")]
        for d in report.detectors:
            if d.agreement.n:
                path = out / f"strata-{_safe_name(d.model_name)}-{_safe_name(d.kind)}.png"
                size = (max(8.0, 0.5 * len(d.strata) + 4), 5.2)  # room for every stratum's label
                written.append(save(_strata_figure(new_figure(size), d), path))
    except OSError as exc:
        raise MonitorError(f"cannot write monitoring plots to {out}: {exc.strerror or exc}") from None
    return written


def _errorbar(ax: Any, x: Sequence[float], props: Sequence[Proportion], **kwargs: Any) -> None:
    ys = [p.value for p in props]
    lows = [p.value - p.ci[0] for p in props if p.ci and p.value is not None]
    highs = [p.ci[1] - p.value for p in props if p.ci and p.value is not None]
    ax.errorbar(x, ys, yerr=[lows, highs], capsize=3, **kwargs)


MAX_WEEK_TICKS = 26


def _trend_figure(fig: Any, report: MonitorReport) -> Any:
    ax_a, ax_p = fig.subplots(2, 1, sharex=True)
    starts = [w.start for d in report.detectors for w in d.weeks]
    drawn = False
    if starts:
        # Every week from the first to the last, so that a week without feedback shows as a gap.
        first, last = min(starts), max(starts)
        mondays = [first + timedelta(days=7 * i) for i in range((last - first).days // 7 + 1)]
        position = {monday: i for i, monday in enumerate(mondays)}
        for d in report.detectors:
            for ax, metric in ((ax_a, "agreement"), (ax_p, "ppv")):
                points = [(position[w.start], getattr(w, metric)) for w in d.weeks if getattr(w, metric).n]
                if points:
                    _errorbar(ax, [x for x, _ in points], [p for _, p in points], marker="o", label=d.label)
                    drawn = True
        done = {w.start: w.complete for d in report.detectors for w in d.weeks}
        step = max(1, math.ceil(len(mondays) / MAX_WEEK_TICKS))
        shown = mondays[::step]
        labels = [
            iso_week(datetime(m.year, m.month, m.day, tzinfo=UTC))[0] + ("" if done.get(m, True) else " (in progress)") for m in shown
        ]
        ax_p.set_xticks([position[m] for m in shown], labels, rotation=45, ha="right", fontsize=8)
    if drawn:
        ax_a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    else:
        ax_a.text(0.5, 0.5, EMPTY, ha="center", va="center", transform=ax_a.transAxes)
    ax_a.set(ylabel="agreement", ylim=(-0.02, 1.02), title="Weekly agreement and PPV (Wilson 95%)")
    ax_p.set(ylabel="PPV (AI urgent)", ylim=(-0.02, 1.02), xlabel="ISO week of feedback")
    for ax in (ax_a, ax_p):
        ax.grid(True, alpha=0.3)
    return fig


def _strata_figure(fig: Any, d: DetectorMonitor) -> Any:
    ax = fig.add_subplot()
    shown = [s for s in d.strata if s.agreement.n]
    colours = {
        StratumStatus.LOWER: "tab:red",
        StratumStatus.HIGHER: "tab:orange",
        StratumStatus.TOO_FEW: "0.6",
        StratumStatus.NO_COMPARISON: "0.4",
        StratumStatus.OK: "tab:blue",
    }
    for status, colour in colours.items():
        chosen = [(i, s) for i, s in enumerate(shown) if s.status is status]
        if chosen:
            # Hollow markers for strata too small to judge: visible, but not to be read as findings.
            face = "none" if status is StratumStatus.TOO_FEW else colour
            _errorbar(
                ax,
                [i for i, _ in chosen],
                [s.agreement for _, s in chosen],
                marker="o",
                linestyle="none",
                color=colour,
                markerfacecolor=face,
                label=STATUS_TEXT[status],
            )
    overall = d.agreement.value
    if overall is not None:
        ax.axhline(overall, linestyle="--", color="0.3", linewidth=1, label=f"overall {overall:.2f}")
    ax.set_xticks(range(len(shown)), [f"{s.dimension}: {s.value} (n={s.agreement.n})" for s in shown], rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(-0.02, 1.02), ylabel="agreement", title=f"Agreement per stratum: {d.label} (Wilson 95%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    return fig
