"""Offline scoring: DICOM files and folders in, findings per study and series out.

No network and no database: ``triage score`` and ``triage evaluate`` run the
routing and the detectors that the server runs, on files on disk. Headers are
read first (``stop_before_pixels``) and grouped by study, then series; each
series is routed (:func:`detectors.routing.route`) and handed to the
inference engine with a loader, so pixels are read on the engine's workers
and series of different studies batch together.

Nothing a file can contain stops a run: an unreadable file is listed with its
reason, and a series whose pixels cannot be read or scored carries the error
text while every other series is scored.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread

from detectors.base import DetectionError, Detector, Family, Finding, SeriesArrays
from detectors.content_check import ct_region
from detectors.engine import InferenceEngine, SeriesSource
from detectors.registry import DetectorSet
from detectors.routing import FindingKind, SeriesInfo, route
from dicom_io.pixels import PixelDataError, load_radiograph, load_volume
from dicom_io.send import find_dicom_files
from triage.flow.cases import NOTE_SEPARATOR

logger = logging.getLogger(__name__)

DISCLAIMER = "AI suggestion for worklist ordering; not a diagnosis; not a medical device"

_FAMILY = {"CT": Family.CT, "CR": Family.RADIOGRAPH, "DX": Family.RADIOGRAPH, "DR": Family.RADIOGRAPH}


@dataclass(frozen=True)
class UnreadableFile:
    """A file that looked like DICOM but whose header could not be used."""

    path: Path
    reason: str


@dataclass(frozen=True)
class SeriesScore:
    """One series: how it was routed and what the detectors said.

    ``reason`` is the routing reason, extended when a routed finding kind has
    no detector loaded; ``missing_detectors`` names those finding kinds.
    ``analysed`` is true when at least one detector was asked to score it.
    ``failures`` are one-line texts (pixel data that could not be read, a
    detector that failed); the series' other results stand. ``notes`` are the
    reported findings' notes (an estimated pixel spacing, ...); ``reason`` ends
    with each as ``"; note: <text>"`` too, because the reason is what the
    server stores with the result and writes to the audit trail
    (:func:`triage.flow.cases.reason_notes` reads them back).
    """

    series_uid: str
    modality: str
    description: str
    instances: int
    reason: str
    analysed: bool
    findings: tuple[Finding, ...] = ()
    failures: tuple[str, ...] = ()
    missing_detectors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "description": self.description,
            "instances": self.instances,
            "route": self.reason,
            "analysed": self.analysed,
            "findings": [f.as_json() for f in self.findings],
            "failures": list(self.failures),
            "missing_detectors": list(self.missing_detectors),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class StudyScore:
    """One study's series, in the order their first file was seen."""

    study_uid: str
    patient_id: str
    accession: str
    description: str
    folder: Path  # the deepest folder holding all of its files
    series: tuple[SeriesScore, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.series for f in s.findings]

    @property
    def failures(self) -> list[str]:
        return [f for s in self.series for f in s.failures]

    def as_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "accession": self.accession,
            "description": self.description,
            "folder": str(self.folder),
            "series": [s.as_json() for s in self.series],
        }


@dataclass(frozen=True)
class ScoreReport:
    """What :func:`score_paths` found: studies, plus the files it could not use.

    ``skipped`` counts files without the DICOM Part 10 preamble (notes,
    manifests), which folders usually hold and nobody needs listed.
    """

    studies: list[StudyScore]
    unreadable: list[UnreadableFile] = field(default_factory=list)
    skipped: int = 0

    @property
    def failures(self) -> list[str]:
        return [f for s in self.studies for f in s.failures]

    def as_json(self) -> dict[str, Any]:
        return {
            "disclaimer": DISCLAIMER,
            "studies": [s.as_json() for s in self.studies],
            "unreadable": [{"path": str(u.path), "reason": u.reason} for u in self.unreadable],
            "skipped_non_dicom": self.skipped,
        }


# -- grouping headers ------------------------------------------------------------


@dataclass
class _Series:
    uid: str
    info: SeriesInfo  # from the first file seen; number_of_images filled in at routing
    files: list[Path] = field(default_factory=list)


@dataclass
class _Study:
    uid: str
    patient_id: str
    accession: str
    description: str
    series: dict[str, _Series] = field(default_factory=dict)  # insertion order = first seen


def _text(ds: Any, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").replace("\x00", "").strip()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Header:
    study_uid: str
    series_uid: str
    patient_id: str
    accession: str
    study_description: str
    info: SeriesInfo


def _read_header(path: Path) -> _Header:
    # pydicom parses lazily: a damaged element raises on first access, so
    # everything needed is read here, inside the caller's try.
    ds = dcmread(path, stop_before_pixels=True)
    return _Header(
        _text(ds, "StudyInstanceUID"),
        _text(ds, "SeriesInstanceUID"),
        _text(ds, "PatientID"),
        _text(ds, "AccessionNumber"),
        _text(ds, "StudyDescription"),
        SeriesInfo.from_dataset(ds),
    )


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _group_headers(paths: Iterable[str | Path]) -> tuple[list[_Study], list[UnreadableFile], int]:
    """Walk files and folders; group readable DICOM headers by study, then series.

    Raises :class:`triage.errors.TriageError` for a path that does not exist.
    """
    files, skipped = find_dicom_files(paths)
    # A Part 10 preamble with unreadable file meta is a damaged DICOM file, worth
    # listing; anything else without the preamble is not DICOM (notes, manifests).
    unreadable = [UnreadableFile(p, "DICOM file meta information unreadable") for p in skipped if _has_dicom_magic(p)]
    not_dicom = len(skipped) - len(unreadable)
    studies: dict[str, _Study] = {}
    for f in files:
        try:
            with warnings.catch_warnings():  # pydicom warns per odd value; the header is usable or it raises
                warnings.simplefilter("ignore")
                header = _read_header(f.path)
        except Exception as exc:  # pydicom raises many types on damaged files; a file never stops a run
            unreadable.append(UnreadableFile(f.path, _one_line(exc)))
            continue
        if not header.study_uid or not header.series_uid:
            unreadable.append(UnreadableFile(f.path, "no Study or Series Instance UID (truncated or not an image?)"))
            continue
        study = studies.get(header.study_uid)
        if study is None:
            study = studies[header.study_uid] = _Study(header.study_uid, header.patient_id, header.accession, header.study_description)
        series = study.series.get(header.series_uid)
        if series is None:
            series = study.series[header.series_uid] = _Series(header.series_uid, header.info)
        series.files.append(f.path)
    return list(studies.values()), unreadable, not_dicom


# -- loaders (run on the engine's workers) --------------------------------------------


def _load_ct(files: Sequence[Path]) -> SeriesArrays:
    return SeriesArrays.from_volume(load_volume(files))


def _load_radiograph(path: Path, series_uid: str) -> SeriesArrays:
    return SeriesArrays.from_radiograph(load_radiograph(path), series_uid)


# -- scoring -------------------------------------------------------------------------


@dataclass
class _Pending:
    """One series on its way through the engine."""

    series: _Series
    reason: str
    analysed: bool
    futures: list[tuple[FindingKind, Future[Finding]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    missing: list[FindingKind] = field(default_factory=list)  # routed, but no detector loaded


def _submit_series(series: _Series, detectors: DetectorSet, engine: InferenceEngine) -> _Pending:
    info = dataclasses.replace(series.info, number_of_images=len(series.files))
    family = _FAMILY.get(info.modality.upper())
    failures: list[str] = []
    loaded: list[SeriesArrays] = []

    def content_check() -> str | None:
        # Only called by route() for a CT whose tags name no anatomy; the volume
        # read here is kept so the detector does not read it again.
        try:
            volume = load_volume(series.files)
        except PixelDataError as exc:
            failures.append(f"content check: {exc}")
            return None
        except Exception as exc:  # a damaged series must not stop the run; it is reported
            logger.warning("content check of series %s failed", series.uid, exc_info=True)
            failures.append(f"content check: {_one_line(exc)}")
            return None
        loaded.append(SeriesArrays.from_volume(volume))
        return ct_region(volume.hu)

    decision = route(info, content_check if family is Family.CT else None)
    pending = _Pending(series, decision.reason, False, failures=failures)
    for kind in decision.detectors:
        detector = detectors.for_route(kind, family) if family is not None else None
        if detector is None:
            pending.missing.append(kind)
            continue
        pending.analysed = True
        for source in _sources(detector, series, loaded):
            pending.futures.append((kind, engine.submit(detector, source)))
    if pending.missing:
        what = family.value if family else info.modality
        missing = [f"no {k.value} detector loaded for {what}" for k in pending.missing]
        pending.reason = "; ".join([decision.reason, *missing])
    return pending


def _sources(detector: Detector, series: _Series, loaded: list[SeriesArrays]) -> list[SeriesSource]:
    """What to submit: a CT volume once (already read if the content check read it), a radiograph per image."""
    if detector.family is Family.CT:
        return [loaded[0] if loaded else functools.partial(_load_ct, tuple(series.files))]
    return [functools.partial(_load_radiograph, path, series.uid) for path in series.files]


def _collect(pending: _Pending) -> SeriesScore:
    """Wait for a series' results; for several radiographs, keep the strongest finding per kind.

    A radiograph series with several images (two views, a repeat) is scored
    image by image, and the series reports, per finding kind, the image with
    the highest probability: the series is as suspicious as its most
    suspicious image. CT series are scored as one volume.
    """
    best: dict[FindingKind, Finding] = {}
    failures = list(pending.failures)
    for kind, future in pending.futures:
        try:
            finding = future.result()
        except DetectionError as exc:
            failures.append(str(exc))
            continue
        if kind not in best or finding.probability > best[kind].probability:
            best[kind] = finding
    info = pending.series.info
    notes = tuple(dict.fromkeys(n for f in best.values() for n in f.notes))
    return SeriesScore(
        series_uid=pending.series.uid,
        modality=info.modality,
        description=info.series_description,
        instances=len(pending.series.files),
        reason="".join([pending.reason, *(f"{NOTE_SEPARATOR}{n}" for n in notes)]),
        analysed=pending.analysed,
        findings=tuple(best.values()),
        failures=tuple(failures),
        missing_detectors=tuple(k.value for k in pending.missing),
        notes=notes,
    )


def _folder(files: Iterable[Path]) -> Path:
    parents = {str(p.parent) for p in files}
    return Path(os.path.commonpath(sorted(parents)))


def score_paths(
    paths: Iterable[str | Path], detectors: DetectorSet, engine: InferenceEngine, on_study: Callable[[StudyScore], None] | None = None
) -> ScoreReport:
    """Score every DICOM study found in ``paths`` (files and folders).

    Every series is submitted before any result is awaited, so the engine
    batches across series and studies; results are then collected study by
    study, in the order each study's first file was seen.

    Parameters
    ----------
    paths
        Files and folders; folders are walked in sorted order.
    detectors
        The loaded detectors; a routed finding kind without one is reported in
        the series' reason.
    engine
        The inference engine to submit to (the caller owns and closes it).
    on_study
        Called with each study once its results are in (progress bars).

    Returns
    -------
    ScoreReport
        Studies in input order, plus unreadable files and the count of
        non-DICOM files skipped.

    Raises
    ------
    triage.errors.TriageError
        A path does not exist.
    """
    groups, unreadable, skipped = _group_headers(paths)
    submitted = [(study, [_submit_series(s, detectors, engine) for s in study.series.values()]) for study in groups]
    studies = []
    for study, pending in submitted:
        scored = StudyScore(
            study_uid=study.uid,
            patient_id=study.patient_id,
            accession=study.accession,
            description=study.description,
            folder=_folder(f for s in study.series.values() for f in s.files),
            series=tuple(_collect(p) for p in pending),
        )
        studies.append(scored)
        if on_study is not None:
            on_study(scored)
    return ScoreReport(studies, unreadable, skipped)


def score_series(series_uid: str, files: Sequence[Path], detectors: DetectorSet, engine: InferenceEngine) -> SeriesScore:
    """Score one series from its stored files (what ``triage serve`` does for each scoring job).

    The series is routed from the header of its first file, like
    :func:`score_paths` does; nothing in the files raises out of here except
    a header that cannot be read at all (:class:`DetectionError`, so the
    caller records it as the series' failure).
    """
    if not files:
        raise DetectionError(f"series {series_uid}: no stored instances")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = _read_header(files[0])
    except Exception as exc:  # a damaged file is the series' failure, not the server's
        raise DetectionError(f"series {series_uid}: header unreadable: {_one_line(exc)}") from None
    series = _Series(series_uid, header.info, list(files))
    return _collect(_submit_series(series, detectors, engine))
