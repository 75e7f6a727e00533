"""The batched inference engine, on CPU with tiny modules and real threads.

Synchronisation is by events with bounded waits, never by sleeping. The toy
detector's module is an identity 1x1 convolution, so a series' logits are its
own pixels and every Finding can be checked against the series that made it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from torch import nn

from detectors.base import DetectionError, Detector, Family, Finding, ModelIdentity, Prepared, Region, SeriesArrays
from detectors.engine import EngineStats, InferenceEngine, pick_device
from detectors.routing import FindingKind

WAIT = 2.0  # seconds: the bound on every wait for something that should happen
ENGINE_THREADS = ("engine-infer", "engine-prepare", "engine-post")


class Recorder(nn.Module):
    """Identity 1x1 conv times ``gain``; records batch shapes and can block or raise."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        nn.init.constant_(self.conv.weight, gain)
        nn.init.zeros_(self.conv.bias)
        self.shapes: list[tuple[int, ...]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None  # when set up, each call waits for it
        self.poison: float | None = None  # an input holding this value makes the call raise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test never opened the gate"
        if self.poison is not None and bool((x == self.poison).any()):
            raise RuntimeError("boom: poisoned input")
        return self.conv(x)

    @property
    def batch_sizes(self) -> list[int]:
        return [shape[0] for shape in self.shapes]


class ToyDetector(Detector):
    """Items are the series' slices (cropped to ``size``); one region per item."""

    def __init__(self, name: str = "toy", gain: float = 1.0, size: int = 4) -> None:
        self.name = name
        self.kind = FindingKind.BLEED
        self.family = Family.CT
        self.identity = ModelIdentity(name=name, version="0", sha256="0" * 64)
        # eval() up front: the engine then shares it on CPU instead of copying
        # it, so the test sees what it records.
        self.module = Recorder(gain).eval()
        self.item_shape = (1, size, size)
        self.lock = threading.Lock()
        self.prepared = 0  # series prepared and not yet postprocessed
        self.peak_prepared = 0

    def prepare(self, series: SeriesArrays) -> Prepared:
        if series.series_uid.startswith("bad-prepare"):
            raise DetectionError("unreadable pixels")
        with self.lock:
            self.prepared += 1
            self.peak_prepared = max(self.peak_prepared, self.prepared)
        size = self.item_shape[1]
        return Prepared(series=series, items=series.pixels[:, None, :size, :size].copy())

    def postprocess(self, prepared: Prepared, logits: np.ndarray) -> Finding:
        with self.lock:
            self.prepared -= 1
        uid = prepared.series.series_uid
        uids = prepared.series.sop_instance_uids
        regions = tuple(Region(uid, uids[i], i, (i, i), (0, 0, 1, 1), float(logits[i].mean())) for i in range(len(logits)))
        return Finding(
            kind=self.kind,
            series_uid=uid,
            probability=float(logits.mean()),
            operating_point=0.5,
            regions=regions,
            model=self.identity,
            detector=self.name,
        )

    @property
    def recorder(self) -> Recorder:
        assert isinstance(self.module, Recorder)
        return self.module


def series(uid: str, values: list[float], size: int = 4) -> SeriesArrays:
    """A series whose slice i is filled with values[i]."""
    pixels = np.stack([np.full((size, size), v, np.float32) for v in values])
    sop_uids = tuple(f"{uid}.{i}" for i in range(len(values)))
    return SeriesArrays(uid, Family.CT, pixels, (1.0, 1.0, 1.0), sop_uids)


def gated(start: threading.Event, s: SeriesArrays) -> Callable[[], SeriesArrays]:
    """A loader that waits for ``start``: lets a test submit everything before any item is queued."""

    def load() -> SeriesArrays:
        assert start.wait(WAIT)
        return s

    return load


def engine(**kw: object) -> InferenceEngine:
    kw.setdefault("device", "cpu")
    kw.setdefault("num_threads", 1)
    return InferenceEngine(**kw)


def error_of(future: Future[Finding]) -> str:
    with pytest.raises(DetectionError) as info:
        future.result(timeout=WAIT)
    return str(info.value)


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(ENGINE_THREADS)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_batches_fill_across_series_up_to_max_batch() -> None:
    det, start = ToyDetector(), threading.Event()
    with engine(max_batch=4, max_wait_ms=60_000) as eng:
        futures = [eng.submit(det, gated(start, series(f"s{i}", [i, i]))) for i in range(3)]
        start.set()
        findings = [f.result(timeout=WAIT) for f in futures]
        stats = eng.stats()
    # Six items: a full batch of four, then the last two as soon as nothing more is on the way
    # (not after the minute of max_wait_ms).
    assert det.recorder.batch_sizes == [4, 2]
    assert [f.series_uid for f in findings] == ["s0", "s1", "s2"]
    assert stats == EngineStats(
        batches=2,
        items=6,
        series_ok=3,
        series_failed=0,
        batch_sizes={2: 1, 4: 1},
        peak_queued_items=stats.peak_queued_items,
        compute_s=stats.compute_s,
    )
    assert stats.mean_batch_size == 3.0
    assert 4 <= stats.peak_queued_items <= 6


def test_partial_batch_goes_after_max_wait_while_another_series_is_still_loading() -> None:
    det, slow = ToyDetector(), threading.Event()
    with engine(max_batch=8, max_wait_ms=20) as eng:
        waiting = eng.submit(det, gated(slow, series("slow", [2.0])))
        ready = eng.submit(det, series("fast", [1.0, 1.0]))
        assert ready.result(timeout=WAIT).probability == 1.0  # did not wait for "slow"
        assert not waiting.done()
        slow.set()
        assert waiting.result(timeout=WAIT).probability == 2.0
    assert det.recorder.batch_sizes == [2, 1]


def test_each_series_gets_its_own_finding_in_item_order() -> None:
    det = ToyDetector()
    values = {f"s{i}": [i + 0.1 * k for k in range(1 + i % 3)] for i in range(8)}
    with engine(max_batch=3, max_wait_ms=5, workers=2) as eng:
        futures = {uid: eng.submit(det, series(uid, v)) for uid, v in values.items()}
        for uid, future in futures.items():
            finding = future.result(timeout=WAIT)
            assert finding.series_uid == uid
            expected_uids = [f"{uid}.{k}" for k in range(len(values[uid]))]
            assert [r.sop_instance_uid for r in finding.regions] == expected_uids
            assert [r.probability for r in finding.regions] == pytest.approx(values[uid])
    assert max(det.recorder.batch_sizes) <= 3
    assert sum(det.recorder.batch_sizes) == sum(len(v) for v in values.values())


def test_a_bad_series_fails_alone_and_the_engine_goes_on() -> None:
    det, start = ToyDetector(), threading.Event()

    def broken_loader() -> SeriesArrays:
        assert start.wait(WAIT)
        raise OSError("disk gone")

    with engine(max_batch=8, max_wait_ms=60_000) as eng:
        good = eng.submit(det, gated(start, series("good", [1.0, 1.0])))
        nan = eng.submit(det, gated(start, series("nan", [float("nan")])))
        bad_prepare = eng.submit(det, gated(start, series("bad-prepare", [3.0])))
        bad_load = eng.submit(det, broken_loader)
        start.set()
        assert good.result(timeout=WAIT).probability == 1.0
        assert error_of(nan) == "toy: series nan: the network produced non-finite values"
        assert error_of(bad_prepare) == "toy: series bad-prepare: prepare failed: unreadable pixels"
        assert error_of(bad_load) == "toy: loading failed: disk gone"
        assert det.recorder.batch_sizes == [3]  # good and nan shared the batch
        assert eng.submit(det, series("later", [5.0])).result(timeout=WAIT).probability == 5.0
        stats = eng.stats()
    assert (stats.series_ok, stats.series_failed) == (2, 3)


def test_a_module_error_fails_its_batch_only() -> None:
    det, start = ToyDetector(), threading.Event()
    det.recorder.poison = 13.0
    with engine(max_batch=8, max_wait_ms=60_000) as eng:
        poisoned = eng.submit(det, gated(start, series("poisoned", [13.0])))
        neighbour = eng.submit(det, gated(start, series("neighbour", [1.0, 1.0])))
        start.set()
        for future, uid in ((poisoned, "poisoned"), (neighbour, "neighbour")):
            message = error_of(future)
            assert message.startswith(f"toy: series {uid}: inference failed on a batch of 3 items")
            assert "boom: poisoned input" in message
        assert eng.submit(det, series("next", [2.0])).result(timeout=WAIT).probability == 2.0
    assert det.recorder.batch_sizes == [3, 1]


def test_submit_and_producers_block_when_the_engine_is_full() -> None:
    det = ToyDetector()
    det.recorder.gate = threading.Event()
    returned = [threading.Event() for _ in range(8)]
    futures: list[Future[Finding]] = []

    with engine(max_batch=2, max_wait_ms=0, max_queued_items=2, max_series_in_flight=3, workers=1) as eng:

        def produce() -> None:
            for i, event in enumerate(returned):
                futures.append(eng.submit(det, series(f"s{i}", [float(i)] * 3)))
                event.set()

        producer = threading.Thread(target=produce)
        producer.start()
        assert det.recorder.entered.wait(WAIT)
        assert returned[2].wait(WAIT)  # three series in flight...
        assert not returned[3].wait(0.2)  # ...and the fourth submit blocks while the module does
        assert eng.stats().peak_queued_items <= 2
        det.recorder.gate.set()
        producer.join(WAIT)
        assert not producer.is_alive()
        assert [f.result(timeout=WAIT).probability for f in futures] == [float(i) for i in range(8)]
        stats = eng.stats()
    assert det.peak_prepared <= 3  # never more series' items in memory than the bound
    assert stats.peak_queued_items == 2
    assert stats.items == 24 and max(stats.batch_sizes) <= 2


def test_two_detectors_interleave_without_mixing_batches() -> None:
    small, large = ToyDetector("small"), ToyDetector("large", gain=2.0, size=6)
    pairs = [(small, series(f"a{i}", [float(i)] * 2)) if i % 2 else (large, series(f"b{i}", [float(i)], size=6)) for i in range(10)]
    with engine(max_batch=4, max_wait_ms=5) as eng:
        results = eng.score_many(pairs)
    for (det, s), finding in zip(pairs, results, strict=True):
        assert isinstance(finding, Finding)
        assert (finding.detector, finding.series_uid) == (det.name, s.series_uid)
        assert finding.probability == pytest.approx(float(s.pixels.mean()) * (2.0 if det is large else 1.0))
    assert {shape[1:] for shape in small.recorder.shapes} == {(1, 4, 4)}
    assert {shape[1:] for shape in large.recorder.shapes} == {(1, 6, 6)}
    assert sum(small.recorder.batch_sizes) == 10 and sum(large.recorder.batch_sizes) == 5


def test_score_many_returns_errors_in_place() -> None:
    det = ToyDetector()
    with engine(max_batch=4) as eng:
        results = eng.score_many([(det, series(uid, [1.0])) for uid in ("ok", "bad-prepare", "ok2")])
    assert isinstance(results[0], Finding) and isinstance(results[2], Finding)
    assert isinstance(results[1], DetectionError) and "unreadable pixels" in str(results[1])


def test_close_joins_threads_and_refuses_new_series() -> None:
    det = ToyDetector()
    before = set(engine_threads())
    eng = engine(max_batch=2, workers=2)
    futures = [eng.submit(det, series(f"s{i}", [float(i)])) for i in range(5)]
    eng.close()  # drains: every submitted series is scored
    assert all(f.result(timeout=0).series_uid == f"s{i}" for i, f in enumerate(futures))
    assert set(engine_threads()) <= before
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit(det, series("late", [1.0]))
    eng.close()  # idempotent


def test_close_with_cancel_fails_the_waiting_series() -> None:
    det = ToyDetector()
    det.recorder.gate = threading.Event()
    eng = engine(max_batch=1, max_wait_ms=0, max_series_in_flight=8)
    on_device = eng.submit(det, series("first", [1.0]))
    assert det.recorder.entered.wait(WAIT)
    waiting = [eng.submit(det, series(f"w{i}", [2.0])) for i in range(3)]
    closer = threading.Thread(target=eng.close, kwargs={"cancel": True})
    closer.start()
    for future in waiting:
        assert "engine closed" in error_of(future)
    det.recorder.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert on_device.result(timeout=0).probability == 1.0
    assert not any(t.is_alive() for t in engine_threads() if t.name.startswith("engine-infer"))


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match='Argument "device".*bogus'):
        pick_device("bogus")
    with pytest.raises(ValueError, match='Argument "device".*cuda:99'):
        pick_device("cuda:99")


def test_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match='"max_queued_items"'):
        InferenceEngine("cpu", max_batch=8, max_queued_items=4, num_threads=1)


def test_a_module_in_training_mode_is_copied_not_changed() -> None:
    det = ToyDetector()
    conv = nn.Conv2d(1, 1, 1)
    nn.init.ones_(conv.weight)
    nn.init.zeros_(conv.bias)
    det.module = conv  # in training mode, as nn.Module starts
    with engine() as eng:
        assert eng.submit(det, series("s", [3.0])).result(timeout=WAIT).probability == 3.0
    assert det.module is conv and conv.training  # the engine ran an eval() copy


def test_a_module_that_cannot_be_copied_is_used_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    det = ToyDetector()
    det.module.train()  # a copy is needed, but the Recorder's events cannot be deep-copied
    with engine() as eng:
        assert eng.submit(det, series("s", [3.0])).result(timeout=WAIT).probability == 3.0
    assert det.recorder.batch_sizes == [1] and not det.module.training
    assert "cannot copy Recorder" in caplog.text
