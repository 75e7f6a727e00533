"""Sample studies: phantoms written as DICOM with a ground-truth manifest.

``generate_samples(out, n, seed)`` is what ``triage samples generate`` runs;
the committed ``sample_studies/`` folder is its output for the documented
command (see the README), and a test regenerates it and compares pixel hashes.
Everything, UIDs included, derives from the seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from detectors.phantoms.abdomen_ct import abdomen_ct
from detectors.phantoms.chest_ct import chest_ct
from detectors.phantoms.head_ct import head_ct
from detectors.phantoms.radiographs import STUDY, chest_radiograph, extremity_radiograph
from detectors.phantoms.truth import Lesion, XRPhantom
from dicom_io.writer import UID_ROOT, StudyMeta, ct_datasets, radiograph_dataset

KINDS = ("head_ct", "chest_ct", "chest_xr", "extremity_xr", "abdomen_ct")
WITHOUT_FINDINGS = {"abdomen_ct"}  # no detector covers it: always normal
MANIFEST = "manifest.json"

_SEXES, _MAKERS = ("F", "M", "F", "M", "O"), ("GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA", "FUJIFILM")


@dataclass(frozen=True)
class _Plan:
    kind: str
    present: bool
    index: int


def plan(n: int, kinds: Sequence[str]) -> list[_Plan]:
    """Each kind in turn, alternating without and with a finding."""
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        out.append(_Plan(kind, bool((i // len(kinds)) % 2) and kind not in WITHOUT_FINDINGS, i))
    return out


def _meta(rng: random.Random, seed: int, p: _Plan, description: str, series: str, body_part: str | None) -> StudyMeta:
    uid = lambda what: generate_uid(UID_ROOT, entropy_srcs=[str(seed), str(p.index), what])  # noqa: E731
    return StudyMeta(
        patient_id=f"PH{seed:03d}{p.index:03d}",
        patient_name=f"PHANTOM^{p.kind.upper()}^{p.index}",
        patient_sex=rng.choice(_SEXES),
        patient_age=f"{rng.randint(18, 92):03d}Y",
        accession_number=f"A{seed:03d}{p.index:04d}",
        study_description=description,
        series_description=series,
        body_part=body_part,
        order_priority=rng.choice(["STAT", "ROUTINE", "ROUTINE", "HIGH"]),
        manufacturer=rng.choice(_MAKERS),
        model="PHANTOM",
        study_uid=uid("study"),
        series_uid=uid("series"),
        frame_of_reference_uid=uid("frame"),
        study_datetime=dt.datetime(2026, 1, 5) + dt.timedelta(minutes=37 * p.index),
    )


ACQUISITIONS = ("fixed", "varied")


def _study(seed: int, p: _Plan, acquisition: str = "fixed") -> tuple[list[Dataset], list[Lesion], dict[str, object]]:
    rng = random.Random(f"{seed}-{p.index}")
    # Some studies compressed, some without Body Part Examined: what PACS send.
    ts = [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless][p.index % 3]
    part_tag = p.index % 4 != 3
    if p.kind in ("head_ct", "chest_ct", "abdomen_ct"):
        geometry: dict[str, Any]
        if p.kind == "abdomen_ct":
            ph = abdomen_ct(seed * 1000 + p.index)
            desc, part = "CT ABDOMEN PELVIS WO CONTRAST", "ABDOMEN"
        elif p.kind == "head_ct":
            geometry = {"matrix": 256, "slices": 24} if acquisition == "fixed" else {}
            ph = head_ct(seed * 1000 + p.index, bleed="random" if p.present else None, **geometry)
            desc, part = "CT HEAD WO CONTRAST", "HEAD"
        else:
            geometry = {"matrix": 256, "slices": 24} if acquisition == "fixed" else {}
            ph = chest_ct(seed * 1000 + p.index, nodules=1 if p.present else 0, **geometry)
            desc, part = "CT CHEST WO CONTRAST", "CHEST"
        meta = _meta(rng, seed, p, desc, f"AXIAL {ph.spacing_mm[0]:g}MM", part if part_tag else None)
        datasets = list(
            ct_datasets(ph.hu, pixel_spacing_mm=ph.spacing_mm[1:], slice_thickness_mm=ph.spacing_mm[0], meta=meta, transfer_syntax=ts)
        )
        extra: dict[str, object] = {"body_part": part}
        if acquisition == "varied":  # recorded for stratified evaluation (fixed sets keep their old manifest)
            extra["acquisition"] = {
                "matrix": int(ph.hu.shape[1]),
                "slices": int(ph.hu.shape[0]),
                "slice_thickness_mm": round(float(ph.spacing_mm[0]), 3),
                "pixel_spacing_mm": round(float(ph.spacing_mm[1]), 3),
            }
        return datasets, ph.lesions, extra
    if p.kind == "chest_xr":
        xr = chest_radiograph(seed * 1000 + p.index, nodule=p.present, rows=768)
        desc, part, view = "XR CHEST PA", "CHEST", "PA"
    else:
        fracture = rng.choice(["transverse", "oblique", "spiral", "comminuted"]) if p.present else None
        xr = extremity_radiograph(seed * 1000 + p.index, fracture=fracture, rows=768)
        desc, part, view = {
            "tibia_fibula": ("XR TIBIA FIBULA 2V", "LEG", "AP"),
            "radius_ulna": ("XR FOREARM 2V", "FOREARM", "AP"),
            "femur": ("XR FEMUR 2V", "FEMUR", "AP"),
        }[str(xr.notes.get("bone", "tibia_fibula"))]
    meta = _meta(rng, seed, p, desc, view, part if part_tag else None)
    ds = radiograph_to_dicom(
        xr,
        modality=rng.choice(["CR", "DX"]),
        photometric=rng.choice(["MONOCHROME1", "MONOCHROME2"]),
        voi=rng.choice(["window", "lut"]),
        meta=meta,
        transfer_syntax=ts,
    )
    return [ds], xr.lesions, {"body_part": part}


def pixel_hash(datasets: Sequence[Dataset]) -> str:
    """SHA-256 over the decoded pixel arrays, in instance order (transfer-syntax independent)."""
    h = hashlib.sha256()
    for ds in sorted(datasets, key=lambda d: int(d.InstanceNumber)):
        h.update(ds.pixel_array.tobytes())
    return h.hexdigest()


def generate_samples(
    out: Path, n: int, seed: int, kinds: Sequence[str] = KINDS, progress: Callable[[], None] | None = None, acquisition: str = "fixed"
) -> dict[str, object]:
    """Write ``n`` studies under ``out/<nn>_<kind>/`` and ``out/manifest.json``; returns the manifest.

    ``acquisition="fixed"`` writes CTs of 24 slices on a 256 matrix (small,
    for the committed samples); ``"varied"`` draws matrix (256/512), slice
    thickness (0.625-5 mm) and slice count as the phantoms do, and records
    them per study, for robustness evaluation.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f'Argument "acquisition" must be one of {ACQUISITIONS}, got {acquisition!r}')
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f'Argument "kinds" must be some of {", ".join(KINDS)}, got {", ".join(unknown) or "none"}')
    if n < 1:
        raise ValueError(f'Argument "n" must be at least 1, got {n}')
    studies = []
    for p in plan(n, kinds):
        datasets, lesions, extra = _study(seed, p, acquisition)
        folder = out / f"{p.index:02d}_{p.kind}"
        folder.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            ds.save_as(folder / f"{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
        first = datasets[0]
        studies.append(
            {
                "folder": folder.name,
                "kind": p.kind,
                "present": bool(lesions),
                "study_uid": str(first.StudyInstanceUID),
                "series_uid": str(first.SeriesInstanceUID),
                "modality": str(first.Modality),
                "transfer_syntax": str(first.file_meta.TransferSyntaxUID),
                "body_part_tag": first.get("BodyPartExamined"),
                "instances": len(datasets),
                "pixel_sha256": pixel_hash(datasets),
                "findings": [lesion.as_json() | {"sop_instance_uids": _sops(datasets, lesion)} for lesion in lesions],
                **extra,
            }
        )
        if progress is not None:
            progress()
    manifest = {"generator": "triage samples generate", "seed": seed, "n": n, "kinds": list(kinds), "studies": studies}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _sops(datasets: Sequence[Dataset], lesion: Lesion) -> list[str]:
    """SOP Instance UIDs of the slices a lesion spans (instance k+1 is slice k)."""
    first, last = lesion.slices
    return [str(ds.SOPInstanceUID) for ds in datasets if first <= int(ds.InstanceNumber) - 1 <= last]


def iter_manifest(folder: Path) -> Iterator[dict[str, object]]:
    yield from json.loads((folder / MANIFEST).read_text())["studies"]


def radiograph_to_dicom(
    phantom: XRPhantom,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    voi: str = "window",
    meta: StudyMeta | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A CR or DX dataset of ``phantom`` with its pixel spacing, body part and a fitting description.

    ``meta`` defaults to a StudyMeta with Body Part Examined (PS3.16 Annex L
    defined terms: CHEST, LEG, FOREARM, FEMUR) and a study description such as
    "XR CHEST PA" or "XR TIBIA FIBULA 2V".
    """
    key = "chest" if phantom.body_part == "CHEST" else str(phantom.notes.get("bone", "tibia_fibula"))
    part, description, view = STUDY[key]
    meta = meta or StudyMeta(patient_name=f"PHANTOM^{part}", study_description=description, series_description=view, body_part=part)
    return radiograph_dataset(
        phantom.image,
        modality=modality,
        pixel_spacing_mm=phantom.pixel_spacing_mm,
        photometric=photometric,
        voi=voi,
        view_position=view,
        meta=meta,
        transfer_syntax=transfer_syntax,
    )
