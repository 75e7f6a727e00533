"""``triage evaluate FOLDER --labels labels.csv``: local validation on a site's own labelled studies.

Before go-live a hospital checks the detectors on studies it has labelled
itself (local acceptance testing). The folder is any folder of real DICOM,
walked like ``triage score`` walks it; the labels CSV says, per study, which
finding kinds are present. Each labelled study is scored with
:func:`triage.flow.scoring.score_paths` and each detector's output becomes a
:class:`detectors.evaluation.StudyOutcome`, exactly as a manifest's truth does
in :mod:`triage.research.evaluate`, so the report is the same report.

The CSV (comma, semicolon or tab separated; UTF-8, an Excel BOM is fine) has a
header row and one row per study:

- ``study_uid`` (Study Instance UID) or ``accession`` (Accession Number)
  identifies the study; with both, ``study_uid`` is used;
- ``bleed``, ``fracture``, ``nodule``: whether that finding is present
  (``1/0``, ``yes/no``, ``y/n``, ``true/false``, ``positive/negative``, any
  case); empty means unknown, and the study is not evaluated for that kind;
- optionally ``<kind>_sop_uid`` (SOP Instance UIDs of the images the lesion is
  on, separated by spaces) and ``<kind>_box`` (``row0 col0 row1 col1``,
  half-open, in those images' own pixels) for localisation.

Other columns (notes, names) are ignored. Studies in the CSV but not in the
folder, and in the folder but not in the CSV, are counted and listed.

Per-subgroup figures (sex, age band, manufacturer, model, CT slice thickness
band, read from the scored studies' headers) are here too; the site's
operating point is chosen and written by :mod:`triage.research.site_operating_points`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from detectors.base import Family, Finding
from detectors.engine import InferenceEngine
from detectors.evaluation import StudyOutcome
from detectors.metrics import Box, Confusion, SliceRange, auc, confusion
from detectors.registry import DetectorSet
from dicom_io.pixels import PixelDataError, load_volume
from dicom_io.send import find_dicom_files
from triage.errors import TriageError
from triage.flow.scoring import StudyScore, score_paths
from triage.monitor.stats import AGE_BANDS, SEXES, UNKNOWN, age_band, sex_stratum
from triage.research.evaluate import ManifestScore
from triage.vocabulary import FINDING_KINDS

logger = logging.getLogger(__name__)

# Header names accepted for each id column (compared lower-case, spaces as "_").
ID_COLUMNS = {
    "study_uid": ("study_uid", "studyinstanceuid", "study_instance_uid"),
    "accession": ("accession", "accession_number", "accessionnumber"),
}
_PRESENT = {"1", "yes", "y", "true", "positive"}
_ABSENT = {"0", "no", "n", "false", "negative"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # PS3.5 9.1: digits and dots, at most 64 characters
# CT slice thickness bands (mm, upper bound inclusive): thin-section, standard, thick.
SLICE_BANDS = (("<= 1.25 mm", 1.25), ("1.25-3 mm", 3.0), ("> 3 mm", math.inf))
DIMENSIONS = ("sex", "age", "manufacturer", "model", "slice thickness")


class LabelsError(TriageError):
    """The labels CSV cannot be used; the message names the file, line and column."""

    exit_code = 2


# --------------------------------------------------------------------------- the labels CSV


@dataclass(frozen=True)
class LabelledRegion:
    """Where a lesion is: ``box`` ``(row0, col0, row1, col1)`` half-open on the images ``sop_uids``."""

    sop_uids: tuple[str, ...]
    box: Box


@dataclass(frozen=True)
class StudyLabels:
    """One CSV row: the study id, its line, the known finding kinds and optional regions."""

    study_id: str
    line: int
    present: Mapping[str, bool]  # kind -> present; a kind left empty is missing here
    regions: Mapping[str, LabelledRegion] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelSet:
    """A site's labels: ``studies`` keyed by the value of ``id_column`` (``study_uid`` or ``accession``)."""

    path: Path
    id_column: str
    kinds: tuple[str, ...]
    studies: Mapping[str, StudyLabels]


def _normalise(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _delimiter(header_line: str) -> str:
    # Spreadsheets export ";" where "," is the decimal separator; pick what the header uses.
    return max((",", ";", "\t"), key=header_line.count)


def parse_labels(text: str, path: str | Path = "labels.csv") -> LabelSet:
    """Parse a labels CSV (see the module docstring for its format).

    Raises
    ------
    LabelsError
        One line, ``<path>:<line>: column <name>: <what is wrong>``.
    """
    path = Path(path)
    text = text.removeprefix("\ufeff")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LabelsError(f"{path}:1: no header row (expected e.g. study_uid,bleed)")
    rows = csv.reader(io.StringIO(text), delimiter=_delimiter(lines[0]))
    header = [_normalise(h) for h in next(rows)]

    def where(line: int, column: str | None = None) -> str:
        return f"{path}:{line}: column {column}" if column else f"{path}:{line}"

    id_column = index = None
    for name, aliases in ID_COLUMNS.items():
        found = [i for i, h in enumerate(header) if h in aliases]
        if found:
            id_column, index = name, found[0]
            break
    if id_column is None or index is None:
        raise LabelsError(f"{where(1)}: no study id column (study_uid or accession) in the header")
    for i, h in enumerate(header):
        if h and header.index(h) != i:
            raise LabelsError(f"{where(1, h)}: appears twice in the header")
    kinds = tuple(k for k in FINDING_KINDS if k in header)
    if not kinds:
        raise LabelsError(f"{where(1)}: no finding column ({', '.join(FINDING_KINDS)}) in the header")
    for h in header:
        kind, _, part = h.partition("_")
        if part in ("sop_uid", "box") and kind in FINDING_KINDS:
            if kind not in kinds:
                raise LabelsError(f"{where(1, h)}: a region column without a {kind} column")
            partner = f"{kind}_box" if part == "sop_uid" else f"{kind}_sop_uid"
            if partner not in header:
                raise LabelsError(f"{where(1, h)}: needs a {partner} column too")

    studies: dict[str, StudyLabels] = {}
    previous_end = rows.line_num
    for row in rows:
        line = previous_end + 1  # the record's first line (a quoted field may span several)
        previous_end = rows.line_num
        if not any(cell.strip() for cell in row):
            continue  # blank lines, trailing separators
        if len(row) > len(header):
            raise LabelsError(f"{where(line)}: {len(row)} fields, the header has {len(header)}")
        cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        study_id = cells[header[index]]
        if not study_id:
            raise LabelsError(f"{where(line, header[index])}: empty study id")
        if id_column == "study_uid" and (len(study_id) > 64 or not _UID.match(study_id)):
            raise LabelsError(f"{where(line, header[index])}: not a DICOM UID: {study_id!r}")
        if study_id in studies:
            raise LabelsError(f"{where(line, header[index])}: {study_id} already labelled on line {studies[study_id].line}")
        present: dict[str, bool] = {}
        for kind in kinds:
            value = cells[kind].lower()
            if value in _PRESENT:
                present[kind] = True
            elif value in _ABSENT:
                present[kind] = False
            elif value:
                raise LabelsError(
                    f"{where(line, kind)}: unknown value {cells[kind]!r} (1/0, yes/no, true/false, positive/negative, or empty for unknown)"
                )
        regions: dict[str, LabelledRegion] = {}
        for kind in kinds:
            sops, box = cells.get(f"{kind}_sop_uid", ""), cells.get(f"{kind}_box", "")
            if not sops and not box:
                continue
            if not sops or not box:
                missing = f"{kind}_sop_uid" if not sops else f"{kind}_box"
                raise LabelsError(f"{where(line, missing)}: empty, but {kind}'s region needs both SOP UIDs and a box")
            if not present.get(kind, False):
                raise LabelsError(f"{where(line, f'{kind}_box')}: a {kind} region on a study not labelled {kind} positive")
            uids = tuple(sops.replace(";", " ").split())
            bad = [u for u in uids if len(u) > 64 or not _UID.match(u)]
            if bad:
                raise LabelsError(f"{where(line, f'{kind}_sop_uid')}: not a DICOM UID: {bad[0]!r}")
            regions[kind] = LabelledRegion(uids, _parse_box(box, where(line, f"{kind}_box")))
        studies[study_id] = StudyLabels(study_id, line, present, regions)
    if not studies:
        raise LabelsError(f"{path}: no labelled study after the header")
    return LabelSet(path, id_column, kinds, studies)


def _parse_box(text: str, where: str) -> Box:
    parts = re.split(r"[\s,]+", text.strip())
    try:
        r0, c0, r1, c1 = (int(p) for p in parts)
    except ValueError:
        raise LabelsError(f'{where}: box must be four whole numbers "row0 col0 row1 col1", got {text!r}') from None
    if min(r0, c0) < 0 or r1 <= r0 or c1 <= c0:
        raise LabelsError(f"{where}: box must have 0 <= row0 < row1 and 0 <= col0 < col1 (half-open), got {text!r}")
    return r0, c0, r1, c1


def read_labels(path: str | Path) -> LabelSet:
    """Read and parse a labels CSV; :class:`LabelsError` names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: cannot read the labels: {exc}") from None
    return parse_labels(text, path)


# --------------------------------------------------------------------------- headers of the folder


@dataclass
class FolderStudy:
    """What the subgroups and regions need from one study's headers."""

    study_uid: str
    accession: str
    sex: str
    age: str
    files: list[Path] = field(default_factory=list)
    sop_series: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> Series Instance UID
    series_files: dict[str, list[Path]] = field(default_factory=dict)
    series_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # manufacturer, model, slice thickness

    def label(self) -> str:
        return f"{self.study_uid} (accession {self.accession})" if self.accession else self.study_uid


_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "AccessionNumber",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
    "Manufacturer",
    "ManufacturerModelName",
    "SliceThickness",
    "Modality",
]


def _text(ds: Any, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").replace("\x00", "").strip()


def slice_band(thickness: str | float | None) -> str:
    """The CT slice thickness band (:data:`SLICE_BANDS`) of a SliceThickness value, or ``unknown``."""
    try:
        mm = float(thickness) if thickness is not None else math.nan
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(mm) or mm <= 0:
        return UNKNOWN
    return next(name for name, upper in SLICE_BANDS if mm <= upper)


def read_folder(folder: str | Path) -> tuple[dict[str, FolderStudy], list[str]]:
    """Walk ``folder`` like ``triage score`` does; studies by Study Instance UID, and unreadable-file lines.

    Only the header elements the labels and subgroups need are read.
    """
    folder = Path(folder)
    if not folder.exists():
        raise TriageError(f"{folder}: no such file or folder")
    found, _ = find_dicom_files([folder])
    studies: dict[str, FolderStudy] = {}
    unreadable: list[str] = []
    for f in found:
        try:
            with warnings.catch_warnings():  # pydicom warns per odd value; the header is usable or it raises
                warnings.simplefilter("ignore")
                ds = dcmread(f.path, stop_before_pixels=True, specific_tags=_TAGS)
                tags = {k: _text(ds, k) for k in _TAGS}
        except Exception as exc:  # a damaged file is listed, never a crash
            where = f.path.relative_to(folder) if f.path.is_relative_to(folder) else f.path
            unreadable.append(f"{where}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
            continue
        uid, series = tags["StudyInstanceUID"], tags["SeriesInstanceUID"]
        if not uid or not series:
            where = f.path.relative_to(folder) if f.path.is_relative_to(folder) else f.path
            unreadable.append(f"{where}: no Study or Series Instance UID (truncated or not an image?)")
            continue
        study = studies.get(uid)
        if study is None:
            study = studies[uid] = FolderStudy(
                uid,
                tags["AccessionNumber"],
                sex_stratum(tags["PatientSex"]),
                age_band(tags["PatientAge"], tags["PatientBirthDate"], tags["StudyDate"]),
            )
        study.files.append(f.path)
        study.sop_series[tags["SOPInstanceUID"]] = series
        study.series_files.setdefault(series, []).append(f.path)
        study.series_tags.setdefault(
            series,
            {
                "manufacturer": tags["Manufacturer"] or UNKNOWN,
                "model": tags["ManufacturerModelName"] or UNKNOWN,
                "slice thickness": slice_band(tags["SliceThickness"]) if tags["Modality"].upper() == "CT" else "",
            },
        )
    return studies, unreadable


# --------------------------------------------------------------------------- scoring


@dataclass
class LabelledScore(ManifestScore):
    """A labelled folder scored: outcomes, their subgroups, and what could not be matched.

    ``strata[i]`` holds the subgroup values (dimension -> value) of
    ``outcomes[i]``. ``not_in_folder`` are CSV ids with no study in the
    folder; ``not_in_labels`` are folder studies with no CSV row.
    ``unscored`` counts, per finding kind, labelled studies that no detector
    of that kind scored (``unscored_positive``: those labelled present).
    ``label_notes`` are lines about labels that could not be used in full.
    """

    labels: LabelSet | None = None
    strata: list[dict[str, str]] = field(default_factory=list)
    not_in_folder: list[str] = field(default_factory=list)
    not_in_labels: list[str] = field(default_factory=list)
    unscored: Counter[str] = field(default_factory=Counter)
    unscored_positive: Counter[str] = field(default_factory=Counter)
    label_notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        doc = super().as_json()
        doc.pop("manifest_seed", None)
        doc["labels"] = {
            "file": str(self.labels.path) if self.labels else None,
            "id_column": self.labels.id_column if self.labels else None,
            "labelled_studies": len(self.labels.studies) if self.labels else 0,
            "not_in_folder": list(self.not_in_folder),
            "not_in_labels": list(self.not_in_labels),
            "labelled_not_scored": {k: {"studies": n, "positive": self.unscored_positive[k]} for k, n in sorted(self.unscored.items())},
            "notes": list(self.label_notes),
        }
        return doc


def match_labels(labels: LabelSet, studies: Mapping[str, FolderStudy]) -> tuple[dict[str, StudyLabels], list[str], list[str]]:
    """Pair folder studies with CSV rows.

    Returns ``(labels by Study Instance UID, CSV ids not in the folder,
    folder studies not in the CSV)``. An accession shared by several studies
    labels each of them.
    """
    if labels.id_column == "study_uid":
        key = {uid: uid for uid in studies}
    else:
        key = {uid: s.accession for uid, s in studies.items()}
    matched = {uid: labels.studies[k] for uid, k in key.items() if k in labels.studies}
    used = {key[uid] for uid in matched}
    missing = [i for i in labels.studies if i not in used]
    unlabelled = [studies[uid].label() for uid in studies if uid not in matched]
    return matched, missing, unlabelled


def score_labelled(
    folder: str | Path,
    labels: LabelSet,
    detectors: DetectorSet,
    engine: InferenceEngine,
    studies: Mapping[str, FolderStudy] | None = None,
    unreadable: Sequence[str] = (),
    on_study: Callable[[], None] | None = None,
) -> LabelledScore:
    """Score the labelled studies of ``folder`` and pair each detector's output with the site's labels.

    Per study and detector the strongest finding over the study's series is
    the outcome, as for a manifest. Only labelled studies are scored.
    ``studies``/``unreadable`` are :func:`read_folder`'s result when the
    caller already has it. ``on_study`` is called once per scored study.
    """
    folder = Path(folder)
    if studies is None:
        studies, unreadable = read_folder(folder)
    matched, missing, unlabelled = match_labels(labels, studies)
    result = LabelledScore(
        outcomes=[],
        studies=len(matched),
        seed=None,
        labels=labels,
        not_in_folder=missing,
        not_in_labels=unlabelled,
        failures=list(unreadable),
    )
    if labels.id_column == "accession":
        shared = Counter(studies[uid].accession for uid in matched)
        result.label_notes += [
            f"accession {a} matches {n} studies: each is evaluated with its labels" for a, n in sorted(shared.items()) if n > 1
        ]
    if not matched:
        return result
    families = {d.name: d.family for d in detectors}
    report = score_paths(
        [p for uid in matched for p in studies[uid].files], detectors, engine, on_study=(lambda _: on_study()) if on_study else None
    )
    for u in report.unreadable:
        where = u.path.relative_to(folder) if u.path.is_relative_to(folder) else u.path
        result.failures.append(f"{where}: {u.reason}")
    for study in report.studies:
        entry = matched.get(study.study_uid)
        if entry is not None:
            _add_study(result, entry, study, studies[study.study_uid], families)
    return result


def _add_study(result: LabelledScore, entry: StudyLabels, study: StudyScore, headers: FolderStudy, families: Mapping[str, Family]) -> None:
    name = headers.label()
    result.failures += [f"{name}: {text}" for text in study.failures]
    best: dict[str, Finding] = {}
    for finding in study.findings:
        if finding.detector not in best or finding.probability > best[finding.detector].probability:
            best[finding.detector] = finding
    scored_kinds = {f.kind.value for f in best.values()}
    for kind, present in entry.present.items():
        if kind not in scored_kinds:
            result.unscored[kind] += 1
            result.unscored_positive[kind] += present
    for finding in best.values():
        kind = finding.kind.value
        if kind not in entry.present:
            continue  # unknown for this kind: not evaluated
        truth: list[tuple[Box, SliceRange]] = []
        region = entry.regions.get(kind)
        if region is not None:
            truth, note = _truth(region, finding, headers, families.get(finding.detector))
            if note:
                result.label_notes.append(f"line {entry.line} ({kind}): {note}")
        result.outcomes.append(
            StudyOutcome(
                kind=finding.detector,
                study_folder=name,
                label=entry.present[kind],
                probability=finding.probability,
                urgent=finding.urgent,
                operating_point=finding.operating_point,
                regions=[(r.box, r.slices, r.probability) for r in finding.regions],
                truth=truth,
            )
        )
        tags = headers.series_tags.get(finding.series_uid, {})
        strata = {
            "sex": headers.sex,
            "age": headers.age,
            "manufacturer": tags.get("manufacturer", UNKNOWN),
            "model": tags.get("model", UNKNOWN),
        }
        if tags.get("slice thickness"):
            strata["slice thickness"] = tags["slice thickness"]
        result.strata.append(strata)
        result.models[finding.detector] = finding.model
    if not best and not study.failures:
        modality = study.series[0].modality if study.series else "?"
        if any(s.missing_detectors for s in study.series):
            result.no_detector[modality] += 1
        else:
            result.not_routed[modality] += 1


def _truth(
    region: LabelledRegion, finding: Finding, headers: FolderStudy, family: Family | None
) -> tuple[list[tuple[Box, SliceRange]], str | None]:
    """The labelled region as ``(box, slices)`` in the scored series' own indices, or a note why not."""
    series = {headers.sop_series.get(uid) for uid in region.sop_uids}
    if None in series:
        unknown = next(uid for uid in region.sop_uids if uid not in headers.sop_series)
        return [], f"SOP Instance UID {unknown} is not an image of the study: left out of localisation"
    if series != {finding.series_uid}:
        return [], (
            f"region on series {', '.join(sorted(s for s in series if s))}, the detector scored series "
            f"{finding.series_uid}: left out of localisation"
        )
    if family is Family.CT:
        try:
            order = load_volume(headers.series_files[finding.series_uid]).sop_instance_uids
        except PixelDataError as exc:
            return [], f"series {finding.series_uid} cannot be read for slice positions ({exc})"
        # Slice indices as the detector numbers them: the volume's order, not the files'.
        index = [i for i, uid in enumerate(order) if uid in region.sop_uids]
        if not index:  # e.g. a duplicate instance the volume reader dropped
            return [], f"none of the region's images is a slice of series {finding.series_uid}'s volume"
        return [(region.box, (min(index), max(index)))], None
    # A radiograph is scored image by image; the finding is the strongest image's.
    images = {r.sop_instance_uid for r in finding.regions}
    files = headers.series_files.get(finding.series_uid, [])
    if not images and len(files) == 1:
        images = {uid for uid, s in headers.sop_series.items() if s == finding.series_uid}
    if not images & set(region.sop_uids):
        return [], "region on another image of the series than the one the detector reported: left out of localisation"
    return [(region.box, (0, 0))], None


# --------------------------------------------------------------------------- subgroups


@dataclass(frozen=True)
class Subgroup:
    """One detector's figures in one subgroup (e.g. sex F): counts, and rates where there are enough studies.

    A rate is given only when its class has at least ``min_n`` studies;
    below that the report says how few there are instead of a figure.
    """

    detector: str
    dimension: str
    value: str
    counts: Confusion
    auc: float | None
    min_n: int

    @property
    def n_positive(self) -> int:
        return self.counts.tp + self.counts.fn

    @property
    def n_negative(self) -> int:
        return self.counts.tn + self.counts.fp

    @property
    def sensitivity_judged(self) -> bool:
        return self.n_positive >= self.min_n

    @property
    def specificity_judged(self) -> bool:
        return self.n_negative >= self.min_n

    def as_json(self) -> dict[str, Any]:
        c = self.counts

        def rate(judged: bool, value: float | None, ci: tuple[float, float] | None) -> dict[str, Any] | None:
            return {"value": value, "ci": list(ci) if ci else None} if judged else None

        return {
            "detector": self.detector,
            "dimension": self.dimension,
            "value": self.value,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "counts": {"tp": c.tp, "fn": c.fn, "tn": c.tn, "fp": c.fp},
            "sensitivity": rate(self.sensitivity_judged, c.sensitivity, c.sensitivity_ci),
            "specificity": rate(self.specificity_judged, c.specificity, c.specificity_ci),
            "auc": self.auc,
            "min_n": self.min_n,
        }


def _order(dimension: str, value: str) -> tuple[int, str]:
    """Fixed orders for sex, age and slice bands; alphabetical otherwise; ``unknown`` last."""
    if value == UNKNOWN:
        return (10_000, "")
    fixed = {"sex": list(SEXES), "age": [n for n, _ in AGE_BANDS], "slice thickness": [n for n, _ in SLICE_BANDS]}
    if dimension in fixed and value in fixed[dimension]:
        return (fixed[dimension].index(value), "")
    return (0, value.lower())


def subgroups(outcomes: Sequence[StudyOutcome], strata: Sequence[Mapping[str, str]], min_n: int = 5, level: float = 0.95) -> list[Subgroup]:
    """Sensitivity and specificity (Wilson intervals) at the operating point, per detector and subgroup.

    Parameters
    ----------
    outcomes, strata : sequence
        Parallel: each outcome's subgroup values (dimension -> value), as
        :class:`LabelledScore` holds them. An outcome without a dimension
        (slice thickness of a radiograph) is in none of its subgroups.
    min_n : int
        Fewest studies of a class for its rate to be given; AUC needs that
        many of both classes.
    """
    if len(outcomes) != len(strata):
        raise ValueError(f'Arguments "outcomes" and "strata" must be parallel, got {len(outcomes)} and {len(strata)}')
    if min_n < 1:
        raise ValueError(f'Argument "min_n" must be at least 1, got {min_n!r}')
    groups: dict[tuple[str, str, str], list[StudyOutcome]] = {}
    for outcome, values in zip(outcomes, strata, strict=False):
        for dimension in DIMENSIONS:
            if dimension in values:
                groups.setdefault((outcome.kind, dimension, values[dimension]), []).append(outcome)
    out = []
    for (detector, dimension, value), group in groups.items():
        labels = np.array([o.label for o in group], dtype=bool)
        counts = confusion(labels, np.array([o.urgent for o in group], dtype=bool), level)
        n_pos, n_neg = int(labels.sum()), int((~labels).sum())
        area = auc(labels, [o.probability for o in group]) if min(n_pos, n_neg) >= min_n else None
        out.append(Subgroup(detector, dimension, value, counts, area, min_n))
    out.sort(key=lambda s: (s.detector, DIMENSIONS.index(s.dimension), _order(s.dimension, s.value)))
    return out


# --------------------------------------------------------------------------- text


def _rate(judged: bool, n: int, value: float | None, ci: tuple[float, float] | None, min_n: int) -> str:
    if not n:
        return "-"
    if not judged:
        return f"too few ({n} < {min_n})"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if value is not None and ci else "-"


def format_subgroups(groups: Sequence[Subgroup]) -> str:
    """A plain-text table of the subgroup figures; a class with too few studies says so instead of a rate."""
    header = ("detector", "subgroup", "n (pos/neg)", "sensitivity [95% CI]", "specificity [95% CI]", "AUC")
    rows = [
        (
            g.detector,
            f"{g.dimension}: {g.value}",
            f"{g.n_positive + g.n_negative} ({g.n_positive}/{g.n_negative})",
            _rate(g.sensitivity_judged, g.n_positive, g.counts.sensitivity, g.counts.sensitivity_ci, g.min_n),
            _rate(g.specificity_judged, g.n_negative, g.counts.specificity, g.counts.specificity_ci, g.min_n),
            "-" if g.auc is None else f"{g.auc:.3f}",
        )
        for g in groups
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _listed(what: str, items: Sequence[str], limit: int = 20) -> list[str]:
    if not items:
        return []
    lines = [f"{what} ({len(items)}):"] + [f"  {i}" for i in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more (all in --json)")
    return lines


def format_labels_summary(result: LabelledScore) -> list[str]:
    """Lines on how the CSV matched the folder: counts, unmatched ids, labels not scored, notes."""
    labels = result.labels
    assert labels is not None
    lines = [f"labels: {labels.path} (by {labels.id_column}): {len(labels.studies)} labelled, {result.studies} matched in the folder"]
    lines += _listed("in the labels but not in the folder", result.not_in_folder)
    lines += _listed("in the folder but not in the labels", result.not_in_labels)
    # Only positives matter here: a CSV that says "0" for every kind on every
    # study would otherwise list each chest film as an unscored bleed.
    missed = {k: n for k, n in sorted(result.unscored_positive.items()) if n}
    if missed:
        parts = ", ".join(f"{k} {n}" for k, n in missed.items())
        lines.append(f"labelled positive, but no detector of that kind scored the study (not in the figures): {parts}")
    lines += _listed("label notes", result.label_notes)
    return lines
