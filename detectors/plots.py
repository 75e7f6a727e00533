"""ROC, FROC and reliability plots for ``triage evaluate --plots DIR``.

matplotlib is imported inside the functions: importing this module costs
nothing, and nothing else in the package pays for matplotlib. Figures are
drawn on an explicit Agg canvas rather than through ``pyplot``, so no global
backend or figure state is touched (safe in a server process or in threads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FOOTER = "synthetic phantoms; not a medical device"
REAL_FOOTER = "real anatomy with inserted lesions (not real lesions); not a medical device"
LOCAL_FOOTER = "the site's own labelled studies; not a medical device"  # triage evaluate --labels

# Curves with (fpr, tpr, auc, (ci_low, ci_high) or None).
RocCurve = tuple[ArrayLike, ArrayLike, float, "tuple[float, float] | None"]
# Reliability bins: (low, high, n, mean predicted or None, observed positive fraction or None).
ReliabilityBin = tuple[float, float, int, "float | None", "float | None"]


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | PathLike[str], footer: str = FOOTER) -> Path:
    out = Path(path)
    fig.text(0.5, 0.01, footer, ha="center", va="bottom", fontsize=8, color="0.35")
    # Leave room at the bottom for the footer.
    fig.tight_layout(rect=(0.0, 0.04, 1.0, 1.0))
    fig.savefig(out, format="png")
    return out


def plot_roc(
    path: str | PathLike[str],
    curves: Mapping[str, RocCurve],
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    *,
    title: str = "ROC: study-level detection",
    footer: str = FOOTER,
) -> Path:
    """Write ROC curves of several detectors to one PNG.

    Parameters
    ----------
    path : path-like
        The PNG to write; its folder must exist.
    curves : mapping of name -> (fpr, tpr, auc, ci)
        One curve per detector; ``ci`` is ``(low, high)`` or ``None``. The
        legend reads ``name: AUC 0.93 [0.90, 0.96]``.
    operating_points : mapping of name -> (fpr, tpr), optional
        Each detector's operating point (``1 - specificity``, sensitivity),
        drawn as a marker in the colour of its curve.
    title : str
        Figure title.
    footer : str
        What the figures come from, printed under the plot.

    Returns
    -------
    Path
        ``path``.
    """
    points = dict(operating_points or {})
    unknown = sorted(set(points) - set(curves))
    if unknown:
        raise ValueError(f'Argument "operating_points" names detectors without a curve: {", ".join(unknown)}')
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", label="chance")
    for name, (fpr, tpr, area, ci) in curves.items():
        fpr_a, tpr_a = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if fpr_a.shape != tpr_a.shape or fpr_a.ndim != 1:
            raise ValueError(f'Argument "curves" entry {name!r} must have fpr and tpr of the same 1-D shape')
        label = f"{name}: AUC {area:.3f}"
        if ci is not None:
            label += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
        # Straight segments between points: a tie between classes is a diagonal step.
        (line,) = ax.plot(fpr_a, tpr_a, label=label)
        if name in points:
            x, y = points[name]
            ax.plot([x], [y], marker="o", markersize=7, color=line.get_color(), linestyle="none", label=f"{name} operating point")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)", title=title
    )
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title="AUC [95% CI]", title_fontsize=8)
    return _save(fig, path, footer)


def plot_froc(
    path: str | PathLike[str],
    curve: tuple[ArrayLike, ArrayLike],
    marks: Mapping[float, float] | None = None,
    *,
    label: str = "detector",
    title: str = "FROC: lesion-level detection",
    footer: str = FOOTER,
) -> Path:
    """Write a FROC curve (lesion sensitivity against false positives per scan) to a PNG.

    Parameters
    ----------
    path : path-like
        The PNG to write; its folder must exist.
    curve : (avg_fps, sensitivities)
        Parallel 1-D arrays, e.g. ``FrocResult.avg_fps`` and
        ``FrocResult.sensitivities``; points at 0 FPs are drawn at the left
        edge of the log axis.
    marks : mapping of fp rate -> sensitivity, optional
        Operating points to mark and annotate (e.g. LUNA16's 1/8 .. 8).
    label : str
        Legend entry of the curve (e.g. ``"nodule-ct (CPM 0.81)"``).
    title : str
        Figure title.
    footer : str
        What the figures come from, printed under the plot.

    Returns
    -------
    Path
        ``path``.
    """
    fps = np.asarray(curve[0], dtype=float)
    sens = np.asarray(curve[1], dtype=float)
    if fps.shape != sens.shape or fps.ndim != 1 or fps.size == 0:
        raise ValueError('Argument "curve" must be two non-empty 1-D arrays of the same length')
    marks = dict(marks or {})
    positive = [x for x in [*fps[fps > 0], *marks] if x > 0]
    # Log2 axis as in LUNA16; it starts one octave left of the smallest point.
    left = 2.0 ** math.floor(math.log2(min(positive, default=0.125)) - 1)
    right = 2.0 ** math.ceil(math.log2(max(positive, default=8.0)) + 0.5)
    order = np.argsort(fps, kind="stable")
    fig = _new_figure()
    ax = fig.add_subplot()
    # Step drawing: between two thresholds the sensitivity reachable at a given
    # FP budget is that of the last point to the left, not an interpolation.
    (line,) = ax.plot(np.maximum(fps[order], left), sens[order], drawstyle="steps-post", label=label)
    # Past the last candidate more FPs buy nothing: the sensitivity stays (dotted).
    ax.plot([max(fps.max(), left), right], [sens.max()] * 2, linestyle=":", color=line.get_color())
    if marks:
        xs = np.array(sorted(marks))
        ys = np.array([marks[x] for x in xs])
        ax.plot(xs, ys, marker="o", linestyle="none", color="C3", label="sensitivity at FPs/scan")
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = [2.0**e for e in range(round(math.log2(left)), round(math.log2(right)) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    # "1/8" reads better than 2^-3 and matches how FROC rates are quoted.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}" if x >= 1 else f"1/{1 / x:g}"))
    ax.set(xlim=(left, right), ylim=(0, 1.05), xlabel="average false positives per scan", ylabel="lesion sensitivity", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, footer)


def plot_reliability(
    path: str | PathLike[str],
    bins: Sequence[ReliabilityBin],
    *,
    ece: float | None = None,
    title: str = "Reliability: calibrated probability",
    footer: str = FOOTER,
) -> Path:
    """Write a reliability diagram: observed positive fraction against mean predicted probability.

    Parameters
    ----------
    path : path-like
        The PNG to write; its folder must exist.
    bins : sequence of (low, high, n, mean_predicted, observed)
        Probability bins, e.g. from :func:`detectors.evaluation.reliability_bins`;
        empty bins (``n == 0``) are drawn as gaps. Each point is annotated with
        its study count, and a lower panel shows the counts per bin, so a
        point resting on two studies is not read like one resting on two hundred.
    ece : float, optional
        Expected calibration error, shown in the legend.
    title : str
        Figure title.
    footer : str
        What the figures come from, printed under the plot.

    Returns
    -------
    Path
        ``path``.
    """
    rows = list(bins)
    if not rows:
        raise ValueError('Argument "bins" must hold at least one bin')
    for i, (low, high, n, _, _) in enumerate(rows):
        if not 0.0 <= low < high <= 1.0 or n < 0:
            raise ValueError(f'Argument "bins" item {i} must have 0 <= low < high <= 1 and n >= 0, got {rows[i]!r}')
    filled = [(mean, seen, n) for _, _, n, mean, seen in rows if n and mean is not None and seen is not None]
    fig = _new_figure()
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", label="perfect calibration")
    label = "detector" if ece is None else f"detector (ECE {ece:.3f})"
    if filled:
        xs, ys, ns = (np.array(v, dtype=float) for v in zip(*filled, strict=True))
        ax.plot(xs, ys, marker="o", label=label)
        for x, y, n in zip(xs, ys, ns, strict=True):
            ax.annotate(f"n={int(n)}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.05), ylabel="observed fraction positive", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    counts.bar(
        [(low + high) / 2 for low, high, *_ in rows],
        [n for _, _, n, *_ in rows],
        width=[(high - low) * 0.9 for low, high, *_ in rows],
        color="0.55",
    )
    counts.set(xlabel="mean predicted probability (bin)", ylabel="studies")
    counts.grid(True, alpha=0.3)
    return _save(fig, path, footer)
