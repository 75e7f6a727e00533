"""``triage bench infer`` on tiny networks and inputs: structure and arithmetic, never timings."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from detectors.base import Family
from detectors.heatmap import HeatmapDetector, build_module
from detectors.tasks import TASKS
from triage.bench import infer
from triage.bench.infer import (
    BATCHED,
    CONCURRENT,
    SEQUENTIAL,
    BenchConfig,
    InferBenchResult,
    Latency,
    MatmulPeak,
    Throughput,
    format_report,
    run_infer_bench,
    synthetic_series,
)
from triage.errors import TriageError

# Every stage, tiny: 3 series of 3-5 slices 64x64, 32x32 items, a 4-slice 256 head CT, a short matmul.
TINY = BenchConfig(
    device="cpu",
    series=3,
    max_batch=4,
    slices=(3, 5),
    matrix=64,
    latency_slices=4,
    latency_matrix=256,
    latency_runs=2,
    peak_n=256,
    peak_seconds=0.05,
)


def tiny_detector(name: str = "bleed-ct") -> HeatmapDetector:
    """The task's card with a 32x32 input at 4 mm and a width-4 network: same code path, ~1000x less work."""
    spec = TASKS[name].spec
    spec = replace(spec, input=replace(spec.input, height=32, width=32, spacing_mm=4.0), network={"arch": "heatmap-unet", "width": 4})
    return HeatmapDetector(spec, build_module(spec), "0" * 64)


@pytest.fixture(scope="module")
def result() -> InferBenchResult:
    return run_infer_bench(TINY, detector=tiny_detector())


def test_every_mode_scores_every_slice(result: InferBenchResult) -> None:
    assert [r.mode for r in result.runs] == [SEQUENTIAL, CONCURRENT, BATCHED]
    items = result.runs[0].items
    assert items >= 3 * 3  # 3 series of at least 3 slices
    for r in result.runs:
        assert (r.series, r.items, r.failed) == (3, items, 0)
        assert r.seconds > 0 and r.compute_s > 0 and r.items_per_s > 0
        assert r.batches * r.max_batch >= r.items
    assert [r.max_batch for r in result.runs] == [1, 1, 4]
    assert result.run(SEQUENTIAL).mean_batch == result.run(CONCURRENT).mean_batch == 1.0
    assert result.errors == ()


def test_ratios_are_computed_from_the_measurements(result: InferBenchResult) -> None:
    seq, batched = result.run(SEQUENTIAL), result.run(BATCHED)
    assert result.batching_speedup == pytest.approx(batched.items_per_s / seq.items_per_s)
    assert result.overlap_speedup == pytest.approx(result.run(CONCURRENT).items_per_s / seq.items_per_s)
    assert result.flops_per_item > 0
    assert result.network_gflops == pytest.approx(result.flops_per_item * batched.items / batched.compute_s / 1e9)
    assert result.peak.gflops > 0 and result.peak.n == 256 and result.peak.dtype == "float32"
    assert result.peak_fraction == pytest.approx(result.network_gflops / result.peak.gflops)


def test_latency_from_dicom_for_the_head_ct_detector(result: InferBenchResult) -> None:
    lat = result.latency
    assert lat is not None
    assert (lat.slices, lat.matrix, len(lat.runs_s)) == (4, 256, 2)
    assert all(s > 0 for s in lat.runs_s) and lat.torch_threads >= 1
    assert lat.budget_ratio == pytest.approx(lat.median_s / 2.0)


def test_json_and_report_carry_every_figure(result: InferBenchResult) -> None:
    data = json.loads(json.dumps(result.as_json()))
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["torch_threads"] >= 1
    assert data["detector"]["name"] == "bleed-ct" and data["detector"]["item_shape"] == [9, 32, 32]
    assert [r["mode"] for r in data["throughput"]] == [SEQUENTIAL, CONCURRENT, BATCHED]
    for r in data["throughput"]:
        for key in ("items_per_s", "seconds", "mean_batch", "compute_s", "device_busy"):
            assert r[key] > 0, key
    assert data["batching_speedup"] > 0 and data["overlap_speedup"] > 0
    assert data["network"]["gflops"] > 0 and data["network"]["peak_gflops"] > 0
    assert 0 < data["network"]["peak_fraction"]
    assert data["latency"]["median_s"] > 0 and data["latency"]["budget_ratio"] > 0
    report = format_report(result)
    assert "x batch-1 throughput" in report
    assert "% of the matmul peak" in report
    assert "head CT 4x256x256 from DICOM" in report


def test_latency_skipped_with_a_note_for_other_detectors() -> None:
    config = replace(TINY, series=1, detector="nodule-ct")
    result = run_infer_bench(config, detector=tiny_detector("nodule-ct"))
    assert result.latency is None
    assert any("latency: only measured for bleed-ct" in n for n in result.notes)
    assert result.as_json()["latency"] is None
    assert "from DICOM" not in format_report(result)


def _run(mode: str, items: int, seconds: float, compute_s: float) -> Throughput:
    return Throughput(
        mode=mode, max_batch=1, series=2, items=items, seconds=seconds, batches=items, mean_batch=1.0, compute_s=compute_s, failed=0
    )


def test_figures_follow_the_inputs_without_running() -> None:
    result = InferBenchResult(
        device="cpu",
        dtype="float32",
        torch_threads=2,
        cpus=2,
        detector="bleed-ct",
        weights="untrained",
        item_shape=(9, 256, 256),
        flops_per_item=1e9,
        runs=(_run(SEQUENTIAL, 100, 4.0, 3.0), _run(CONCURRENT, 100, 2.0, 1.5), _run(BATCHED, 100, 1.0, 0.5)),
        peak=MatmulPeak(n=2048, dtype="float32", gflops=400.0),
        latency=Latency(slices=40, matrix=512, runs_s=(1.0, 3.0, 1.2), budget_s=2.0, torch_threads=2),
    )
    assert result.batching_speedup == pytest.approx(4.0)  # 100/s over 25/s
    assert result.overlap_speedup == pytest.approx(2.0)  # 50/s over 25/s
    assert result.network_gflops == pytest.approx(200.0)  # 100 GFLOP in 0.5 s of module calls
    assert result.peak_fraction == pytest.approx(0.5)
    assert result.latency is not None and result.latency.budget_ratio == pytest.approx(0.6)
    report = format_report(result)
    assert "dynamic batching: 4.00x batch-1 throughput (of which overlapping series at batch 1: 2.00x)" in report
    assert "network: 200.0 GFLOP/s = 50.0% of the matmul peak (400.0 GFLOP/s" in report
    assert "1.20 s median = 0.60x the 2 s budget" in report


def test_synthetic_radiographs_cover_the_cards_field_at_a_detector_pitch() -> None:
    spec = TASKS["fracture-xr"].spec  # 832x512 items at 0.5 mm
    det = HeatmapDetector(spec, build_module(replace(spec, network={"width": 1})), "0" * 64)
    (series,) = synthetic_series(det, 1, BenchConfig())
    assert series.family is Family.RADIOGRAPH
    assert series.pixels.shape == (1, 2080, 1280)  # 416 x 256 mm at 0.2 mm
    assert series.spacing_mm == pytest.approx((0.0, 0.2, 0.2))


def test_synthetic_ct_volumes_are_shared_beyond_a_few() -> None:
    det = tiny_detector()
    series = synthetic_series(det, 6, replace(TINY, slices=(2, 3)))
    assert len({s.series_uid for s in series}) == 6
    assert len({id(s.pixels) for s in series}) == infer.MAX_DISTINCT_VOLUMES
    assert all(2 <= s.pixels.shape[0] <= 3 and s.pixels.shape[1:] == (64, 64) for s in series)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"series": 0}, "--series"),
        ({"max_batch": 0}, "--max-batch"),
        ({"max_wait_ms": -1.0}, "--max-wait-ms"),
        ({"threads": 0}, "--threads"),
        ({"latency_runs": 0}, "--latency-runs"),
        ({"device": "tpu"}, "--device"),
        ({"detector": "spleen-ct"}, "--detector"),
    ],
)
def test_bad_options_name_the_option(change: dict[str, object], message: str) -> None:
    with pytest.raises(TriageError, match=message):
        run_infer_bench(replace(TINY, **change))


def test_cli_entry_parses_defaults_and_prints_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], result: InferBenchResult
) -> None:
    parser = argparse.ArgumentParser()
    infer.add_arguments(parser)
    args = parser.parse_args(["--json", "--series", "3", "--device", "cpu"])
    assert (args.detector, args.max_batch, args.max_wait_ms, args.series) == ("bleed-ct", None, 10.0, 3)
    seen: list[BenchConfig] = []
    monkeypatch.setattr(infer, "run_infer_bench", lambda config, progress=None: seen.append(config) or result)
    assert infer.run(args) == 0
    assert seen[0].series == 3 and seen[0].device == "cpu"
    assert json.loads(capsys.readouterr().out)["batching_speedup"] == pytest.approx(result.batching_speedup)


def test_the_parser_side_imports_neither_torch_nor_numpy() -> None:
    # `triage` builds every subcommand's parser on each start: add_arguments must stay cheap.
    code = (
        "import argparse, sys; from triage.bench import infer; infer.add_arguments(argparse.ArgumentParser()); "
        "print([m for m in ('torch', 'numpy', 'detectors.engine') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_detector_choices_are_the_tasks() -> None:
    assert infer.DETECTORS == tuple(TASKS)
