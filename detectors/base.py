"""The detector interface: what goes in (a series as arrays), what comes out (typed findings).

A :class:`Detector` is split the way the inference engine needs it:
``prepare`` turns a series into fixed-size network inputs (pure NumPy, run on a
preprocessing thread), the ``module`` maps a batch of inputs to raw logit
heatmaps (run batched on the device), and ``postprocess`` turns a series' logits
back into a calibrated :class:`Finding` with regions in the series' own pixel
coordinates (pure NumPy again). ``detect`` chains the three for one series.

This module imports torch only for typing the module; findings are plain data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from detectors.routing import FindingKind

if TYPE_CHECKING:
    import torch

    from dicom_io.pixels import Radiograph, Volume


class Family(str, Enum):
    """The kind of image a detector reads."""

    CT = "CT"  # a volume in HU
    RADIOGRAPH = "radiograph"  # one projection image, [0, 1], bright = dense


class DetectionError(Exception):
    """One series could not be scored; the message says why (the engine goes on)."""


@dataclass(frozen=True)
class SeriesArrays:
    """A series as a detector sees it: pixels, geometry and the UIDs to point back at.

    ``pixels`` is (slices, rows, cols) float32: HU for CT; a single slice in
    [0, 1] with bright = dense for radiographs. ``spacing_mm`` is (slice, row,
    col); a radiograph's slice spacing is 0. ``sop_instance_uids`` has one
    entry per slice. ``notes`` are what a reader of the result must know about
    how the series was read (an estimated pixel spacing); they are copied into
    every :class:`Finding` made from it.
    """

    series_uid: str
    family: Family
    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3:
            raise ValueError(f'Argument "pixels" must be (slices, rows, cols), got shape {self.pixels.shape}')
        if len(self.sop_instance_uids) != self.pixels.shape[0]:
            raise ValueError(
                f'Argument "sop_instance_uids" must have one UID per slice ({self.pixels.shape[0]}), got {len(self.sop_instance_uids)}'
            )
        if self.family is Family.RADIOGRAPH and self.pixels.shape[0] != 1:
            raise ValueError(f'Argument "pixels" must hold one slice for a radiograph, got {self.pixels.shape[0]}')

    @classmethod
    def from_volume(cls, volume: Volume) -> SeriesArrays:
        return cls(
            series_uid=volume.series_uid,
            family=Family.CT,
            pixels=np.asarray(volume.hu, dtype=np.float32),
            spacing_mm=cast(tuple[float, float, float], tuple(float(s) for s in volume.spacing_mm)),  # 3 in, 3 out
            sop_instance_uids=tuple(volume.sop_instance_uids),
            notes=tuple(volume.notes),
        )

    @classmethod
    def from_radiograph(cls, radiograph: Radiograph, series_uid: str) -> SeriesArrays:
        notes = tuple(radiograph.notes)
        if radiograph.pixel_spacing_mm is None:
            # load_radiograph always sets a spacing; a Radiograph built elsewhere
            # may not. Assume a typical digital detector, and say so.
            notes += ("pixel spacing assumed 0.4 mm (none given); sizes approximate",)
        row, col = radiograph.pixel_spacing_mm or (0.4, 0.4)
        return cls(
            series_uid=series_uid,
            family=Family.RADIOGRAPH,
            pixels=np.asarray(radiograph.image, dtype=np.float32)[None],
            spacing_mm=(0.0, float(row), float(col)),
            sop_instance_uids=(radiograph.sop_instance_uid,),
            notes=notes,
        )


@dataclass(frozen=True)
class ModelIdentity:
    """Exactly which model produced a finding: recorded with every inference."""

    name: str
    version: str
    sha256: str  # of the weights file as shipped

    def __str__(self) -> str:
        return f"{self.name} {self.version} (sha256 {self.sha256[:12]})"


@dataclass(frozen=True)
class Region:
    """Where a detector saw evidence, in the series' own pixel coordinates.

    ``box`` is ``(row0, col0, row1, col1)``, half-open: the region's bounding
    box over all the slices it spans, ``slices`` (first, last, inclusive);
    ``slice_index`` is its strongest slice. ``probability`` is the calibrated score of this
    region alone. ``diameter_mm`` is the estimated largest in-plane diameter
    (nodules).
    """

    series_uid: str
    sop_instance_uid: str
    slice_index: int
    slices: tuple[int, int]
    box: tuple[int, int, int, int]
    probability: float
    diameter_mm: float | None = None


@dataclass(frozen=True)
class Finding:
    """A detector's suggestion for one series: never a diagnosis.

    ``probability`` is calibrated (on the detector's validation set) and is the
    study-level score; ``urgent`` compares it with the detector's operating
    point, chosen for sensitivity at least 0.95 on that set. ``notes`` come
    from the series (:attr:`SeriesArrays.notes`): e.g. that its pixel spacing
    was estimated, so sizes and the detector's resampling are approximate.
    """

    kind: FindingKind
    series_uid: str
    probability: float
    operating_point: float
    regions: tuple[Region, ...]
    model: ModelIdentity
    detector: str  # the detector's name, e.g. "bleed-ct"
    notes: tuple[str, ...] = ()

    @property
    def urgent(self) -> bool:
        return self.probability >= self.operating_point

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind.value
        out["urgent"] = self.urgent
        out["notes"] = list(self.notes)
        return out


@dataclass
class Prepared:
    """A series made ready for a network: fixed-size items plus what maps outputs back.

    ``items`` is (n, channels, height, width) float32; every item of a detector
    has the same shape so that items of different series batch together.
    ``context`` is the detector's own bookkeeping (crop offsets, scale, ...).
    """

    series: SeriesArrays
    items: np.ndarray
    context: dict[str, Any] = field(default_factory=dict)


class Detector(ABC):
    """One model for one finding kind on one image family."""

    name: str
    kind: FindingKind
    family: Family
    identity: ModelIdentity
    module: torch.nn.Module  # raw logits: (batch, 1, height / stride, width / stride)
    item_shape: tuple[int, int, int]  # (channels, height, width) of one input item

    @abstractmethod
    def prepare(self, series: SeriesArrays) -> Prepared:
        """Series -> network inputs. Pure; raises DetectionError for unusable input."""

    @abstractmethod
    def postprocess(self, prepared: Prepared, logits: np.ndarray) -> Finding:
        """Raw logits (n, 1, h, w) for all of a series' items -> a calibrated Finding."""

    def detect(self, series: SeriesArrays, batch_size: int = 8) -> Finding:
        """Score one series on the module's device, unbatched across series (tests, tools)."""
        import torch

        prepared = self.prepare(series)
        # A TorchScript model may hold no parameters; then it runs where its buffers are, or on the CPU.
        tensor: torch.Tensor | None = next(iter(self.module.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.module.buffers()), None)
        device = tensor.device if tensor is not None else torch.device("cpu")
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(prepared.items), batch_size):
                batch = torch.from_numpy(prepared.items[start : start + batch_size]).to(device)
                outputs.append(self.module(batch).float().cpu().numpy())
        logits = np.concatenate(outputs) if outputs else np.zeros((0, 1, 1, 1), np.float32)
        if not np.isfinite(logits).all():
            raise DetectionError(f"{self.name}: the network produced non-finite values")
        return self.postprocess(prepared, logits)
