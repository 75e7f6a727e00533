"""Writing CT image series as proper DICOM (CT Image Storage, PS3.3 A.3).

Used by the benchmarks, the tests and the sample studies: a HU volume plus
geometry and study metadata in, Part 10 files out, with Image Position and
Orientation (Patient), Pixel Spacing, Slice Thickness and Rescale
Slope/Intercept set so readers can rebuild the volume in HU.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

# Our UID root for generated objects (pydicom's, plus a suffix of our own).
UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass
class StudyMeta:
    """Patient and study attributes shared by every instance of a study."""

    patient_id: str = "PHANTOM001"
    patient_name: str = "PHANTOM^HEAD"
    patient_sex: str = "O"
    patient_age: str = "060Y"
    accession_number: str = "ACC0001"
    study_description: str = "CT HEAD WO CONTRAST"
    series_description: str = "AXIAL 5MM"
    body_part: str | None = "HEAD"
    order_priority: str | None = "ROUTINE"  # Requested Procedure Priority (0040,1003)
    manufacturer: str = "TRIAGE PHANTOM"
    model: str = "SYNTH-1"
    institution: str = "Synthetic General Hospital"
    study_uid: str = field(default_factory=lambda: generate_uid(UID_ROOT))
    series_uid: str = field(default_factory=lambda: generate_uid(UID_ROOT))
    frame_of_reference_uid: str = field(default_factory=lambda: generate_uid(UID_ROOT))
    study_datetime: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1, 8, 0))


def ct_datasets(
    hu_volume: np.ndarray,  # (slices, rows, cols), HU
    *,
    pixel_spacing_mm: tuple[float, float] = (0.5, 0.5),
    slice_thickness_mm: float = 5.0,
    meta: StudyMeta | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Iterator[Dataset]:
    """Yield one CT Image Storage dataset per slice (file meta included)."""
    meta = meta or StudyMeta()
    intercept = -1024.0
    stored = np.clip(np.rint(hu_volume - intercept), 0, 4095).astype(np.uint16)
    n, rows, cols = stored.shape
    for k in range(n):
        ds = _new_dataset(CTImageStorage, "CT", meta, k)
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = meta.frame_of_reference_uid
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-cols * pixel_spacing_mm[1] / 2, -rows * pixel_spacing_mm[0] / 2, k * slice_thickness_mm]
        ds.SliceLocation = k * slice_thickness_mm
        ds.SliceThickness = slice_thickness_mm
        ds.PixelSpacing = list(pixel_spacing_mm)
        ds.KVP, ds.XRayTubeCurrent = 120, 250
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.PixelData = stored[k].tobytes()
        _encode(ds, transfer_syntax)
        yield ds


def _new_dataset(sop_class: str, modality: str, meta: StudyMeta, index: int = 0) -> Dataset:
    """A dataset with file meta, UIDs, and the patient, study and series attributes.

    The SOP Instance UID derives from the series UID and ``index``, so a series
    written twice with the same StudyMeta gets the same UIDs (reproducible samples).
    """
    sop_uid = generate_uid(UID_ROOT, entropy_srcs=[meta.series_uid, str(index)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = meta.study_uid, meta.series_uid
    ds.PatientID, ds.PatientName = meta.patient_id, meta.patient_name
    ds.PatientSex, ds.PatientAge = meta.patient_sex, meta.patient_age
    ds.AccessionNumber = meta.accession_number
    ds.StudyID = "1"
    date, time = meta.study_datetime.strftime("%Y%m%d"), meta.study_datetime.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.StudyDescription, ds.SeriesDescription = meta.study_description, meta.series_description
    ds.Modality = modality
    if meta.body_part:
        ds.BodyPartExamined = meta.body_part
    if meta.order_priority:
        ds.RequestedProcedurePriority = meta.order_priority
    ds.Manufacturer, ds.ManufacturerModelName = meta.manufacturer, meta.model
    ds.InstitutionName = meta.institution
    ds.ReferringPhysicianName = ""
    return ds


def _encode(ds: Dataset, transfer_syntax: str) -> None:
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    elif transfer_syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif transfer_syntax != ExplicitVRLittleEndian:
        raise ValueError(f'Argument "transfer_syntax" must be Explicit VR LE, RLE or JPEG 2000 lossless, got {transfer_syntax}')


CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def radiograph_dataset(
    image: np.ndarray,  # (rows, cols), in [0, 1], bright = dense (log-attenuation-like)
    *,
    modality: str = "DX",
    pixel_spacing_mm: float = 0.2,
    photometric: str = "MONOCHROME2",
    voi: str = "window",
    view_position: str = "PA",
    meta: StudyMeta | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One CR Image or DX For Presentation dataset (PS3.3 A.2, A.26), 12-bit.

    ``photometric`` MONOCHROME1 stores inverted values (bright = low), as many
    CR/DX devices do; ``voi`` is "window" (Window Center/Width), "lut" (a VOI
    LUT Sequence, a gamma curve) or "none".
    """
    if modality not in ("CR", "DX"):
        raise ValueError(f'Argument "modality" must be CR or DX, got {modality!r}')
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f'Argument "photometric" must be MONOCHROME1 or MONOCHROME2, got {photometric!r}')
    if voi not in ("window", "lut", "none"):
        raise ValueError(f'Argument "voi" must be "window", "lut" or "none", got {voi!r}')
    meta = meta or StudyMeta(study_description="XR CHEST PA", series_description="PA", body_part="CHEST")
    stored = np.rint(np.clip(image, 0.0, 1.0) * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    ds = _new_dataset(CR_IMAGE_STORAGE if modality == "CR" else DX_FOR_PRESENTATION, modality, meta)
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"] if view_position in ("PA", "AP") else ["A", "F"]
    if modality == "CR":
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    else:
        ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME1" else 1
        ds.DetectorType = "SCINTILLATOR"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if voi == "window":
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    elif voi == "lut":
        lut = Dataset()
        lut.LUTDescriptor = [4096, 0, 12]
        # A gentle gamma curve: monotonic, so reading order is kept.
        curve = np.rint(4095 * (np.arange(4096) / 4095) ** 0.8).astype("<u2")
        lut.LUTData = curve.tobytes()  # OW
        lut.LUTExplanation = "GAMMA 0.8"
        ds.VOILUTSequence = [lut]
    ds.PixelData = stored.tobytes()
    _encode(ds, transfer_syntax)
    return ds


def simple_head_volume(slices: int = 24, size: int = 256, seed: int = 0, noise_hu: float = 8.0) -> np.ndarray:
    """A plain head-like HU volume (air, skull ring, brain) with noise.

    A stand-in for benchmarks and ingest tests, where only realistic sizes and
    value ranges matter; the detectors' phantoms live in ``detectors``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    vol = np.full((slices, size, size), -1000.0, dtype=np.float32)
    for k in range(slices):
        scale = 0.75 + 0.2 * np.sin(np.pi * (k + 1) / (slices + 1))
        a, b = 0.36 * size * scale, 0.44 * size * scale
        r = ((xx - c) / a) ** 2 + ((yy - c) / b) ** 2
        vol[k][r <= 1.0] = 1200.0  # skull
        vol[k][r <= 0.85] = 35.0  # brain
    vol += rng.normal(0.0, noise_hu, vol.shape).astype(np.float32)
    return vol


def write_datasets(datasets: Iterator[Dataset], out_dir: Path) -> list[Path]:
    """Save each dataset as ``<out_dir>/<InstanceNumber:04d>.dcm``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
