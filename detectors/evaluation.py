"""The evaluation report behind ``triage evaluate``: per-study outcomes in, per-detector numbers out.

The caller (the CLI) scores the studies and pairs each detector's output with
the manifest's truth as :class:`StudyOutcome` records; :func:`evaluate` turns
them into one :class:`DetectorReport` per detector. Everything here is pure
apart from the optional PNG plots, written only when a folder is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectors.metrics import (
    LUNA16_FP_RATES,
    Box,
    FrocCase,
    FrocResult,
    SliceRange,
    as_box,
    as_slice_range,
    auc,
    bootstrap_auc_ci,
    box_iou,
    confusion,
    froc,
    region_hits_lesion,
    roc_curve,
)
from detectors.plots import FOOTER as DISCLAIMER  # one wording for plots and text; matplotlib stays lazy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyOutcome:
    """One detector's output on one study, next to the study's truth.

    Parameters
    ----------
    kind : str
        The detector's name, e.g. ``"bleed-ct"``; reports are grouped by it.
    study_folder : str
        Where the study came from (for messages and drill-down).
    label : bool
        Whether the study truly has the detector's finding.
    probability : float
        The detector's calibrated study-level score.
    urgent : bool
        The decision taken (``probability >= operating_point``).
    operating_point : float
        The detector's threshold.
    regions : sequence of (box, slices, probability)
        The detector's regions: ``box`` ``(row0, col0, row1, col1)``
        half-open, ``slices`` ``(first, last)`` inclusive.
    truth : sequence of (box, slices)
        The true lesions of this finding kind, as in the manifest's findings
        (see :func:`truth_from_findings`).
    """

    kind: str
    study_folder: str
    label: bool
    probability: float
    urgent: bool
    operating_point: float
    regions: Sequence[tuple[Box, SliceRange, float]] = ()
    truth: Sequence[tuple[Box, SliceRange]] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f'Argument "kind" must be a detector name, got {self.kind!r}')
        for name in ("probability", "operating_point"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f'Argument "{name}" must be a finite number, got {value!r} ({self.study_folder})')
        regions = []
        for i, region in enumerate(self.regions):
            try:
                box, slices, probability = region
            except (TypeError, ValueError):
                raise ValueError(f'Argument "regions" must hold (box, slices, probability), item {i} is {region!r}') from None
            if not isinstance(probability, (int, float, np.number)) or not math.isfinite(probability):
                raise ValueError(f'Argument "regions" item {i} must have a finite probability, got {probability!r}')
            regions.append((as_box("regions", box), as_slice_range("regions", slices), float(probability)))
        truth = []
        for i, lesion in enumerate(self.truth):
            try:
                box, slices = lesion
            except (TypeError, ValueError):
                raise ValueError(f'Argument "truth" must hold (box, slices), item {i} is {lesion!r}') from None
            truth.append((as_box("truth", box), as_slice_range("truth", slices)))
        # Manifests give lists; tuples keep the record immutable and comparable.
        object.__setattr__(self, "regions", tuple(regions))
        object.__setattr__(self, "truth", tuple(truth))
        object.__setattr__(self, "label", bool(self.label))
        object.__setattr__(self, "urgent", bool(self.urgent))
        object.__setattr__(self, "probability", float(self.probability))
        object.__setattr__(self, "operating_point", float(self.operating_point))


def truth_from_findings(findings: Iterable[Mapping[str, Any]], kind: str | None = None) -> list[tuple[Box, SliceRange]]:
    """``(box, slices)`` of a manifest study's findings, optionally only those of one ``kind``.

    Parameters
    ----------
    findings : iterable of mapping
        The manifest's ``findings`` entries, with ``box`` ``[row0, col0,
        row1, col1]``, ``slices`` ``[first, last]`` and ``kind``.
    kind : str, optional
        Keep only findings of this kind (``"bleed"``, ``"fracture"``,
        ``"nodule"``).
    """
    out = []
    for i, finding in enumerate(findings):
        if kind is not None and finding.get("kind") != kind:
            continue
        if "box" not in finding or "slices" not in finding:
            raise ValueError(f'Argument "findings" item {i} must have "box" and "slices"')
        out.append((as_box("findings", finding["box"]), as_slice_range("findings", finding["slices"])))
    return out


@dataclass(frozen=True)
class DetectorReport:
    """The evaluation of one detector.

    Rates whose denominator is empty are ``None`` and ``notes`` says why.
    ``auc_ci`` is a percentile bootstrap interval (stratified by label);
    ``sensitivity_ci``/``specificity_ci`` are Wilson intervals, all at
    ``level``. Sensitivity and specificity count the ``urgent`` decisions.

    Localisation: ``localised`` of ``urgent_positives`` (positive studies
    flagged urgent that have truth boxes) have a region hitting a true
    lesion; ``lesions_hit`` of ``lesions`` true lesions are hit by any region
    (urgent or not). ``froc`` is set for nodule detectors only.
    """

    detector: str
    n: int
    n_positive: int
    n_negative: int
    auc: float | None
    auc_ci: tuple[float, float] | None
    operating_point: float | None
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: float | None
    sensitivity_ci: tuple[float, float] | None
    specificity: float | None
    specificity_ci: tuple[float, float] | None
    urgent_positives: int
    localised: int
    lesions: int
    lesions_hit: int
    froc: FrocResult | None = None
    # The strongest region of each positive study with truth, on a lesion or not; normal studies showing a region.
    positives_with_truth: int = 0
    top_on_lesion: int = 0
    negatives_with_regions: int = 0
    notes: tuple[str, ...] = ()
    level: float = 0.95
    # Calibration: equal-width probability bins and their expected calibration error.
    reliability: tuple[ReliabilityBin, ...] = ()
    ece: float | None = None
    # (fpr, tpr) for plotting; left out of JSON and repr.
    roc: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def localisation_hit_rate(self) -> float | None:
        """Share of urgent true-positive studies whose regions hit a true lesion."""
        return self.localised / self.urgent_positives if self.urgent_positives else None

    @property
    def top_region_rate(self) -> float | None:
        """Share of positive studies (with truth) whose most probable region is on a true lesion."""
        return self.top_on_lesion / self.positives_with_truth if self.positives_with_truth else None

    @property
    def lesion_hit_rate(self) -> float | None:
        """Share of all true lesions hit by at least one region."""
        return self.lesions_hit / self.lesions if self.lesions else None


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: studies whose probability fell in ``[low, high)``.

    The last bin is closed (``[low, 1.0]``). ``mean_predicted`` and
    ``observed`` (the fraction of positive studies) are ``None`` for an
    empty bin.
    """

    low: float
    high: float
    n: int
    positives: int
    mean_predicted: float | None

    @property
    def observed(self) -> float | None:
        return self.positives / self.n if self.n else None


def reliability_bins(labels: Sequence[bool], probabilities: Sequence[float], n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width probability bins over [0, 1] with their counts, mean probability and positive fraction.

    Parameters
    ----------
    labels, probabilities : sequence, shape (n,)
        Each study's truth and calibrated probability (in [0, 1]).
    n_bins : int
        Number of bins; all bins are returned, empty ones with ``n == 0``, so
        that diagrams of two detectors line up.
    """
    if n_bins < 1:
        raise ValueError(f'Argument "n_bins" must be at least 1, got {n_bins!r}')
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f'Arguments "labels" and "probabilities" must be 1-D and of one length, got {y.shape} and {p.shape}')
    if p.size and (not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError('Argument "probabilities" must lie in [0, 1]')
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-open bins, but 1.0 belongs to the last one: a saturated detector's
    # studies must show up in the diagram, not fall off its edge.
    index = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = index == b
        n = int(inside.sum())
        bins.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n, int(y[inside].sum()), float(p[inside].mean()) if n else None))
    return bins


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float | None:
    """``sum_b n_b / N * |observed_b - mean_predicted_b|`` over the bins; None when they hold no study.

    The gap between how often studies with a given probability are positive
    and that probability, averaged over studies: 0 for a perfectly calibrated
    detector; a saturated one scoring every normal study near 1 scores high.
    """
    total = sum(b.n for b in bins)
    if not total:
        return None
    return float(sum(b.n / total * _calibration_gap(b) for b in bins if b.n))


def _calibration_gap(b: ReliabilityBin) -> float:
    """``|observed - mean_predicted|`` of a bin holding studies."""
    if b.mean_predicted is None:
        # As before, when the arithmetic met None: a non-empty bin must have a mean prediction.
        raise TypeError(f"a reliability bin holding {b.n} studies has no mean_predicted")
    return abs(b.positives / b.n - b.mean_predicted)


def _is_nodule(name: str) -> bool:
    return "nodule" in name.lower()


def _hit_lesion(box: Box, slices: SliceRange, truth: Sequence[tuple[Box, SliceRange]], min_iou: float) -> int | None:
    """Index of the true lesion a region hits (best IoU, then lowest index), or None."""
    best, best_iou = None, -1.0
    for i, (lesion_box, lesion_slices) in enumerate(truth):
        if region_hits_lesion(box, slices, lesion_box, lesion_slices, min_iou):
            # One region credits one lesion, so that FROC counts it once.
            iou = box_iou(box, lesion_box)
            if iou > best_iou:
                best, best_iou = i, iou
    return best


def _report(
    name: str, outcomes: Sequence[StudyOutcome], *, n_boot: int, seed: int, level: float, min_iou: float, with_froc: bool
) -> DetectorReport:
    notes: list[str] = []
    labels = np.array([o.label for o in outcomes], dtype=bool)
    scores = np.array([o.probability for o in outcomes], dtype=np.float64)
    urgent = np.array([o.urgent for o in outcomes], dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(outcomes) - n_pos

    area: float | None = None
    area_ci: tuple[float, float] | None = None
    roc: tuple[np.ndarray, np.ndarray] | None = None
    if n_pos and n_neg:
        area = auc(labels, scores)
        area_ci = bootstrap_auc_ci(labels, scores, n_boot=n_boot, seed=seed, level=level)
        fpr, tpr, _ = roc_curve(labels, scores)
        roc = (fpr, tpr)
    else:
        present = "positive" if n_pos else "negative"
        notes.append(f"only {present} studies (n={len(outcomes)}): AUC undefined")

    points = sorted({o.operating_point for o in outcomes})
    operating_point = points[0] if len(points) == 1 else None
    if len(points) > 1:
        notes.append(
            f"operating point differs between studies ({points[0]:.4g} .. {points[-1]:.4g}); "
            "sensitivity/specificity count each study's urgent flag"
        )
    # Sensitivity and specificity count the decisions the system showed, so a
    # mismatch with probability >= operating point is worth a note, not a fix.
    disagree = sum(o.urgent != (o.probability >= o.operating_point) for o in outcomes)
    if disagree:
        notes.append(f"{disagree} studies' urgent flag disagrees with probability >= operating point")
    counts = confusion(labels, urgent, level)
    if not n_pos:
        notes.append("no positive studies: sensitivity undefined")
    if not n_neg:
        notes.append("no negative studies: specificity undefined")

    urgent_positives = localised = lesions = lesions_hit = 0
    positives_with_truth = top_on_lesion = negatives_with_regions = 0
    missing_truth = 0
    cases: list[FrocCase] = []
    for o in outcomes:
        hits = [_hit_lesion(box, slices, o.truth, min_iou) for box, slices, _ in o.regions]
        lesions += len(o.truth)
        lesions_hit += len({h for h in hits if h is not None})
        if o.label and o.truth:
            positives_with_truth += 1
            top_on_lesion += bool(hits) and hits[0] is not None  # regions come strongest first
        negatives_with_regions += (not o.label) and bool(o.regions)
        if o.label and o.urgent:
            if o.truth:
                urgent_positives += 1
                localised += any(h is not None for h in hits)
            else:
                missing_truth += 1
        if with_froc:
            cases.append(FrocCase(len(o.truth), [(p, h) for (_, _, p), h in zip(o.regions, hits, strict=True)]))
    if missing_truth:
        notes.append(f"{missing_truth} urgent positive studies have no truth box: left out of localisation")

    froc_result = None
    if with_froc:
        if lesions:
            froc_result = froc(cases, LUNA16_FP_RATES)
        else:
            notes.append("no true lesions: FROC undefined")

    bins = reliability_bins(labels.tolist(), scores.tolist()) if np.all((scores >= 0) & (scores <= 1)) else []
    if not bins:
        notes.append("probabilities outside [0, 1]: no reliability diagram or calibration error")

    return DetectorReport(
        detector=name,
        n=len(outcomes),
        n_positive=n_pos,
        n_negative=n_neg,
        auc=area,
        auc_ci=area_ci,
        operating_point=operating_point,
        tp=counts.tp,
        fn=counts.fn,
        tn=counts.tn,
        fp=counts.fp,
        sensitivity=counts.sensitivity,
        sensitivity_ci=counts.sensitivity_ci,
        specificity=counts.specificity,
        specificity_ci=counts.specificity_ci,
        urgent_positives=urgent_positives,
        localised=localised,
        lesions=lesions,
        lesions_hit=lesions_hit,
        froc=froc_result,
        positives_with_truth=positives_with_truth,
        top_on_lesion=top_on_lesion,
        negatives_with_regions=negatives_with_regions,
        notes=tuple(notes),
        level=level,
        roc=roc,
        reliability=tuple(bins),
        ece=expected_calibration_error(bins),
    )


def evaluate(
    outcomes: Iterable[StudyOutcome],
    plots_dir: Path | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_iou: float = 0.0,
    froc_detectors: Collection[str] | None = None,
    footer: str = DISCLAIMER,
) -> list[DetectorReport]:
    """Evaluate every detector found in ``outcomes``.

    Parameters
    ----------
    outcomes : iterable of StudyOutcome
        Any mix of detectors; grouped by ``kind``.
    plots_dir : Path, optional
        When given (created if missing), write ``roc.png`` (all detectors with
        an AUC), ``froc-<detector>.png`` for each detector with a FROC and
        ``reliability-<detector>.png`` for each detector.
    n_boot, seed : int
        Bootstrap resamples and seed of the AUC interval (reproducible).
    level : float
        Confidence level of every interval.
    min_iou : float
        IoU a region needs, on top of overlapping, to hit a lesion.
    froc_detectors : collection of str, optional
        Detectors whose regions are candidates for a FROC; by default those
        whose name contains ``"nodule"``.
    footer : str
        What the figures come from, printed under each plot.

    Returns
    -------
    list of DetectorReport
        One per detector, sorted by name.
    """
    groups: dict[str, list[StudyOutcome]] = {}
    for i, outcome in enumerate(outcomes):
        if not isinstance(outcome, StudyOutcome):
            raise ValueError(f'Argument "outcomes" must hold StudyOutcome items, item {i} is {type(outcome).__name__}')
        groups.setdefault(outcome.kind, []).append(outcome)
    if not groups:
        raise ValueError('Argument "outcomes" must hold at least one study')
    reports = [
        _report(
            name,
            groups[name],
            n_boot=n_boot,
            seed=seed,
            level=level,
            min_iou=min_iou,
            with_froc=(name in froc_detectors) if froc_detectors is not None else _is_nodule(name),
        )
        for name in sorted(groups)
    ]
    if plots_dir is not None:
        write_plots(reports, Path(plots_dir), footer=footer)
    return reports


def write_plots(reports: Sequence[DetectorReport], plots_dir: Path, *, footer: str = DISCLAIMER) -> list[Path]:
    """Write ``roc.png``, one ``froc-<detector>.png`` per FROC and one ``reliability-<detector>.png`` per detector.

    Returns the paths written. ``roc.png`` is written even when no detector has
    an AUC (it then shows only the chance line), so its presence is predictable.
    """
    from detectors.plots import plot_froc, plot_reliability, plot_roc

    plots_dir.mkdir(parents=True, exist_ok=True)
    curves = {}
    points = {}
    for r in reports:
        if r.roc is not None and r.auc is not None:
            curves[r.detector] = (r.roc[0], r.roc[1], r.auc, r.auc_ci)
            if r.sensitivity is not None and r.specificity is not None:
                points[r.detector] = (1.0 - r.specificity, r.sensitivity)
    written = [plot_roc(plots_dir / "roc.png", curves, points, footer=footer)]
    for r in reports:
        if r.froc is not None:
            written.append(
                plot_froc(
                    plots_dir / f"froc-{r.detector}.png",
                    (r.froc.avg_fps, r.froc.sensitivities),
                    dict(zip(r.froc.fp_rates, r.froc.sensitivities_at_rates, strict=True)),
                    label=f"{r.detector} (CPM {r.froc.cpm:.3f})",
                    title=f"FROC: {r.detector}",
                    footer=footer,
                )
            )
    for r in reports:
        if r.reliability:
            written.append(
                plot_reliability(
                    plots_dir / f"reliability-{r.detector}.png",
                    [(b.low, b.high, b.n, b.mean_predicted, b.observed) for b in r.reliability],
                    ece=r.ece,
                    title=f"Reliability: {r.detector} (n={r.n})",
                    footer=footer,
                )
            )
    for path in written:
        logger.info("wrote %s", path)
    return written


# --------------------------------------------------------------------------- output


def _ci(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def reports_as_json(reports: Sequence[DetectorReport], disclaimer: str = DISCLAIMER) -> dict[str, Any]:
    """A JSON-ready dict (plain floats, no NaN) of the reports.

    ``{"disclaimer": ..., "detectors": [{...}, ...]}``; undefined numbers are
    ``null``.
    """
    detectors = []
    for r in reports:
        entry: dict[str, Any] = {
            "detector": r.detector,
            "n": r.n,
            "n_positive": r.n_positive,
            "n_negative": r.n_negative,
            "confidence_level": r.level,
            "auc": r.auc,
            "auc_ci": _ci(r.auc_ci),
            "operating_point": r.operating_point,
            "counts": {"tp": r.tp, "fn": r.fn, "tn": r.tn, "fp": r.fp},
            "sensitivity": r.sensitivity,
            "sensitivity_ci": _ci(r.sensitivity_ci),
            "specificity": r.specificity,
            "specificity_ci": _ci(r.specificity_ci),
            "localisation": {
                "urgent_positive_studies": r.urgent_positives,
                "localised": r.localised,
                "hit_rate": r.localisation_hit_rate,
                "lesions": r.lesions,
                "lesions_hit": r.lesions_hit,
                "lesion_hit_rate": r.lesion_hit_rate,
                "positive_studies_with_truth": r.positives_with_truth,
                "top_region_on_lesion": r.top_on_lesion,
                "top_region_rate": r.top_region_rate,
                "negative_studies_with_regions": r.negatives_with_regions,
            },
            "froc": None,
            "calibration": {
                "expected_calibration_error": r.ece,
                "bins": [
                    {
                        "low": b.low,
                        "high": b.high,
                        "n": b.n,
                        "positives": b.positives,
                        "mean_predicted": b.mean_predicted,
                        "observed": b.observed,
                    }
                    for b in r.reliability
                ],
            },
            "notes": list(r.notes),
        }
        if r.froc is not None:
            entry["froc"] = {
                "n_scans": r.froc.n_scans,
                "n_lesions": r.froc.n_lesions,
                "fp_rates": list(r.froc.fp_rates),
                "sensitivities": list(r.froc.sensitivities_at_rates),
                "cpm": r.froc.cpm,
                "sensitivity_at_1fp": r.froc.sensitivity_at_fp(1.0),
            }
        detectors.append(entry)
    return {"disclaimer": disclaimer, "detectors": detectors}


def _rate(value: float | None, ci: tuple[float, float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if ci is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def _fraction(k: int, n: int) -> str:
    return f"{k}/{n} {k / n:.2f}" if n else "-"


def format_reports(reports: Sequence[DetectorReport], disclaimer: str = DISCLAIMER) -> str:
    """A plain-text table of the reports, then FROC lines and notes, then the disclaimer."""
    level = f"{round(100 * reports[0].level)}%" if reports else "95%"
    header = (
        "detector",
        "n (pos/neg)",
        f"AUC [{level} CI]",
        "op. point",
        f"sensitivity [{level} CI]",
        f"specificity [{level} CI]",
        "localised",
        "lesions hit",
        "top region",
        "normals w/ regions",
        "ECE",
    )
    rows = [
        (
            r.detector,
            f"{r.n} ({r.n_positive}/{r.n_negative})",
            _rate(r.auc, r.auc_ci),
            "varies" if r.operating_point is None else f"{r.operating_point:.4g}",
            _rate(r.sensitivity, r.sensitivity_ci),
            _rate(r.specificity, r.specificity_ci),
            _fraction(r.localised, r.urgent_positives),
            _fraction(r.lesions_hit, r.lesions),
            _fraction(r.top_on_lesion, r.positives_with_truth),
            _fraction(r.negatives_with_regions, r.n_negative),
            _rate(r.ece),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in reports:
        if r.froc is not None:
            at = ", ".join(f"{rate:g}: {s:.3f}" for rate, s in zip(r.froc.fp_rates, r.froc.sensitivities_at_rates, strict=True))
            lines.append("")
            lines.append(
                f"{r.detector} FROC ({r.froc.n_lesions} lesions, {r.froc.n_scans} scans): "
                f"CPM {r.froc.cpm:.3f}; sensitivity at 1 FP/scan {r.froc.sensitivity_at_fp(1.0):.3f}"
            )
            lines.append(f"  sensitivity at FPs/scan: {at}")
    notes = [f"{r.detector}: {note}" for r in reports for note in r.notes]
    if notes:
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  {note}" for note in notes)
    lines.append("")
    lines.append(f"({disclaimer})")
    return "\n".join(lines)
