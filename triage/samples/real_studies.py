"""Real-anatomy test studies written as DICOM with a ground-truth manifest (``triage samples real``).

The same folder layout and ``manifest.json`` as ``triage samples generate``,
so ``triage evaluate`` measures the detectors on them through the whole
reading path: DICOM headers, routing, pixel decoding, rescale, photometric
interpretation, gantry tilt. Studies are the real scans of
:mod:`detectors.realdata`, normal or with one inserted lesion, under drawn
acquisitions and storage variants, from the ``test`` split of
:mod:`detectors.real_cases` (never drawn for training or calibration):

- head CT: the whole real head, normal or with a haemorrhage (five kinds,
  0.3-50 mL), slice thickness 0.6-7 mm, gantry tilt (written as DICOM
  geometry: ImageOrientationPatient and GantryDetectorTilt), 256/512, kernel,
  noise, and the rescale slope/intercept and signedness variants of real CT;
- chest CR: the real processed chest radiograph with or without an inserted
  nodule, written as it came (``DERIVED\\PRIMARY``, Pixel Spacing ``0\\0``) or
  cleaned up, MONOCHROME1 or 2. It is not normal: its own round masses are
  findings too (``"origin": "read by eye"``, boxes approximate), so every
  chest CR study is positive and the figures that matter there are per lesion;
- leg CR: the real lower-leg radiograph with or without a cortical break.

Each manifest entry records what was drawn, for stratified figures.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from detectors import realdata
from detectors.phantoms.truth import box_of
from detectors.real_cases import Case, bleed_case, fracture_xr_case, nodule_xr_case
from dicom_io.writer import UID_ROOT, StudyMeta, ct_datasets, radiograph_dataset
from triage.samples.phantom_studies import MANIFEST, pixel_hash

KINDS = ("head_ct", "chest_xr", "extremity_xr")


def _meta(index: int, kind: str, seed: int, description: str, series: str, body_part: str) -> StudyMeta:
    uid = lambda what: generate_uid(UID_ROOT, entropy_srcs=["real", str(seed), str(index), what])  # noqa: E731
    return StudyMeta(
        patient_id=f"RA{seed:03d}{index:04d}",
        patient_name=f"REALANATOMY^{kind.upper()}^{index}",
        patient_sex="O",
        patient_age="060Y",
        accession_number=f"R{seed:03d}{index:04d}",
        study_description=description,
        series_description=series,
        body_part=body_part,
        order_priority="ROUTINE",
        manufacturer="REAL ANATOMY (INSERTED LESIONS)",
        model=kind,
        study_uid=uid("study"),
        series_uid=uid("series"),
        frame_of_reference_uid=uid("frame"),
        study_datetime=dt.datetime(2026, 2, 1) + dt.timedelta(minutes=23 * index),
    )


def _restore(ds: Dataset, hu: np.ndarray, storage: dict[str, Any]) -> None:
    """Store ``hu`` with a drawn rescale (PS3.3 C.11.1.1.2): stored = (HU - intercept) / slope."""
    slope, intercept = float(storage["rescale_slope"]), float(storage["rescale_intercept"])
    signed = int(storage["pixel_representation"])
    bits = int(storage["bits_stored"])
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    stored = np.clip(np.rint((hu - intercept) / slope), lo, hi).astype(np.int16 if signed else np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, signed
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.tobytes()


def _head_datasets(case: Case, index: int, seed: int, rng: np.random.Generator) -> tuple[list[Dataset], dict[str, Any]]:
    from detectors.insertion.acquisition import storage_variants

    series = case.series
    variant = case.tags["variant"]
    meta = _meta(index, "head_ct", seed, "CT HEAD WO CONTRAST", f"AXIAL {series.spacing_mm[0]:.3g}MM", "HEAD")
    datasets = list(
        ct_datasets(
            series.pixels,
            pixel_spacing_mm=series.spacing_mm[1:],
            slice_thickness_mm=series.spacing_mm[0],
            meta=meta,
            transfer_syntax=ExplicitVRLittleEndian,
        )
    )
    storage = storage_variants(rng)
    tilt = float(variant.get("tilt_deg") or 0.0)
    t = math.radians(tilt)
    rows, cols = series.pixels.shape[1:]
    for k, ds in enumerate(datasets):
        _restore(ds, series.pixels[k], storage)
        if tilt:
            # A tilted gantry: the column direction leaves the axial plane; the table steps along z
            # (PS3.3 C.7.6.2.1.1), so the slices are Δz·cos(tilt) apart along their normal.
            ds.ImageOrientationPatient = [1, 0, 0, 0, round(math.cos(t), 6), round(math.sin(t), 6)]
            ds.ImagePositionPatient = [
                -cols * series.spacing_mm[2] / 2,
                -rows * series.spacing_mm[1] / 2 * math.cos(t),
                k * series.spacing_mm[0],
            ]
            ds.GantryDetectorTilt = round(tilt, 2)
    extra = {
        "acquisition": {
            "matrix": int(cols),
            "slices": len(datasets),
            "slice_thickness_mm": round(float(series.spacing_mm[0]), 3),
            "pixel_spacing_mm": round(float(series.spacing_mm[1]), 3),
            "tilt_deg": tilt,
            "noise_hu": variant.get("noise_hu"),
            "sharpness": variant.get("sharpness"),
            "rescale": [storage["rescale_slope"], storage["rescale_intercept"]],
        }
    }
    return datasets, extra


def _xr_dataset(case: Case, index: int, seed: int, kind: str, rng: np.random.Generator) -> tuple[list[Dataset], dict[str, Any]]:
    image = case.series.pixels[0]
    spacing = float(case.series.spacing_mm[1])
    as_received = bool(rng.random() < 0.5)
    photometric = "MONOCHROME1" if as_received or rng.random() < 0.5 else "MONOCHROME2"
    description, series, part = ("XR CHEST PA", "PA", "CHEST") if kind == "chest_xr" else ("XR TIBIA FIBULA", "AP", "LEG")
    meta = _meta(index, kind, seed, description, series, part)
    ds = radiograph_dataset(
        image, modality="CR", pixel_spacing_mm=spacing, photometric=photometric, voi="window", view_position=series, meta=meta
    )
    if as_received:
        # What the real processed CR carried: a presentation image with a zero Pixel Spacing.
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.PixelSpacing = [0, 0]
    extra = {"acquisition": {"as_received": as_received, "photometric": photometric, "pixel_spacing_mm": spacing}}
    return [ds], extra


def _findings(case: Case, datasets: list[Dataset], kind: str) -> list[dict[str, Any]]:
    """The inserted lesion (exact truth), then the real scan's own findings as marked by eye (approximate)."""
    finding_kind = {"head_ct": "bleed", "chest_xr": "nodule", "extremity_xr": "fracture"}[kind]
    out = []
    if case.lesion.any():
        slices, box = box_of(case.lesion)
        size = float(case.tags.get("diameter_mm") or 0.0)
        sops = [str(ds.SOPInstanceUID) for ds in datasets if slices[0] <= int(ds.InstanceNumber) - 1 <= slices[1]]
        out.append(
            {
                "kind": finding_kind,
                "subtype": str(case.tags.get("kind", finding_kind)),
                "origin": "inserted",
                "slices": list(slices),
                "box": list(box),
                "size_mm": size,
                "volume_ml": case.tags.get("volume_ml"),
                "sop_instance_uids": sops,
            }
        )
    name = f"{case.tags.get('case')}.dcm"
    marks = realdata.case(name).regions if case.own_findings is not None else ()
    rows, cols = case.series.pixels.shape[1:]
    spacing = float(case.series.spacing_mm[1])
    for r, c, radius in marks:
        c = cols - 1 - c if case.tags.get("mirrored") else c
        mark_box = [max(int(r - radius), 0), max(int(c - radius), 0), min(int(r + radius) + 1, rows), min(int(c + radius) + 1, cols)]
        out.append(
            {
                "kind": finding_kind,
                "subtype": "mass",
                "origin": "read by eye",
                "slices": [0, 0],
                "box": mark_box,
                "size_mm": round(2 * radius * spacing, 1),
                "volume_ml": None,
                "sop_instance_uids": [str(datasets[0].SOPInstanceUID)],
            }
        )
    return out


def generate_real_samples(
    out: Path,
    counts: dict[str, int],
    seed: int = 0,
    progress: Callable[[], None] | None = None,
    positive_fraction: float = 0.75,
    head_slab_mm: float | None = None,
) -> dict[str, Any]:
    """Write ``counts[kind]`` real-anatomy studies of each kind under ``out`` and its manifest.

    Head CTs are the whole head unless ``head_slab_mm`` asks for a slab (tests).
    """
    unknown = [k for k in counts if k not in KINDS]
    if unknown:
        raise ValueError(f'Argument "counts" must name some of {", ".join(KINDS)}, got {", ".join(unknown)}')
    studies = []
    index = 0
    for kind, n in counts.items():
        for i in range(n):
            rng = np.random.default_rng([seed, index, 99])
            positive = bool(rng.random() < positive_fraction)
            if kind == "head_ct":
                case = bleed_case("test", seed * 10_000 + i, slab_mm=head_slab_mm, positive=positive)
                datasets, extra = _head_datasets(case, index, seed, rng)
            elif kind == "chest_xr":
                case = nodule_xr_case("test", seed * 10_000 + i, positive_fraction=1.0 if positive else 0.0)
                datasets, extra = _xr_dataset(case, index, seed, kind, rng)
            else:
                case = fracture_xr_case("test", seed * 10_000 + i, positive_fraction=1.0 if positive else 0.0)
                datasets, extra = _xr_dataset(case, index, seed, kind, rng)
            folder = out / f"{index:03d}_{kind}"
            folder.mkdir(parents=True, exist_ok=True)
            for ds in datasets:
                ds.save_as(folder / f"{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
            first = datasets[0]
            findings = _findings(case, datasets, kind)
            studies.append(
                {
                    "folder": folder.name,
                    "kind": kind,
                    "present": bool(findings),
                    "study_uid": str(first.StudyInstanceUID),
                    "series_uid": str(first.SeriesInstanceUID),
                    "modality": str(first.Modality),
                    "transfer_syntax": str(first.file_meta.TransferSyntaxUID),
                    "body_part_tag": first.get("BodyPartExamined"),
                    "instances": len(datasets),
                    "pixel_sha256": pixel_hash(datasets),
                    "findings": findings,
                    "real_case": case.tags.get("case"),
                    "drawn": {k: v for k, v in case.tags.items() if k != "variant"},
                    **extra,
                }
            )
            index += 1
            if progress is not None:
                progress()
    manifest = {
        "generator": "triage samples real",
        "seed": seed,
        "counts": counts,
        "split": "test",
        "sources": "detectors.realdata (invesalius-examples 3.1.99998-4, GPL-2; pydicom-data 1.0.0, MIT)",
        "studies": studies,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
