"""A stored series' pixels for a viewer (the worklist's preview): what the tui reads through triage.

The tui never reads DICOM itself (dependencies point one way: ``tui -> triage ->
dicom_io``); it asks for a series' pixels here and windows and draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicom_io.pixels import PixelDataError, load_radiograph, load_volume
from triage.reading.views import SeriesImages

# Series whose pixels form a volume (slices) and series that are one projection image.
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "MG", "RG", "DR", "PX", "IO"})


@dataclass(frozen=True)
class SeriesPixels:
    """A series' pixels, ready to display slice by slice."""

    series_uid: str
    modality: str
    values: np.ndarray  # (slices, rows, cols) float32: HU (CT), rescaled values (MR...), [0, 1] (radiograph)
    sop_instance_uids: tuple[str, ...]  # one per slice, volume order
    radiograph: bool  # values already a [0, 1] display image: windows do not apply
    pixel_spacing_mm: tuple[float, float] | None  # (row, col)
    display_range: tuple[float, float]  # the auto window of non-CT volumes: 1st and 99th percentile
    warnings: tuple[str, ...] = field(default=())

    @property
    def n_slices(self) -> int:
        return int(self.values.shape[0])

    @property
    def hu_windows(self) -> bool:
        """Whether the HU window presets apply (CT only: radiographs are already windowed, MR has no HU)."""
        return not self.radiograph and self.modality == "CT"

    @property
    def pixel_aspect(self) -> float:
        """Row spacing / column spacing (1 when unknown)."""
        if not self.pixel_spacing_mm or min(self.pixel_spacing_mm) <= 0:
            return 1.0
        return self.pixel_spacing_mm[0] / self.pixel_spacing_mm[1]


def read_series_pixels(series: SeriesImages) -> SeriesPixels:
    """Read a series' pixels for the preview.

    CT/MR (and other volume modalities): :func:`dicom_io.pixels.load_volume`,
    slices in volume order, the order the detectors' ``slice_index`` uses.
    CR/DX/MG: :func:`dicom_io.pixels.load_radiograph` of the first file, a
    [0, 1] image already through its own VOI LUT.

    Raises
    ------
    PixelDataError
        With a one-line message: deleted by retention, no files, not an image series, or unreadable pixels.
    """
    modality = (series.modality or "").upper()
    if series.pixels_purged_at is not None:
        raise PixelDataError(f"pixels deleted by retention on {series.pixels_purged_at:%Y-%m-%d}")
    if not series.files:
        raise PixelDataError(f"series {series.series_uid} has no stored files to show")
    if modality and modality not in VOLUME_MODALITIES | RADIOGRAPH_MODALITIES:
        raise PixelDataError(f"series {series.series_uid} ({modality}) is not an image series the preview shows")
    # Without a modality, one file is taken for a projection image and several for a volume.
    radiograph = modality in RADIOGRAPH_MODALITIES or (not modality and len(series.files) == 1)
    if radiograph:
        image = load_radiograph(series.files[0])
        values = image.image[None, :, :].astype(np.float32)
        return SeriesPixels(
            series_uid=series.series_uid,
            modality=modality or "?",
            values=values,
            sop_instance_uids=(image.sop_instance_uid,),
            radiograph=True,
            pixel_spacing_mm=image.pixel_spacing_mm,
            display_range=(0.0, 1.0),
        )
    volume = load_volume(series.files)
    lo, hi = (float(v) for v in np.percentile(volume.hu, (1.0, 99.0)))
    return SeriesPixels(
        series_uid=series.series_uid,
        modality=modality or "?",
        values=volume.hu,
        sop_instance_uids=tuple(volume.sop_instance_uids),
        radiograph=False,
        pixel_spacing_mm=(volume.spacing_mm[1], volume.spacing_mm[2]),
        display_range=(lo, hi),
        warnings=tuple(volume.warnings),
    )


def is_image_series(series: SeriesImages) -> bool:
    """Whether the preview can try to show this series (it has files and an image modality)."""
    modality = (series.modality or "").upper()
    return bool(series.files) and (modality in VOLUME_MODALITIES | RADIOGRAPH_MODALITIES or not modality)
