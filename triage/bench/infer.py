"""``triage bench infer``: detector throughput, batched vs batch 1, and a head CT's latency.

Everything is measured in one run, on one device, with one detector:

1. Throughput in slices (items) per second through :class:`InferenceEngine`,
   prepare and postprocess included as in production, on synthetic series
   generated before timing (random HU of the detector's usual size):

   - baseline: one series at a time, ``max_batch=1``;
   - the same series submitted together, still ``max_batch=1``: what
     overlapping preprocessing with compute alone gives;
   - the same series submitted together with ``max_batch=B``: dynamic batching.

2. The network's achieved GFLOP/s during the batched run (FLOPs per item from
   :func:`detectors.nets.count_flops`, over the engine's time in module calls),
   as a fraction of a plain matmul's rate measured right after on the same
   device and dtype: fp32 on CPU, the engine's autocast dtype on CUDA.

3. For ``bleed-ct``: the issue's latency target, "a 40-slice 512x512 head CT
   scored in at most 2 s on 2 CPU cores", end to end from DICOM files (read,
   prepare, network, postprocess) through the same engine, a few times.

Weights do not change the work, so when a shipped card is missing (training
still running) the bench uses an untrained network of the card's architecture
and says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from triage.bench.common import load_average
from triage.config import available_cores
from triage.errors import TriageError

# torch, NumPy and the detectors are imported where they are used: `triage`
# builds every subcommand's parser (add_arguments) on each start, and
# `triage --help` should not wait for torch.
if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np
    import torch

    from detectors.base import Detector, Finding, SeriesArrays
    from detectors.engine import EngineStats, InferenceEngine

DETECTORS = ("bleed-ct", "nodule-ct", "nodule-xr", "fracture-xr")  # detectors.tasks.TASKS (checked by a test)
LATENCY_DETECTOR = "bleed-ct"
LATENCY_BUDGET_S = 2.0  # the target, on 2 CPU cores
CT_SLICES = (24, 40)  # slices per synthetic CT series, drawn in this range
CT_MATRIX = 512
XR_PITCH_MM = 0.2  # a typical CR/DX detector element: radiographs of ~2000 pixels a side
MAX_DISTINCT_VOLUMES = 4  # series beyond these share pixel arrays (prepare does not cache: same work)
DEFAULT_SERIES = {"cpu": 8, "cuda": 64}  # ~10-20 s in all on 2 CPU cores; the GPU needs more to fill
DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 64}
PEAK_MIN_SECONDS = 1.0  # keep repeating the matmul at least this long
PEAK_SHAPES = {"cpu": 2048, "cuda": 8192}  # n for an n x n @ n x n matmul

SEQUENTIAL, CONCURRENT, BATCHED = "batch 1, one series at a time", "batch 1, series concurrent", "dynamic batching"

Progress = Callable[[str], None]


# -- what is run and what comes out --------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """What to measure; ``None`` picks the device's default.

    ``slices``, ``matrix`` and the ``latency_*`` sizes exist so that tests can
    run the whole bench on tiny inputs.
    """

    device: str = "auto"
    detector: str = "bleed-ct"
    series: int | None = None
    max_batch: int | None = None
    max_wait_ms: float = 10.0
    threads: int | None = None  # torch CPU threads; the engine's default is the CPUs we may use
    latency_runs: int = 3
    slices: tuple[int, int] = CT_SLICES  # (fewest, most) per synthetic CT series
    matrix: int | None = None  # CT rows = cols; radiograph rows (default: XR_PITCH_MM over the card's field)
    latency_slices: int = 40
    latency_matrix: int = 512
    peak_n: int | None = None  # matmul size (default: PEAK_SHAPES for the device)
    peak_seconds: float = PEAK_MIN_SECONDS
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`TriageError` naming the first bad option."""
        if self.series is not None and self.series < 1:
            raise TriageError(f"--series must be at least 1, got {self.series}")
        if self.max_batch is not None and self.max_batch < 1:
            raise TriageError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise TriageError(f"--max-wait-ms must be non-negative, got {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise TriageError(f"--threads must be at least 1, got {self.threads}")
        if self.latency_runs < 1:
            raise TriageError(f"--latency-runs must be at least 1, got {self.latency_runs}")
        if not 1 <= self.slices[0] <= self.slices[1]:
            raise TriageError(f"slices must be (fewest, most) with 1 <= fewest <= most, got {self.slices}")


@dataclass(frozen=True)
class Throughput:
    """One way of scoring the same series: how long it took and what the engine did."""

    mode: str
    max_batch: int
    series: int
    items: int
    seconds: float  # first submit to last result
    batches: int
    mean_batch: float
    compute_s: float  # time in module calls (EngineStats.compute_s)
    failed: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def device_busy(self) -> float:
        """Share of the wall time the device spent in module calls."""
        return self.compute_s / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class MatmulPeak:
    n: int
    dtype: str
    gflops: float  # best repeat


@dataclass(frozen=True)
class Latency:
    slices: int
    matrix: int
    runs_s: tuple[float, ...]
    budget_s: float
    torch_threads: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)

    @property
    def budget_ratio(self) -> float:
        return self.median_s / self.budget_s


@dataclass(frozen=True)
class InferBenchResult:
    """Every figure of one run; ratios are computed from the measurements, never stored."""

    device: str
    dtype: str
    torch_threads: int
    cpus: int
    detector: str
    weights: str  # "shipped <sha256 prefix>" or "untrained"
    item_shape: tuple[int, int, int]
    flops_per_item: float
    runs: tuple[Throughput, ...]  # SEQUENTIAL, CONCURRENT, BATCHED
    peak: MatmulPeak
    latency: Latency | None
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def run(self, mode: str) -> Throughput:
        return next(r for r in self.runs if r.mode == mode)

    @property
    def batching_speedup(self) -> float:
        """Dynamic batching's items/s over the batch-1, one-at-a-time baseline."""
        base = self.run(SEQUENTIAL).items_per_s
        return self.run(BATCHED).items_per_s / base if base > 0 else 0.0

    @property
    def overlap_speedup(self) -> float:
        """Batch 1 with the series submitted together over the baseline: what pipelining alone gives."""
        base = self.run(SEQUENTIAL).items_per_s
        return self.run(CONCURRENT).items_per_s / base if base > 0 else 0.0

    @property
    def network_gflops(self) -> float:
        """The network's rate while it ran during the batched run."""
        b = self.run(BATCHED)
        return self.flops_per_item * b.items / b.compute_s / 1e9 if b.compute_s > 0 else 0.0

    @property
    def peak_fraction(self) -> float:
        return self.network_gflops / self.peak.gflops if self.peak.gflops > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        runs = []
        for r in self.runs:
            runs.append({**asdict(r), "items_per_s": r.items_per_s, "device_busy": r.device_busy})
        latency = None
        if self.latency is not None:
            latency = {**asdict(self.latency), "median_s": self.latency.median_s, "budget_ratio": self.latency.budget_ratio}
        return {
            "device": self.device,
            "dtype": self.dtype,
            "torch_threads": self.torch_threads,
            "cpus": self.cpus,
            "detector": {
                "name": self.detector,
                "weights": self.weights,
                "item_shape": list(self.item_shape),
                "gflop_per_item": self.flops_per_item / 1e9,
            },
            "throughput": runs,
            "batching_speedup": self.batching_speedup,
            "overlap_speedup": self.overlap_speedup,
            "network": {
                "gflops": self.network_gflops,
                "peak_gflops": self.peak.gflops,
                "peak_fraction": self.peak_fraction,
                "matmul_n": self.peak.n,
                "matmul_dtype": self.peak.dtype,
            },
            "latency": latency,
            "notes": list(self.notes),
            "errors": list(self.errors),
        }


# -- the bench ----------------------------------------------------------------------------------
def run_infer_bench(config: BenchConfig, detector: Detector | None = None, progress: Progress | None = None) -> InferBenchResult:
    """Measure throughput, network efficiency and (for bleed-ct) latency; see the module docstring.

    Parameters
    ----------
    config
        What to run.
    detector
        Use this detector instead of ``config.detector``'s shipped one (tests
        pass tiny networks). The latency part runs when its name is bleed-ct.
    progress
        Called with a line before each stage (the CLI prints them on stderr).

    Raises
    ------
    TriageError
        Bad options or an unavailable device.
    """
    import torch

    from detectors.engine import InferenceEngine, pick_device
    from detectors.nets import count_flops

    config.check()
    say = progress or (lambda _line: None)
    try:
        device = pick_device(config.device)
    except ValueError as exc:
        raise TriageError(f"--device: {exc}") from None
    notes: list[str] = []
    load = load_average()
    if device.type == "cpu" and load > 0.5:
        # Read before we start, so it is other processes' load, not ours.
        notes.append(f"other work on the CPUs: load average {load:.1f} before the run ({available_cores()} CPUs); figures are noisy")
    if detector is None:
        detector, weights = _detector(config.detector, notes)
    else:
        weights = "given by the caller"
    series_n = config.series or DEFAULT_SERIES.get(device.type, DEFAULT_SERIES["cpu"])
    max_batch = config.max_batch or DEFAULT_MAX_BATCH.get(device.type, DEFAULT_MAX_BATCH["cpu"])
    flops = count_flops(detector.module, detector.item_shape)

    say(f"generating {series_n} synthetic series for {detector.name}")
    series = synthetic_series(detector, series_n, config)
    warmup = synthetic_series(detector, 1, config, seed_offset=10_000)[0]
    engine_args: dict[str, Any] = {"device": device, "max_wait_ms": config.max_wait_ms, "num_threads": config.threads}
    errors: list[str] = []
    runs = []
    for mode in (SEQUENTIAL, CONCURRENT):
        say(f"scoring {series_n} series: {mode}")
        with InferenceEngine(max_batch=1, **engine_args) as engine:
            runs.append(_throughput(engine, detector, series, warmup, mode, errors))
    say(f"scoring {series_n} series: {BATCHED} (max_batch {max_batch})")
    with InferenceEngine(max_batch=max_batch, **engine_args) as engine:
        runs.append(_throughput(engine, detector, series, warmup, BATCHED, errors))
        # The peak runs under this engine's thread settings and dtype, with the engine idle.
        dtype = engine.amp_dtype or torch.float32
        say(f"matmul peak on {device} ({_dtype_name(dtype)})")
        peak = matmul_peak(device, dtype, config.peak_n, config.peak_seconds)
        latency = None
        if detector.name == LATENCY_DETECTOR:
            latency = _latency(engine, detector, config, say, errors)
            if device.type != "cpu" or available_cores() != 2:
                notes.append(
                    f"latency: the target is for 2 CPU cores; this run had {device} and {available_cores()} CPUs "
                    "(`taskset -c 0,1 triage bench infer --device cpu` measures the target's setting)"
                )
        else:
            notes.append(f"latency: only measured for {LATENCY_DETECTOR} (the issue's head CT target)")
    return InferBenchResult(
        device=str(device),
        dtype=_dtype_name(dtype),
        torch_threads=torch.get_num_threads(),
        cpus=available_cores(),
        detector=detector.name,
        weights=weights,
        item_shape=cast(tuple[int, int, int], tuple(detector.item_shape)),
        flops_per_item=flops,
        runs=tuple(runs),
        peak=peak,
        latency=latency,
        notes=tuple(notes),
        errors=tuple(errors),
    )


def _detector(name: str, notes: list[str]) -> tuple[Detector, str]:
    """The shipped detector, or an untrained network of its card when the card is not there (yet)."""
    from detectors.heatmap import HeatmapDetector, build_module, load_detector
    from detectors.registry import MODELS_DIR
    from detectors.spec import CardError
    from detectors.tasks import TASKS

    if name not in TASKS:
        raise TriageError(f"--detector must be one of {', '.join(TASKS)}, got {name!r}")
    card = MODELS_DIR / f"{name}.toml"
    why = f"no card {card}"
    if card.is_file():
        try:
            det = load_detector(card, device="cpu")
            return det, f"shipped {det.identity.sha256[:12]}"
        except CardError as exc:
            why = str(exc)
    notes.append(f"{name}: {why}; using an untrained network of the same architecture (same work)")
    spec = TASKS[name].spec
    return HeatmapDetector(spec, build_module(spec), sha256="0" * 64), "untrained"


def synthetic_series(detector: Detector, n: int, config: BenchConfig, seed_offset: int = 0) -> list[SeriesArrays]:
    """``n`` series of random pixels, of a size this detector usually sees.

    CT: ``config.slices`` slices of ``config.matrix`` (default 512) pixels a
    side, HU around soft tissue; radiographs: one image at a 0.2 mm detector
    pitch. The pixel spacing makes the image cover the card's field of view,
    so that preprocessing resamples as it does for real studies. At most
    :data:`MAX_DISTINCT_VOLUMES` distinct arrays; the rest share them.
    """
    import numpy as np

    from detectors.base import Family, SeriesArrays

    spec_like = getattr(detector, "spec", None)
    rng = np.random.default_rng([config.seed, seed_offset])
    _, height, width = detector.item_shape
    # The card's field of view in mm; without a card (a foreign detector) assume 1 mm per item pixel.
    item_mm = float(spec_like.input.spacing_mm) if spec_like is not None else 1.0
    out: list[SeriesArrays] = []
    volumes: list[np.ndarray] = []
    for i in range(n):
        uid = f"2.25.{config.seed}{seed_offset + i + 1:06d}"
        if detector.family is Family.CT:
            rows = cols = config.matrix or CT_MATRIX
            if len(volumes) < MAX_DISTINCT_VOLUMES:
                slices = int(rng.integers(config.slices[0], config.slices[1] + 1))
                volumes.append(_anatomy_volume(detector, config.seed + i, slices, rows))
            pixels = volumes[i % len(volumes)]
            spacing = (5.0, height * item_mm / rows, width * item_mm / cols)
        else:
            rows = config.matrix or round(height * item_mm / XR_PITCH_MM)
            cols = max(1, round(rows * width / height))
            if len(volumes) < MAX_DISTINCT_VOLUMES:
                volumes.append(_anatomy_radiograph(detector, config.seed + i, rows, cols))  # [0, 1], bright = dense
            pixels = volumes[i % len(volumes)]
            spacing = (0.0, height * item_mm / rows, width * item_mm / cols)
        uids = tuple(f"{uid}.{k + 1}" for k in range(pixels.shape[0]))
        out.append(SeriesArrays(uid, detector.family, pixels, spacing, uids))
    return out


def _anatomy_volume(detector: Detector, seed: int, slices: int, matrix: int) -> np.ndarray:
    """A phantom of the detector's anatomy: detectors bound their regions by anatomy, which noise lacks."""
    from scipy import ndimage

    from detectors.phantoms.chest_ct import chest_ct
    from detectors.phantoms.head_ct import head_ct
    from detectors.routing import FindingKind

    make = chest_ct if detector.kind is FindingKind.NODULE else head_ct
    # The phantoms come at 256 or 512; other matrices (tiny ones in tests) are resampled in-plane.
    hu = make(seed, slices=slices, matrix=matrix if matrix in (256, 512) else 256).hu
    if hu.shape[1] != matrix:
        hu = ndimage.zoom(hu, (1.0, matrix / hu.shape[1], matrix / hu.shape[2]), order=1)
    return hu.astype("float32")


def _anatomy_radiograph(detector: Detector, seed: int, rows: int, cols: int) -> np.ndarray:
    from scipy import ndimage

    from detectors.phantoms.radiographs import chest_radiograph, extremity_radiograph
    from detectors.routing import FindingKind

    make = chest_radiograph if detector.kind is FindingKind.NODULE else extremity_radiograph
    image = make(seed, rows=rows).image
    zoom = (rows / image.shape[0], cols / image.shape[1])
    return ndimage.zoom(image, zoom, order=1)[None].astype("float32")


def _throughput(
    engine: InferenceEngine, detector: Detector, series: Sequence[SeriesArrays], warmup: SeriesArrays, mode: str, errors: list[str]
) -> Throughput:
    # Warm-up: the first calls pay for module placement and (oneDNN, cuDNN) kernel selection.
    _collect([engine.submit(detector, warmup)], errors)
    before = engine.stats()
    started = time.perf_counter()
    if mode == SEQUENTIAL:
        failed = sum(_collect([engine.submit(detector, s)], errors) for s in series)
    else:
        # submit blocks while the engine holds max_series_in_flight series: the production back-pressure.
        failed = _collect([engine.submit(detector, s) for s in series], errors)
    seconds = time.perf_counter() - started
    d = _stats_delta(before, engine.stats())
    return Throughput(
        mode=mode,
        max_batch=engine.max_batch,
        series=len(series),
        items=d.items,
        seconds=seconds,
        batches=d.batches,
        mean_batch=d.mean_batch_size,
        compute_s=d.compute_s,
        failed=failed,
    )


def _collect(futures: Sequence[Future[Finding]], errors: list[str]) -> int:
    """Wait for every Future; returns how many failed (their messages go to ``errors``)."""
    from detectors.base import DetectionError

    failed = 0
    for future in futures:
        try:
            future.result()
        except DetectionError as exc:
            failed += 1
            errors.append(str(exc))
    return failed


def _stats_delta(before: EngineStats, after: EngineStats) -> EngineStats:
    from detectors.engine import EngineStats

    sizes = {k: v - before.batch_sizes.get(k, 0) for k, v in after.batch_sizes.items()}
    return EngineStats(
        batches=after.batches - before.batches,
        items=after.items - before.items,
        series_ok=after.series_ok - before.series_ok,
        series_failed=after.series_failed - before.series_failed,
        batch_sizes={k: v for k, v in sizes.items() if v},
        peak_queued_items=after.peak_queued_items,
        compute_s=after.compute_s - before.compute_s,
    )


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, min_seconds: float = PEAK_MIN_SECONDS) -> MatmulPeak:
    """GFLOP/s of the best of repeated ``n x n @ n x n`` matmuls on ``device`` in ``dtype``.

    The best repeat, not the mean: this is the ceiling the network is compared
    with, and on a shared machine the mean mostly measures the neighbours.
    """
    import torch

    n = n or PEAK_SHAPES.get(device.type, PEAK_SHAPES["cpu"])
    a = torch.randn(n, n, device=device, dtype=torch.float32).to(dtype)
    b = torch.randn(n, n, device=device, dtype=torch.float32).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # On a GPU one matmul is ~1 ms: time blocks of several so the clock and the sync do not count.
    per_block = 10 if device.type == "cuda" else 1
    with torch.inference_mode():
        torch.matmul(a, b)  # warm-up: allocation, kernel selection
        sync()
        best, spent, reps = 0.0, 0.0, 0
        while spent < min_seconds or reps < 3:
            started = time.perf_counter()
            for _ in range(per_block):
                torch.matmul(a, b)
            sync()
            seconds = time.perf_counter() - started
            best = max(best, 2.0 * n**3 * per_block / seconds / 1e9)
            spent, reps = spent + seconds, reps + 1
    return MatmulPeak(n=n, dtype=_dtype_name(dtype), gflops=best)


def _latency(engine: InferenceEngine, detector: Detector, config: BenchConfig, say: Progress, errors: list[str]) -> Latency | None:
    """Median end-to-end time of one head CT from DICOM files through ``engine``."""
    import torch

    from detectors.base import SeriesArrays
    from detectors.phantoms.head_ct import head_ct
    from dicom_io.pixels import load_volume
    from dicom_io.writer import ct_datasets, write_datasets

    s, m = config.latency_slices, config.latency_matrix
    say(f"writing a {s}-slice {m}x{m} head CT phantom as DICOM")
    folder = Path(tempfile.mkdtemp(prefix="triage-bench-infer-"))
    try:
        ph = head_ct(config.seed, slices=s, matrix=m)
        paths = write_datasets(ct_datasets(ph.hu, pixel_spacing_mm=ph.spacing_mm[1:], slice_thickness_mm=ph.spacing_mm[0]), folder)

        def load() -> SeriesArrays:
            return SeriesArrays.from_volume(load_volume(paths))

        say(f"scoring it from the files {config.latency_runs} times (after one warm-up)")
        runs = []
        for i in range(config.latency_runs + 1):
            started = time.perf_counter()
            failed = _collect([engine.submit(detector, load)], errors)
            if failed:
                return None
            if i:  # the first run is the warm-up
                runs.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Latency(slices=s, matrix=m, runs_s=tuple(runs), budget_s=LATENCY_BUDGET_S, torch_threads=torch.get_num_threads())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- report -------------------------------------------------------------------------------------
def format_report(result: InferBenchResult) -> str:
    """The result as the table and lines the CLI prints."""
    r = result
    c, h, w = r.item_shape
    lines = [
        f"infer bench: {r.detector} ({r.weights}), items {c}x{h}x{w}, {r.flops_per_item / 1e9:.2f} GFLOP each",
        f"device {r.device}, {r.dtype}, torch threads {r.torch_threads} of {r.cpus} CPUs",
        "",
    ]
    base = r.run(SEQUENTIAL).items_per_s
    header = ("mode", "max batch", "series", "slices", "seconds", "slices/s", "vs baseline", "mean batch", "device busy")
    rows = [header]
    for t in r.runs:
        ratio = f"{t.items_per_s / base:.2f}x" if base > 0 else "-"
        rows.append(
            (
                t.mode,
                str(t.max_batch),
                str(t.series),
                str(t.items),
                f"{t.seconds:.2f}",
                f"{t.items_per_s:.1f}",
                ratio,
                f"{t.mean_batch:.1f}",
                f"{t.device_busy:.0%}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join([row[0].ljust(widths[0])] + [cell.rjust(wd) for cell, wd in zip(row[1:], widths[1:], strict=False)]))
    lines += [
        "",
        f"dynamic batching: {r.batching_speedup:.2f}x batch-1 throughput "
        f"(of which overlapping series at batch 1: {r.overlap_speedup:.2f}x)",
        f"network: {r.network_gflops:.1f} GFLOP/s = {r.peak_fraction:.1%} of the matmul peak "
        f"({r.peak.gflops:.1f} GFLOP/s, {r.peak.n}^3 {r.peak.dtype})",
    ]
    if r.latency is not None:
        lat = r.latency
        runs = ", ".join(f"{s:.2f}" for s in lat.runs_s)
        lines.append(
            f"head CT {lat.slices}x{lat.matrix}x{lat.matrix} from DICOM: {lat.median_s:.2f} s median "
            f"= {lat.budget_ratio:.2f}x the {lat.budget_s:g} s budget ({runs} s; torch threads {lat.torch_threads})"
        )
    lines += [f"note: {note}" for note in r.notes]
    return "\n".join(lines)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``triage bench infer``."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--detector", default="bleed-ct", choices=DETECTORS, help="detector (default bleed-ct)")
    parser.add_argument("--series", type=int, help="series per mode (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--max-batch", type=int, help="the batched engine's max_batch (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="the engine's max_wait_ms (default 10)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the CPUs this process may use)")
    parser.add_argument("--latency-runs", type=int, default=3, help="timed head CT runs (default 3)")
    parser.add_argument("--json", action="store_true", help="JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments; 0 when every series was scored, 1 otherwise."""
    config = BenchConfig(
        device=args.device,
        detector=args.detector,
        series=args.series,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        latency_runs=args.latency_runs,
    )
    result = run_infer_bench(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.as_json(), indent=2) if args.json else "\n" + format_report(result))
    for error in result.errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result.errors else 0
