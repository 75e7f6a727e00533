"""Train a shipped detector's second stage on real anatomy, then calibrate it there.

``python -m detectors.train_filter bleed-ct`` (or ``triage train-filter``):

1. The detector's network is kept as shipped (trained on phantoms); its card
   gains the anatomy mask of its task (:data:`ANATOMY`).
2. Candidates: for each training case, real anatomy with and without inserted
   lesions under drawn acquisitions (:mod:`detectors.real_cases`) plus the
   task's phantoms, the heatmap components inside the anatomy are measured
   (:mod:`detectors.candidates`); a candidate is a lesion when it overlaps
   the case's lesion cells. Every other candidate is a hard negative, and on
   real normal anatomy every candidate is one.
3. The filter: a class-balanced, L2-regularised logistic regression over the
   candidates' features (:mod:`detectors.fp_filter`).
4. Calibration on held-out validation cases: Platt scaling of the study logit
   (the best candidate's filter logit) on real and phantom validation cases;
   the operating point from the real-anatomy validation cases alone
   (sensitivity >= the target there, placed mid-gap above the real normals),
   with the margin by which real normals fall below it; the region threshold
   equals the operating point, so a normal study shows no region either.
5. Output: the card (TOML) with ``[anatomy]``, ``[filter]``, the new
   calibration and the figures, and its Markdown model card. The weights file
   is not touched.

CPU only, a few minutes: the network runs once per case, and the rest is NumPy.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import DetectionError
from detectors.calibration import fit_platt, operating_point_in_gap
from detectors.features import feature_names
from detectors.fp_filter import LogisticFilter, fit_filter
from detectors.metrics import auc
from detectors.postprocess import NO_CANDIDATE_LOGIT, candidate_scores, platt
from detectors.preprocess import map_mask
from detectors.real_cases import Case, cases
from detectors.registry import MODELS_DIR

logger = logging.getLogger(__name__)

ANATOMY = {"bleed-ct": "intracranial", "nodule-ct": "lungs", "nodule-xr": "lungs", "fracture-xr": "bone"}
# Classical proposals a detector's candidates include (detectors.proposals): the bleed network misses
# thin and small bleeds on real heads, which are plainly denser than the brain.
PROPOSALS = {"bleed-ct": ("hyperdense",)}
Progress = Callable[[str, int, int], None]
# Figures of an earlier detector (filter or calibration) that a new fit makes stale; test figures come back
# with the next `triage evaluate --update-cards`.
STALE = ("real_validation", "phantom_validation", "filter_training", "test", "real_test")
RAISE_MARGIN_LOGIT = 0.25  # how far above the highest real normal a raised operating point sits


@dataclass
class Scored:
    """One case's candidates as the filter sees them, and its truth."""

    features: np.ndarray  # (k, features)
    hits: np.ndarray  # (k,) bool: the candidate overlaps the lesion
    positive: bool
    source: str
    tags: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None  # why the detector could not read the case (anatomy not found, ...)
    inserted: bool = False  # the case has an inserted lesion with exact truth (``hits`` mark it)
    own_findings: bool = False  # the real scan has findings of its own (left out of the candidates)

    def normal_anatomy_logit(self, filt: LogisticFilter) -> float:
        """The strongest candidate that is not the inserted lesion (own findings are already left out)."""
        rest = self.features[~self.hits] if len(self.features) else self.features
        return float(filt.logits(rest).max()) if len(rest) else NO_CANDIDATE_LOGIT

    def lesion_found(self, filt: LogisticFilter, a: float, b: float, op: float) -> bool:
        """A candidate on the inserted lesion reaches the operating point (it would be shown as a region)."""
        if not (self.inserted and self.hits.any()):
            return False
        return bool((np.asarray(platt(filt.logits(self.features[self.hits]), a, b)) >= op).any())

    def study_logit(self, filt: LogisticFilter) -> float:
        return float(filt.logits(self.features).max()) if len(self.features) else NO_CANDIDATE_LOGIT

    def top_hits(self, filt: LogisticFilter) -> bool:
        return bool(len(self.features) and self.hits[int(np.argmax(filt.logits(self.features)))])


def score_case(detector: Any, case: Case) -> Scored:
    """Run the detector's candidate stage on one case and mark which candidates are the lesion."""
    import torch

    spec = detector.spec
    names = feature_names(spec.family, spec.proposals)
    inserted = bool(case.lesion.any())
    try:
        prepared = detector.prepare(case.series)
    except DetectionError as exc:
        return Scored(
            np.zeros((0, len(names))),
            np.zeros(0, bool),
            case.positive,
            case.source,
            case.tags,
            str(exc),
            inserted,
            case.own_findings is not None,
        )
    with torch.inference_mode():
        logits = np.concatenate(
            [detector.module(torch.from_numpy(prepared.items[i : i + 8])).float().numpy() for i in range(0, len(prepared.items), 8)]
        )
    cands, _, labels = candidate_scores(prepared, logits, replace(spec, filter=None))
    geometry = prepared.context["geometry"]
    lesion = map_mask(case.lesion, case.series, geometry, spec) >= 0.25 if inserted else None
    on_lesion = [lesion is not None and bool(lesion[labels == c.label].any()) for c in cands]
    if case.own_findings is not None:
        # The scan's own findings (marked by eye) are neither the lesion nor negatives: left out.
        own = map_mask(case.own_findings, case.series, geometry, spec) > 0
        keep = [hit or not own[labels == c.label].any() for c, hit in zip(cands, on_lesion, strict=True)]
        cands = [c for c, k in zip(cands, keep, strict=True) if k]
        on_lesion = [hit for hit, k in zip(on_lesion, keep, strict=True) if k]
    if not cands:
        return Scored(
            np.zeros((0, len(names))),
            np.zeros(0, bool),
            case.positive,
            case.source,
            case.tags,
            inserted=inserted,
            own_findings=case.own_findings is not None,
        )
    hits = np.array(on_lesion, dtype=bool)
    return Scored(
        np.stack([c.features for c in cands]),
        hits,
        case.positive,
        case.source,
        case.tags,
        inserted=inserted,
        own_findings=case.own_findings is not None,
    )


def score_cases(
    detector: Any, name: str, split: str, real: int, phantoms: int, progress: Progress | None = None, cache: Path | None = None
) -> tuple[list[Scored], float]:
    """Every case of a split scored, and the seconds that took.

    With ``cache``, kept as a pickle keyed by what makes them, so that a refit
    takes seconds; the seconds returned are then those of the first run.
    """
    features = "-".join(feature_names(detector.spec.family, detector.spec.proposals))
    key = f"{name}-{split}-{real}-{phantoms}-{features}-{detector.identity.sha256[:12]}"
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pkl" if cache else None
    if path is not None and path.is_file():
        import pickle

        stored = pickle.loads(path.read_bytes())
        if stored.get("key") == key:
            return stored["scored"], float(stored.get("seconds", 0.0))
    started = time.monotonic()
    out = []
    total = real + phantoms
    for i, case in enumerate(cases(name, split, real, phantoms)):
        out.append(score_case(detector, case))
        if progress:
            progress(split, i + 1, total)
    if path is not None:
        import pickle

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"key": key, "scored": out, "seconds": time.monotonic() - started}))
    return out, time.monotonic() - started


def _stack(scored: Sequence[Scored]) -> tuple[np.ndarray, np.ndarray]:
    rows = [s.features for s in scored if len(s.features)]
    hits = [s.hits for s in scored if len(s.features)]
    return np.concatenate(rows), np.concatenate(hits)


def real_figures(
    scored: Sequence[Scored], probs: np.ndarray, op: float, filt: LogisticFilter, a: float = 1.0, b: float = 0.0
) -> dict[str, Any]:
    """What the card states about real anatomy: flagged normals, the margin, sensitivity by size, localisation.

    Study-level sensitivity counts the cases whose only finding is the
    inserted one; on a real scan with findings of its own (the chest CR's
    masses) the study is positive anyway, so there the figure is lesion-level:
    the inserted lesion ``found`` (a candidate on it at the operating point).
    """
    real = [(s, p) for s, p in zip(scored, probs, strict=False) if s.source == "real"]
    normals = np.array([p for s, p in real if not s.positive])
    positives = [(s, p) for s, p in real if s.positive and not s.own_findings]
    inserted = [s for s, _ in real if s.inserted]
    own = [(s, p) for s, p in real if s.own_findings]
    out: dict[str, Any] = {
        "normal_cases": int(normals.size),
        "normal_flagged": int((normals >= op).sum()),
        **({"normal_max_probability": round(float(normals.max()), 4)} if normals.size else {}),
        "positive_cases": len(positives),
        "not_assessed": sum(1 for s, _ in real if s.failed),
    }
    if own:
        out["own_findings_cases"] = len(own)
        out["own_findings_flagged"] = int(sum(p >= op for _, p in own))
        # Their normal anatomy (away from their findings and the insertion) showing a region.
        out["normal_anatomy_with_region"] = int(sum(float(platt(s.normal_anatomy_logit(filt), a, b)) >= op for s, _ in own))
    if normals.size:
        out["normal_margin_logit"] = round(_logit(op) - _logit(float(normals.max())), 3)
    # Sensitivity by size where the insertions record one: bleeds by volume, nodules by diameter.
    bands = (
        ("volume_ml", (("ge_1ml", 1.0, 1e9), ("0.3_to_1ml", 0.0, 1.0))),
        ("diameter_mm", (("ge_10mm", 10.0, 1e9), ("under_10mm", 0.0, 10.0))),
    )
    for key, limits in bands:
        for label, lo, hi in limits:
            band = [(s, p) for s, p in positives if key in s.tags and lo <= float(s.tags[key]) < hi]
            if band:
                out[f"sensitivity_{label}"] = round(float(sum(p >= op for _, p in band)) / len(band), 4)
                out[f"cases_{label}"] = len(band)
            found = [s.lesion_found(filt, a, b, op) for s in inserted if key in s.tags and lo <= float(s.tags[key]) < hi]
            if found and own:
                out[f"inserted_found_{label}"] = round(float(np.mean(found)), 4)
                out[f"inserted_{label}"] = len(found)
    if positives:
        out["sensitivity"] = round(float(sum(p >= op for _, p in positives)) / len(positives), 4)
    if inserted:
        out["inserted_found"] = round(float(np.mean([s.lesion_found(filt, a, b, op) for s in inserted])), 4)
        out["top_region_on_lesion"] = round(float(np.mean([s.top_hits(filt) for s in inserted])), 4)
    return out


def train_filter(
    name: str,
    real: tuple[int, int],
    phantoms: tuple[int, int],
    out_dir: Path = MODELS_DIR,
    target_sensitivity: float = 0.95,
    l2: float = 1.0,
    candidate_logit: float = -1.0,
    progress: Progress | None = None,
    cache: Path | None = None,
    source_dir: Path = MODELS_DIR,
) -> Path:
    """Fit, calibrate and write ``name``'s card in ``out_dir``; returns the card's path.

    ``real`` and ``phantoms`` are (training, validation) case counts; the
    network is the one of ``source_dir``'s card (the package's by default).
    """
    from detectors.heatmap import load_detector
    from detectors.model_card import render_card

    card = source_dir / f"{name}.toml"
    detector = load_detector(card)
    first_filter = detector.spec.filter is None
    detector.spec = replace(
        detector.spec, anatomy=ANATOMY[name], filter=None, candidate_logit=candidate_logit, proposals=PROPOSALS.get(name, ())
    )
    train, train_s = score_cases(detector, name, "train", real[0], phantoms[0], progress, cache)
    x, y = _stack(train)
    filt = fit_filter(x, y, feature_names(detector.spec.family, detector.spec.proposals), l2=l2)
    validation, validation_s = score_cases(detector, name, "validation", real[1], phantoms[1], progress, cache)
    raw = np.array([s.study_logit(filt) for s in validation])
    labels = np.array([s.positive for s in validation])
    a, b = fit_platt(raw, labels)
    probs = np.asarray(platt(raw, a, b), dtype=np.float64)
    is_real = np.array([s.source == "real" for s in validation])
    own = np.array([s.own_findings for s in validation])
    # Real normals and real insertions when there are both; else every case but the real scans with findings of
    # their own (the chest CR's masses make each of its cases positive, whatever was inserted).
    basis = is_real if (is_real & labels & ~own).any() and (is_real & ~labels).any() else ~own
    normal_anatomy = np.array(
        [float(platt(s.normal_anatomy_logit(filt), a, b)) for s in validation if s.source == "real" and s.own_findings]
    )
    op, rule = operating_point(labels, probs, basis, is_real, target_sensitivity, normal_anatomy)
    phantom = ~is_real
    figures: dict[str, Any] = {}
    if is_real.any():
        figures["real_validation"] = real_figures(validation, probs, op, filt, a, b)
    if phantom.any() and labels[phantom].any() and (~labels[phantom]).any():
        yp, pp = labels[phantom], probs[phantom]
        figures["phantom_validation"] = {
            "cases": int(phantom.sum()),
            "positive": int(yp.sum()),
            "auc": round(auc(yp, pp), 4),
            "sensitivity": round(float((pp[yp] >= op).mean()), 4),
            "specificity": round(float((pp[~yp] < op).mean()), 4),
        }
    figures["filter_training"] = {
        "real_cases": real[0],
        "phantom_cases": phantoms[0],
        "candidates": int(len(y)),
        "lesion_candidates": int(y.sum()),
        "validation_real_cases": real[1],
        "validation_phantom_cases": phantoms[1],
        "l2": l2,
        "target_sensitivity": target_sensitivity,
        "operating_point_rule": rule,
        "seconds": round(train_s + validation_s, 1),  # scoring the cases; the fits take well under a second
        "command": " ".join(
            [
                "python -m detectors.train_filter",
                name,
                f"--real {real[0]} {real[1]}",
                f"--phantoms {phantoms[0]} {phantoms[1]}",
                f"--l2 {l2:g}",
            ]
        ),
    }
    spec = replace(
        detector.spec,
        filter=filt,
        platt_a=a,
        platt_b=b,
        operating_point=op,
        region_threshold=op,
        version=bump_version(detector.spec.version, major=first_filter),
        extra={**{k: v for k, v in detector.spec.extra.items() if k not in STALE}, **figures},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.toml"
    target.write_text(spec.to_toml())
    target.with_suffix(".md").write_text(render_card(spec))
    if out_dir.resolve() != source_dir.resolve():
        import shutil

        shutil.copyfile(source_dir / spec.weights, out_dir / spec.weights)
    return target


def operating_point(
    labels: np.ndarray,
    probs: np.ndarray,
    basis: np.ndarray,
    is_real: np.ndarray,
    target_sensitivity: float,
    normal_anatomy: np.ndarray | None = None,
) -> tuple[float, str]:
    """The operating point and the rule that set it.

    First the sensitivity rule on the basis cases (sensitivity >= target,
    mid-gap below). If that would flag a real normal case, the point is
    raised above the highest real normal instead (by ``RAISE_MARGIN_LOGIT``
    in calibrated logits): flagging normal anatomy on every real scan is
    worse than no AI (alarm fatigue, automation bias), so specificity on real
    anatomy wins, and the card states the sensitivity that is left.

    ``normal_anatomy`` adds, per real scan with findings of its own, the
    calibrated probability of its strongest candidate away from those findings
    and from the inserted lesion: that scan's normal anatomy, which must show
    no region either.
    """
    op = operating_point_in_gap(labels[basis], probs[basis], target_sensitivity)
    normals = np.concatenate([probs[is_real & ~labels], normal_anatomy if normal_anatomy is not None else []])
    if not normals.size or normals.max() < op:
        return float(op), f"sensitivity >= {target_sensitivity} on the validation cases"
    top = float(normals.max())
    # A margin above the highest real normal: unseen normal heads score a little differently.
    raised = 1 / (1 + np.exp(-(_logit(top) + RAISE_MARGIN_LOGIT)))
    return float(raised), (
        f"raised {RAISE_MARGIN_LOGIT:g} logit above the highest real normal case or normal "
        "anatomy (the sensitivity rule flagged normal anatomy)"
    )


def _logit(q: float) -> float:
    """``log(q / (1 - q))``, both kept at least 1e-12 so that 0 and 1 stay finite."""
    return float(np.log(max(q, 1e-12) / max(1 - q, 1e-12)))


def bump_version(version: str, major: bool) -> str:
    """A new major version for the first filter (a new design), a new minor one for a refit (new behaviour)."""
    parts = version.split(".")
    if not parts[0].isdigit():
        return "2.0.0"
    if major:
        return f"{int(parts[0]) + 1}.0.0"
    minor = int(parts[1]) + 1 if len(parts) > 1 and parts[1].isdigit() else 1
    return f"{parts[0]}.{minor}.0"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detectors.train_filter", description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(ANATOMY), help="the shipped detector")
    p.add_argument(
        "--real", type=int, nargs=2, default=(120, 80), metavar=("TRAIN", "VALIDATION"), help="real-anatomy cases (default 120 80)"
    )
    p.add_argument(
        "--phantoms", type=int, nargs=2, default=(120, 120), metavar=("TRAIN", "VALIDATION"), help="phantom cases (default 120 120)"
    )
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="where the card goes (default: the package's)")
    p.add_argument(
        "--from", dest="source", type=Path, default=MODELS_DIR, help="the folder of the network's card and weights (default: the package's)"
    )
    p.add_argument("--target-sensitivity", type=float, default=0.95)
    p.add_argument("--l2", type=float, default=1.0, help="ridge penalty of the filter (default 1.0)")
    p.add_argument("--cache", type=Path, help="keep scored candidates here, so that a refit skips the network")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            logger.info("%s: %d/%d cases", stage, done, total)

    # Through the importable module, so that cached candidates pickle as detectors.train_filter.Scored.
    from detectors import train_filter as module

    path = module.train_filter(
        args.name,
        tuple(args.real),
        tuple(args.phantoms),
        args.out,
        target_sensitivity=args.target_sensitivity,
        l2=args.l2,
        progress=progress,
        cache=args.cache,
        source_dir=args.source,
    )
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
