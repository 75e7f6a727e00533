"""``triage score`` as text: per study, each series' route and each finding with its regions."""

from __future__ import annotations

from detectors.base import Finding, Region
from triage.flow.cases import NOTE_SEPARATOR
from triage.flow.scoring import DISCLAIMER, ScoreReport, SeriesScore, StudyScore


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _region(i: int, r: Region) -> str:
    r0, c0, r1, c1 = r.box
    first, last = r.slices
    span = f"slice {r.slice_index}" if first == last else f"slice {r.slice_index} (slices {first}-{last})"
    # Half-open rows/cols in slice notation: what a reader types into NumPy.
    text = f"region {i}: p {r.probability:.3f}, {span}, box rows {r0}:{r1} cols {c0}:{c1}"
    if r.diameter_mm is not None:
        text += f", diameter {r.diameter_mm:.1f} mm"
    return f"{text}, SOP {r.sop_instance_uid}"


def _finding(f: Finding) -> list[str]:
    if f.urgent:
        decision = f"URGENT (operating point {f.operating_point:.3f})"
    else:
        decision = f"below operating point ({f.operating_point:.3f})"
    lines = [f"{f.detector} ({f.kind.value}): probability {f.probability:.3f}, {decision}", f"  model {f.model}"]
    lines += [f"  {_region(i, r)}" for i, r in enumerate(f.regions, 1)]
    if not f.regions:
        lines.append("  no region above the region threshold")
    return lines


def _series(s: SeriesScore) -> list[str]:
    description = f' "{s.description}"' if s.description else ""
    # The reason ends with the notes (for the server's records); here each gets its own line.
    route = s.reason.split(NOTE_SEPARATOR)[0] if s.notes else s.reason
    lines = [f"series {s.series_uid} {s.modality or '?'}{description}, {_plural(s.instances, 'image')}", f"  route: {route}"]
    lines += [f"  note: {text}" for text in s.notes]
    for f in s.findings:
        lines += [f"  {line}" for line in _finding(f)]
    lines += [f"  FAILED: {text}" for text in s.failures]
    return lines


def _study(st: StudyScore) -> list[str]:
    about = ", ".join(
        x
        for x in (
            f"patient {st.patient_id}" if st.patient_id else "",
            f"accession {st.accession}" if st.accession else "",
            f'"{st.description}"' if st.description else "",
        )
        if x
    )
    lines = [f"study {st.study_uid} ({st.folder})"] + ([f"  {about}"] if about else [])
    for s in st.series:
        lines += [f"  {line}" for line in _series(s)]
    return lines


def format_scores(report: ScoreReport) -> str:
    """Every study, then unreadable files, a one-line summary, and the disclaimer."""
    lines: list[str] = []
    for st in report.studies:
        lines += _study(st) + [""]
    if report.unreadable:
        lines.append("unreadable files:")
        lines += [f"  {u.path}: {u.reason}" for u in report.unreadable]
        lines.append("")
    series = [s for st in report.studies for s in st.series]
    findings = [f for s in series for f in s.findings]
    summary = [
        _plural(len(report.studies), "study", "studies"),
        f"{_plural(len(series), 'series', 'series')} ({sum(s.analysed for s in series)} analysed)",
        f"{sum(f.urgent for f in findings)} of {_plural(len(findings), 'finding')} urgent",
        _plural(len(report.failures), "failure"),
    ]
    if report.unreadable:
        summary.append(_plural(len(report.unreadable), "unreadable file"))
    if report.skipped:
        summary.append(f"{_plural(report.skipped, 'non-DICOM file')} skipped")
    lines.append(", ".join(summary))
    lines.append(f"({DISCLAIMER})")
    return "\n".join(lines)
