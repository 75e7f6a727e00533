"""``triage evaluate``: score a manifest folder and compare with its ground truth.

A manifest folder is what ``triage samples generate`` writes: one folder per
study and ``manifest.json`` with each study's UID and true findings. Every
study is scored with :func:`triage.flow.scoring.score_paths`; each detector that
scored a study gives one :class:`detectors.evaluation.StudyOutcome`, and
:func:`detectors.evaluation.evaluate` turns those into the report.

Studies no detector scored (an abdomen CT: routed nowhere; a chest radiograph
when no chest radiograph model is loaded) are counted, not evaluated; studies
whose scoring failed are listed and counted, never a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from detectors.base import Finding, ModelIdentity
from detectors.engine import InferenceEngine
from detectors.evaluation import DetectorReport, StudyOutcome, truth_from_findings
from detectors.model_card import render_card
from detectors.registry import DetectorSet
from detectors.spec import CardError, load_card
from triage.errors import TriageError
from triage.flow.scoring import StudyScore, score_paths
from triage.samples.phantom_studies import MANIFEST


@dataclass
class ManifestScore:
    """A manifest folder scored: outcomes to evaluate, and what could not be.

    ``not_routed`` and ``no_detector`` count studies by manifest kind:
    routed to no detector at all, or routed to a finding kind with no loaded
    detector. ``failures`` are ``"<folder>: <text>"`` lines. ``models`` is the
    identity of the model behind each detector name that scored something.
    """

    outcomes: list[StudyOutcome]
    studies: int
    seed: int | None
    not_routed: Counter[str] = field(default_factory=Counter)
    no_detector: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    models: dict[str, ModelIdentity] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "studies": self.studies,
            "evaluated_outcomes": len(self.outcomes),
            "manifest_seed": self.seed,
            "not_routed": dict(self.not_routed),
            "no_detector_loaded": dict(self.no_detector),
            "failures": list(self.failures),
            "models": {name: {"version": m.version, "sha256": m.sha256} for name, m in sorted(self.models.items())},
        }


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a sample folder; :class:`TriageError` if there is none or it is damaged."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TriageError(f"no {MANIFEST} in {folder} (write one with `triage samples generate`)") from None
    except (OSError, ValueError) as exc:
        raise TriageError(f"{path}: cannot read the manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("studies"), list):
        raise TriageError(f'{path}: not a sample manifest (no "studies" list)')
    return manifest


def _outcome(study: Mapping[str, Any], finding: Finding) -> StudyOutcome:
    truth_kind = finding.kind.value
    findings = study.get("findings") or []
    return StudyOutcome(
        kind=finding.detector,
        study_folder=str(study["folder"]),
        label=any(f.get("kind") == truth_kind for f in findings),
        probability=finding.probability,
        urgent=finding.urgent,
        operating_point=finding.operating_point,
        regions=[(r.box, r.slices, r.probability) for r in finding.regions],
        truth=truth_from_findings(findings, kind=truth_kind),
    )


def score_manifest(
    folder: str | Path, detectors: DetectorSet, engine: InferenceEngine, on_study: Callable[[], None] | None = None
) -> ManifestScore:
    """Score every study of a manifest folder and pair each detector's output with the truth.

    Per study and detector the strongest finding over the study's series is
    the outcome (a phantom study has one series). ``on_study`` is called once
    per manifest study (progress bars).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    entries: list[Mapping[str, Any]] = manifest["studies"]
    result = ManifestScore(outcomes=[], studies=len(entries), seed=manifest.get("seed"))
    present, by_uid = [], {}
    for entry in entries:
        study_folder = folder / str(entry.get("folder", ""))
        if not entry.get("folder") or not study_folder.is_dir():
            result.failures.append(f"{entry.get('folder')}: study folder missing")
            if on_study:
                on_study()
            continue
        present.append(study_folder)
        by_uid[str(entry.get("study_uid"))] = entry

    def scored(study: StudyScore) -> None:
        if on_study and study.study_uid in by_uid:
            on_study()

    report = score_paths(present, detectors, engine, on_study=scored)
    seen = set()
    for study in report.studies:
        found = by_uid.get(study.study_uid)
        if found is None:  # a stray study in a study folder: not part of the test set
            continue
        seen.add(study.study_uid)
        _add_study(result, found, study)
    for u in report.unreadable:
        where = u.path.relative_to(folder) if u.path.is_relative_to(folder) else u.path
        result.failures.append(f"{where}: {u.reason}")
    for uid, entry in by_uid.items():
        if uid not in seen:
            result.failures.append(f"{entry['folder']}: no readable DICOM file of study {uid}")
            if on_study:  # score_paths never saw it, so no progress was reported for it
                on_study()
    return result


def _add_study(result: ManifestScore, entry: Mapping[str, Any], study: StudyScore) -> None:
    kind = str(entry.get("kind", "?"))
    result.failures += [f"{entry['folder']}: {text}" for text in study.failures]
    best: dict[str, Finding] = {}
    for finding in study.findings:
        if finding.detector not in best or finding.probability > best[finding.detector].probability:
            best[finding.detector] = finding
    for finding in best.values():
        try:
            result.outcomes.append(_outcome(entry, finding))
        except ValueError as exc:  # a hand-edited manifest: its truth cannot be compared
            result.failures.append(f"{entry['folder']}: manifest truth unusable: {exc}")
            continue
        result.models[finding.detector] = finding.model
    if not best and not study.failures:
        if any(s.missing_detectors for s in study.series):
            result.no_detector[kind] += 1
        else:
            result.not_routed[kind] += 1


def not_scored_line(result: ManifestScore) -> str | None:
    """``"not scored: 2 studies routed to no detector (abdomen_ct 2); ..."`` or None."""
    parts = []
    counters = ((result.not_routed, "routed to no detector"), (result.no_detector, "with no detector loaded"))
    for counter, what in counters:
        if counter:
            n = sum(counter.values())
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
            parts.append(f"{n} {'study' if n == 1 else 'studies'} {what} ({kinds})")
    return f"not scored: {'; '.join(parts)}" if parts else None


# -- writing the test figures into the shipped cards -------------------------------------------


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def card_test_table(report: DetectorReport, command: str, seed: int | None) -> dict[str, Any]:
    """The ``[test]`` table of a card: the report's headline figures, the command and the seed.

    Undefined figures are left out (TOML has no null).
    """
    table: dict[str, Any] = {
        "studies": report.n,
        "positive": report.n_positive,
        "auc": _r(report.auc),
        "auc_ci_low": _r(report.auc_ci[0]) if report.auc_ci else None,
        "auc_ci_high": _r(report.auc_ci[1]) if report.auc_ci else None,
        "operating_point": _r(report.operating_point),
        "sensitivity": _r(report.sensitivity),
        "specificity": _r(report.specificity),
        "localisation_hit_rate": _r(report.localisation_hit_rate),
    }
    if report.froc is not None:
        table["froc_sensitivity_at_1fp"] = _r(report.froc.sensitivity_at_fp(1.0))
        table["froc_cpm"] = _r(report.froc.cpm)
    table["manifest_seed"] = seed
    table["command"] = command
    return {k: v for k, v in table.items() if v is not None}


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def update_cards(
    reports: Sequence[DetectorReport],
    models: Mapping[str, ModelIdentity],
    models_dir: Path,
    command: str,
    seed: int | None,
    table: str = "test",
    extra_figures: Mapping[str, Mapping[str, Any]] | None = None,
    shipped_dir: Path | None = None,
) -> tuple[list[Path], list[str]]:
    """Write each shipped detector's test figures into its card and re-render its Markdown card.

    ``table`` is the card table they go to: ``test`` for phantom test sets,
    ``real_test`` for real-anatomy ones (``triage samples real``).
    ``extra_figures`` adds figures per detector name (sensitivity by stratum).

    Only a card whose SHA-256 is that of the model that was evaluated is
    changed: figures of an external replacement, or of weights that changed
    since, must not land in the shipped card. Everything else in the card is kept.
    The card is ``models_dir``'s, else (with ``shipped_dir``) a copy of the
    shipped one written to ``models_dir`` with its weights beside it, so the
    installed package is read, never written, unless ``models_dir`` is it.

    Returns
    -------
    (list of Path, list of str)
        The cards written, and one line per detector left alone saying why.
    """
    written, skipped = [], []
    for report in reports:
        card = models_dir / f"{report.detector}.toml"
        source = card
        if not card.is_file() and shipped_dir is not None:
            source = shipped_dir / f"{report.detector}.toml"
        model = models.get(report.detector)
        if not source.is_file():
            skipped.append(f"{report.detector}: not a shipped detector (no {source})")
            continue
        try:
            spec = load_card(source)
        except CardError as exc:
            skipped.append(f"{report.detector}: {exc}")
            continue
        if model is None or spec.sha256 != model.sha256:
            scored = model.sha256[:12] if model else "?"
            skipped.append(f"{report.detector}: evaluated model (sha256 {scored}) is not the shipped card's ({spec.sha256[:12]})")
            continue
        if source != card:
            card.parent.mkdir(parents=True, exist_ok=True)
            if spec.weights and not Path(spec.weights).is_absolute():
                # The copied card names its weights relative to itself: they go beside it.
                weights = card.parent / spec.weights
                weights.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / spec.weights, weights)
        figures = card_test_table(report, command, seed)
        if report.positives_with_truth:
            figures["top_region_on_lesion"] = round(report.top_on_lesion / report.positives_with_truth, 4)
        figures["negative_studies_with_regions"] = report.negatives_with_regions
        figures.update((extra_figures or {}).get(report.detector, {}))
        spec = replace(spec, extra={**spec.extra, table: figures})
        write_atomic(card, spec.to_toml())
        write_atomic(card.with_suffix(".md"), render_card(spec))
        written.append(card)
    return written, skipped


def acquisition_strata(folder: str | Path, outcomes: Sequence[StudyOutcome]) -> dict[str, list[StudyOutcome]]:
    """Outcomes grouped by acquisition and by lesion, when the manifest records them.

    Acquisition groups (``--acquisition varied`` and ``triage samples real``):
    matrix (256 / 512), slice thickness (thin <= 1.25 mm, thick above), and
    gantry tilt when recorded; a detector that holds up on real scanners holds
    up in each. Lesion groups (``triage samples real``): each haemorrhage kind
    and the volume bands 0.3-1 mL and >= 1 mL; a lesion group holds its
    positive studies and every negative study, so its sensitivity is the
    band's and its specificity the set's. Empty when the manifest records neither.
    """
    studies = {str(e.get("folder")): e for e in read_manifest(Path(folder))["studies"]}
    groups: dict[str, list[StudyOutcome]] = {}
    lesion_groups: set[str] = set()
    for o in outcomes:
        entry = studies.get(o.study_folder, {})
        acq = entry.get("acquisition")
        if isinstance(acq, Mapping) and "slice_thickness_mm" in acq:
            thin = float(acq.get("slice_thickness_mm", 0)) <= 1.25
            keys = [f"matrix {acq.get('matrix')}", "slices <= 1.25 mm" if thin else "slices > 1.25 mm"]
            if "tilt_deg" in acq:
                keys.append("gantry tilted" if float(acq.get("tilt_deg") or 0) else "gantry not tilted")
            for key in keys:
                groups.setdefault(key, []).append(o)
        for finding in entry.get("findings") or []:
            if finding.get("kind") == "bleed" and o.label:
                keys = [f"bleed {finding.get('subtype')}"]
                volume = finding.get("volume_ml")
                if isinstance(volume, (int, float)):
                    keys.append("bleed 0.3-1 mL" if volume < 1.0 else "bleed >= 1 mL")
                for key in keys:
                    groups.setdefault(key, []).append(o)
                    lesion_groups.add(key)
    negatives = [o for o in outcomes if not o.label]
    for key in lesion_groups:
        groups[key] = groups[key] + [o for o in negatives if o.kind == groups[key][0].kind]
    return dict(sorted(groups.items()))


def lesions_found(folder: str | Path, outcomes: Sequence[StudyOutcome]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per detector, lesions shown by a region, by origin and size: ``{detector: {group: (found, total)}}``.

    For manifests whose findings say where they came from (``triage samples
    real``): an ``inserted`` lesion (exact truth) or one the real scan has of
    its own, ``read by eye`` (approximate box). Where a real scan has findings
    of its own every study is positive, and this per-lesion count is what says
    whether the detector found the inserted one. Groups: ``inserted``,
    ``inserted >= 10 mm`` / ``inserted < 10 mm`` where sizes are in mm, and
    ``<subtype> read by eye``. Empty when no finding records an origin.
    """
    from detectors.metrics import region_hits_lesion

    studies = {str(e.get("folder")): e for e in read_manifest(Path(folder))["studies"]}
    out: dict[str, dict[str, list[int]]] = {}
    for o in outcomes:
        mine = {tuple(box) for box, _ in o.truth}  # the findings of this detector's kind
        for f in studies.get(o.study_folder, {}).get("findings") or []:
            if "origin" not in f or tuple(f.get("box") or ()) not in mine:
                continue
            found = any(region_hits_lesion(box, slices, f["box"], f["slices"]) for box, slices, _ in o.regions)
            size = f.get("size_mm")
            if f["origin"] == "inserted":
                groups = ["inserted"]
                if isinstance(size, (int, float)) and size > 0:  # a hand-edited manifest may say anything
                    groups.append("inserted >= 10 mm" if size >= 10 else "inserted < 10 mm")
            else:
                groups = [f"{f.get('subtype')} {f['origin']}"]
            for group in groups:
                tally = out.setdefault(o.kind, {}).setdefault(group, [0, 0])
                tally[0] += found
                tally[1] += 1
    return {det: {g: (t[0], t[1]) for g, t in sorted(groups.items())} for det, groups in sorted(out.items())}
