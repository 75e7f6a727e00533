"""The batched inference engine: many series, several detectors, one device.

Flow of one request (``submit(detector, series_or_loader)``)::

    caller --slot--> prepare pool: load pixels, detector.prepare --items-->
        bounded item queue --batches of one module--> inference thread (device)
        --per-series logits--> postprocess pool: detector.postprocess --> Future

Decisions:

- One inference thread per engine (so per device) owns the device; pre- and
  postprocessing run on two small thread pools so that NumPy work overlaps with
  compute. Postprocessing has its own pool so that finished series never wait
  behind producers blocked on a full queue.
- A batch holds items of one module and item shape only. It goes when it is
  full, when its oldest item has waited ``max_wait_ms``, when no more items of
  that module are on the way (waiting could only add latency), or when the
  queue is at capacity (nothing more can arrive until something leaves). Among
  the ready modules the one whose oldest item is oldest goes first, so no
  detector starves another.
- Memory is bounded twice: ``submit`` blocks while ``max_series_in_flight``
  series are between submit and result, and prepare workers block while
  ``max_queued_items`` items wait for the device.
- A failure belongs to the series that caused it: a loader, ``prepare`` or
  ``postprocess`` exception, or non-finite logits, fails that series' Future
  with a :class:`DetectionError`; a module exception fails the series of that
  batch. The engine always goes on.
- Each module is placed once per engine: an eval-mode copy on the device, so
  the detector's own module is left alone (an eval-mode CPU module is shared;
  one that cannot be copied is moved as it is, with a warning). On CUDA inputs
  and weights are channels_last and run under autocast (bf16, else fp16):
  about 1.5x over fp32 for a conv net on an H200. Elsewhere fp32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from detectors.base import DetectionError, Detector, Finding, Prepared, SeriesArrays

logger = logging.getLogger(__name__)

__all__ = ["EngineStats", "InferenceEngine", "SeriesSource", "pick_device"]

SeriesSource = SeriesArrays | Callable[[], SeriesArrays]  # the series, or a loader run on a worker


def pick_device(name: str = "auto") -> torch.device:
    """Resolve a device name: "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps".

    Raises
    ------
    ValueError
        The name is not a device, or that device is not available here.
    """
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f'Argument "device" must be "auto", "cpu", "cuda", "cuda:N" or "mps", got {name!r}')
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f'Argument "device" is {name!r}, but this machine has {count} CUDA device(s)')
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f'Argument "device" is {name!r}, but MPS is not available on this machine')
    return device


@dataclass(frozen=True)
class EngineStats:
    """Counters for benchmarks; ``batch_sizes`` maps a batch size to how many batches had it."""

    batches: int
    items: int
    series_ok: int
    series_failed: int
    batch_sizes: dict[int, int]
    peak_queued_items: int
    compute_s: float  # wall time spent in module calls, transfers included

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass(eq=False)
class _Model:
    """One module placed on the engine's device; the key that batches share."""

    source: torch.nn.Module  # held so that its id() is not reused while cached
    module: torch.nn.Module
    item_shape: tuple[int, int, int]
    label: str


@dataclass(eq=False)
class _Job:
    """One series on its way through the engine."""

    detector: Detector
    source: SeriesSource
    model: _Model
    future: Future[Finding]
    series_uid: str | None = None  # known once loaded
    prepared: Prepared | None = None
    items: np.ndarray | None = None  # (n, C, H, W) float32
    outputs: list[np.ndarray | None] = field(default_factory=list)
    remaining: int = 0  # items not yet back from the device; inference thread only
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class _Item:
    job: _Job
    index: int
    enqueued: float = 0.0  # time.monotonic()


def _input_of(item: _Item) -> np.ndarray:
    """The network input of one queued item."""
    items = item.job.items
    assert items is not None  # set by _prepare_items before any of the job's items was queued
    return items[item.index]


class InferenceEngine:
    """Score series with detectors on one device, batching items across series.

    Parameters
    ----------
    device
        "auto", "cpu", "cuda", "cuda:N", "mps" or a ``torch.device``.
    max_batch
        Most items in one module call.
    max_wait_ms
        Longest an item waits for its batch to fill while more items are on the way.
    max_queued_items
        Items waiting for the device; prepare workers block beyond it.
        Default ``4 * max_batch``.
    max_series_in_flight
        Series between ``submit`` and their result; ``submit`` blocks beyond
        it. Each holds its pixels, so this bounds memory. Default
        ``max_batch + workers``: enough single-item series to fill a batch
        while the workers prepare the next ones.
    workers
        Threads in each of the prepare and postprocess pools.
    num_threads
        Torch CPU threads (process-wide); default: the CPUs this process may
        use. Only set on a CPU device.
    """

    def __init__(
        self,
        device: str | torch.device = "auto",
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queued_items: int | None = None,
        max_series_in_flight: int | None = None,
        workers: int = 2,
        num_threads: int | None = None,
    ) -> None:
        for arg, value in (("max_batch", max_batch), ("workers", workers)):
            if value < 1:
                raise ValueError(f'Argument "{arg}" must be at least 1, got {value}')
        if max_wait_ms < 0:
            raise ValueError(f'Argument "max_wait_ms" must be non-negative, got {max_wait_ms}')
        max_queued_items = 4 * max_batch if max_queued_items is None else max_queued_items
        if max_queued_items < max_batch:
            # Otherwise no batch could ever fill and every one would wait out max_wait_ms.
            raise ValueError(f'Argument "max_queued_items" must be at least max_batch ({max_batch}), got {max_queued_items}')
        if max_series_in_flight is None:
            max_series_in_flight = max_batch + workers
        if max_series_in_flight < 1:
            raise ValueError(f'Argument "max_series_in_flight" must be at least 1, got {max_series_in_flight}')

        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queued_items = max_queued_items
        self.max_series_in_flight = max_series_in_flight
        if self.device.type == "cpu":
            affinity = getattr(os, "sched_getaffinity", None)
            # Process-wide in torch; the default uses the CPUs we may run on, not all the host has.
            torch.set_num_threads(num_threads or (len(affinity(0)) if affinity else os.cpu_count() or 1))
        self.amp_dtype: torch.dtype | None = None  # fp32 off CUDA
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._channels_last = self.device.type in ("cuda", "cpu")

        self._cond = threading.Condition()  # guards everything below up to the pools
        self._pending: dict[_Model, deque[_Item]] = {}
        self._incoming: Counter[_Model] = Counter()  # series submitted, items not all queued
        self._queued = 0
        self._closed = False
        self._cancelling = False
        self._stats = Counter[str]()
        self._batch_sizes = Counter[int]()
        self._compute_s = 0.0
        self._models: dict[tuple[int, tuple[int, int, int]], _Model] = {}
        self._models_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_series_in_flight)
        self._prepare_pool = ThreadPoolExecutor(workers, thread_name_prefix="engine-prepare")
        self._post_pool = ThreadPoolExecutor(workers, thread_name_prefix="engine-post")
        self._thread = threading.Thread(target=self._run, name=f"engine-infer-{self.device}", daemon=True)
        self._thread.start()
        dtype = self.amp_dtype or torch.float32
        logger.info("inference engine on %s (%s), max_batch %d", self.device, dtype, max_batch)

    # -- public ------------------------------------------------------------

    def submit(self, detector: Detector, series: SeriesSource) -> Future[Finding]:
        """Queue one series for one detector; blocks while the engine is saturated.

        ``series`` is a :class:`SeriesArrays` or a zero-argument callable
        returning one, called on a worker (so that reading pixels overlaps too).
        The Future's exception, if any, is a :class:`DetectionError` naming the
        detector and the cause.

        Raises
        ------
        RuntimeError
            The engine is closed.
        """
        if self._closed:
            raise RuntimeError("the inference engine is closed")
        model = self._model_for(detector)
        self._slots.acquire()
        with self._cond:
            if self._closed:
                self._slots.release()
                raise RuntimeError("the inference engine is closed")
            self._incoming[model] += 1
        job = _Job(detector=detector, source=series, model=model, future=Future())
        try:
            self._prepare_pool.submit(self._prepare, job)
        except RuntimeError:  # the interpreter is exiting (close() keeps this pool open)
            with self._cond:
                self._incoming[model] -= 1
            self._slots.release()
            raise
        return job.future

    def score_many(self, pairs: Iterable[tuple[Detector, SeriesSource]]) -> list[Finding | DetectionError]:
        """Score (detector, series) pairs; one Finding or DetectionError per pair, in order."""
        futures = [self.submit(detector, series) for detector, series in pairs]
        results: list[Finding | DetectionError] = []
        for future in futures:
            try:
                results.append(future.result())
            except DetectionError as exc:
                results.append(exc)
        return results

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                batches=self._stats["batches"],
                items=self._stats["items"],
                series_ok=self._stats["ok"],
                series_failed=self._stats["failed"],
                batch_sizes=dict(sorted(self._batch_sizes.items())),
                peak_queued_items=self._stats["peak_queued"],
                compute_s=self._compute_s,
            )

    def close(self, cancel: bool = False) -> None:
        """Stop accepting series and join every thread; idempotent.

        By default every submitted series is scored first. With ``cancel``,
        series not yet on the device fail with a DetectionError instead; the
        batch on the device finishes.
        """
        dropped: list[_Item] = []
        with self._cond:
            self._closed = True
            if cancel and not self._cancelling:
                self._cancelling = True
                for queue in self._pending.values():
                    dropped.extend(queue)
                self._pending.clear()
                self._queued = 0
            self._cond.notify_all()
        for job in {id(item.job): item.job for item in dropped}.values():
            self._fail(job, "engine closed before scoring")
        # Order matters: the inference thread ends only once every prepare has
        # queued its items, and it feeds the postprocess pool until it ends.
        self._thread.join()
        self._prepare_pool.shutdown(wait=True)
        self._post_pool.shutdown(wait=True)

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(cancel=exc_type is not None)

    # -- model placement ---------------------------------------------------------

    def _model_for(self, detector: Detector) -> _Model:
        # tuple() keeps the key hashable should a detector hold its shape as a list.
        key = (id(detector.module), cast(tuple[int, int, int], tuple(detector.item_shape)))
        with self._models_lock:
            model = self._models.get(key)
            if model is None:
                placed = self._place(detector.module)
                model = _Model(detector.module, placed, key[1], detector.name)
                self._models[key] = model
            return model

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module on this device in eval mode, leaving the detector's own untouched."""
        tensors = [*module.parameters(), *module.buffers()]
        if self.device.type == "cpu" and not module.training and all(t.device.type == "cpu" for t in tensors):
            return module  # already what we need: share it rather than copy the weights
        # Otherwise a copy: .to() and .eval() change a module in place, and the
        # detector's own may be in use elsewhere (detect(), training).
        try:
            placed = copy.deepcopy(module)
        except Exception as exc:  # e.g. a module holding a lock: use it as it is
            logger.warning("cannot copy %s (%s); moving the detector's own module", type(module).__name__, exc)
            placed = module
        placed = placed.to(self.device)
        if self.device.type == "cuda":
            placed = placed.to(memory_format=torch.channels_last)
        return placed.eval()

    # -- workers ---------------------------------------------------------------

    def _prepare(self, job: _Job) -> None:
        """Prepare pool: load and prepare one series, then queue its items (may block)."""
        try:
            if not job.future.set_running_or_notify_cancel():
                self._complete(job, cancelled=True)
                return
            if self._cancelling:
                self._fail(job, "engine closed before scoring")
                return
            items = self._prepare_items(job)
            if items is None:
                return
            if len(items) == 0:
                self._to_postprocess(job)
            for index in range(len(items)):
                if job.done:  # a batch already failed it: queue nothing more
                    break
                if not self._put(_Item(job, index)):
                    self._fail(job, "engine closed before scoring")
                    return
        finally:
            with self._cond:
                self._incoming[job.model] -= 1
                self._cond.notify_all()

    def _prepare_items(self, job: _Job) -> np.ndarray | None:
        """Load and prepare the series into the job (prepared, items, outputs); the items, or None when it failed the job."""
        step = "loading"
        try:
            series = job.source() if callable(job.source) else job.source
            if not isinstance(series, SeriesArrays):
                raise TypeError(f"the loader returned {type(series).__name__}, not SeriesArrays")
            job.series_uid, step = series.series_uid, "prepare"
            prepared = job.detector.prepare(series)
            items = np.ascontiguousarray(prepared.items, dtype=np.float32)
            if items.ndim != 4 or items.shape[1:] != job.model.item_shape:
                expected = ", ".join(map(str, job.model.item_shape))
                raise ValueError(f"items have shape {items.shape}, expected (n, {expected})")
        except Exception as exc:
            self._fail(job, f"{step} failed: {exc}", exc)
            return None
        job.prepared, job.items, job.remaining = prepared, items, len(items)
        job.outputs = [None] * len(items)
        return items

    def _put(self, item: _Item) -> bool:
        """Queue one item, blocking while the queue is full; False when the engine cancels."""
        with self._cond:
            while self._queued >= self.max_queued_items and not self._cancelling:
                self._cond.wait()
            if self._cancelling:
                return False
            item.enqueued = time.monotonic()
            self._pending.setdefault(item.job.model, deque()).append(item)
            self._queued += 1
            self._stats["peak_queued"] = max(self._stats["peak_queued"], self._queued)
            self._cond.notify_all()
            return True

    def _postprocess(self, job: _Job) -> None:
        """Postprocess pool: one series' logits -> Finding."""
        # Scheduled once job.remaining reached 0: every output slot holds its item's logits.
        outputs = cast(list[np.ndarray], job.outputs)
        logits = np.stack(outputs) if outputs else np.zeros((0, 1, 1, 1), np.float32)
        if not np.isfinite(logits).all():
            self._fail(job, "the network produced non-finite values")
            return
        try:
            prepared = job.prepared
            assert prepared is not None  # set by _prepare_items before any of the job's items was queued
            finding = job.detector.postprocess(prepared, logits)
        except Exception as exc:
            self._fail(job, f"postprocess failed: {exc}", exc)
            return
        self._complete(job, finding=finding)

    def _to_postprocess(self, job: _Job) -> None:
        try:
            self._post_pool.submit(self._postprocess, job)
        except RuntimeError as exc:
            # The interpreter is exiting without close(): concurrent.futures has
            # shut its pools. Fail the series rather than the inference thread.
            self._fail(job, f"engine shut down: {exc}", exc)

    def _fail(self, job: _Job, why: str, cause: BaseException | None = None) -> None:
        where = f"series {job.series_uid}: " if job.series_uid else ""
        self._complete(job, error=DetectionError(f"{job.detector.name}: {where}{why}"), cause=cause)

    def _complete(
        self,
        job: _Job,
        finding: Finding | None = None,
        error: DetectionError | None = None,
        cause: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        with job.lock:
            if job.done:
                return
            job.done = True
        with self._cond:
            if not cancelled:
                self._stats["failed" if error else "ok"] += 1
        # The slot goes back before the Future is set, so a done-callback that
        # submits again cannot deadlock on it.
        self._slots.release()
        if cancelled:
            return
        if error is not None:
            error.__cause__ = cause
            logger.warning("%s", error)
            job.future.set_exception(error)
        else:
            # Not an error, not cancelled: the detector's postprocess result, passed on as it came.
            job.future.set_result(cast(Finding, finding))

    # -- inference thread ----------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():  # thread-local: must be entered on this thread
            while (batch := self._next_batch()) is not None:
                self._run_batch(*batch)
        logger.debug("inference thread on %s stopped", self.device)

    def _next_batch(self) -> tuple[_Model, list[_Item]] | None:
        """Wait for a ready batch (rules in the module docstring); None once closed and drained."""
        with self._cond:
            while True:
                now, chosen, wake_at = time.monotonic(), None, None
                for model, queue in self._pending.items():
                    oldest = queue[0].enqueued
                    ready = (
                        len(queue) >= self.max_batch
                        or now - oldest >= self.max_wait_s
                        or self._incoming[model] == 0
                        or self._queued >= self.max_queued_items
                    )
                    if ready and (chosen is None or oldest < self._pending[chosen][0].enqueued):
                        chosen = model
                    elif not ready:
                        deadline = oldest + self.max_wait_s
                        wake_at = deadline if wake_at is None else min(wake_at, deadline)
                if chosen is not None:
                    queue = self._pending[chosen]
                    items = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                    if not queue:
                        del self._pending[chosen]
                    self._queued -= len(items)
                    self._cond.notify_all()  # room for blocked producers
                    items = [item for item in items if not item.job.done]  # failed meanwhile
                    if items:
                        return chosen, items
                    continue
                if self._closed and not self._pending and not any(self._incoming.values()):
                    return None
                self._cond.wait(None if wake_at is None else max(wake_at - now, 0.0))

    def _run_batch(self, model: _Model, items: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            batch = np.stack([_input_of(item) for item in items])
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self._channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
            with autocast:
                outputs = model.module(inputs)
            logits = outputs.float().cpu().numpy()  # (batch, 1, h, w)
            if logits.shape[0] != len(items):
                raise ValueError(f"the module returned {logits.shape[0]} outputs for {len(items)} items")
        except Exception as exc:
            logger.exception("%s: inference failed on a batch of %d items", model.label, len(items))
            for job in {id(item.job): item.job for item in items}.values():
                self._fail(job, f"inference failed on a batch of {len(items)} items: {exc}", exc)
            return
        finally:
            with self._cond:
                self._stats["batches"] += 1
                self._stats["items"] += len(items)
                self._batch_sizes[len(items)] += 1
                self._compute_s += time.perf_counter() - started
        for item, row in zip(items, logits, strict=True):
            job = item.job
            if job.done:
                continue
            job.outputs[item.index] = row
            job.remaining -= 1
            if job.remaining == 0:
                self._to_postprocess(job)
