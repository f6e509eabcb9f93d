"""Loaded models for the predict endpoint: a bounded LRU cache, and a batcher per model.

Each loaded model has one thread that owns it. Requests queue up (bounded: a full queue is
refused at once with :class:`Overloaded`, which the API turns into 503 + Retry-After, instead
of latency growing without bound); the thread takes the first waiting request, gathers more
until ``max_batch`` images or ``max_delay_s`` have passed, and runs them through one forward
pass (:meth:`detector.Predictor.predict_many`). The cache evicts the least recently used model
when a new one would exceed the count or memory bound; an evicted model finishes what it has
queued, then its thread ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from detector import (
    DetectionOut,
    PredictOptions,
    Predictor,
    onnxruntime_predictor,
    sha256_file,
)

log = logging.getLogger(__name__)

Results = list[list[DetectionOut]]


class Overloaded(Exception):  # noqa: N818 (the API maps it to 503)
    """The model's queue is full: retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the model is busy; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Request:
    images: Sequence[Tensor]
    options: PredictOptions
    future: Future[Results] = field(default_factory=Future)


class BatchingRunner:
    """One model, one thread, a bounded queue of requests."""

    def __init__(
        self, predictor: Predictor, *, max_batch: int, max_delay_s: float, queue_size: int
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=queue_size)
        # Guards "closed" together with the queue, so a request is never queued behind a
        # thread that has already decided to end.
        self._lock = threading.Lock()
        self._closed = False
        self.batches = 0
        """Forward passes run so far (the tests and the benchmark read it)."""
        self._thread = threading.Thread(target=self._loop, name="predict-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: Sequence[Tensor], options: PredictOptions) -> Future[Results]:
        """Queue a request; raises :class:`Overloaded` when the queue is full (or the model
        was just evicted: a retry loads it again)."""
        self.predictor.check(options, images)  # bad options fail here, not in someone's batch
        request = _Request(images=images, options=options)
        with self._lock:
            if self._closed:
                raise Overloaded(retry_after_s=1)
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                raise Overloaded(retry_after_s=1) from None
        return request.future

    def pending(self) -> int:
        """Requests waiting in the queue (not the batch being run)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Finish the queued requests, then end the thread; never blocks."""
        with self._lock:
            self._closed = True

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if self._closed and self._queue.empty():
                        return
                continue
            self._run(self._gather(first))

    def _gather(self, first: _Request) -> list[_Request]:
        batch, images = [first], len(first.images)
        deadline = time.monotonic() + self.max_delay_s
        while images < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # what is already queued always joins; waiting only until the deadline
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            batch.append(item)
            images += len(item.images)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.predictor.predict_many([(r.images, r.options) for r in live])
        except Exception as exc:  # one bad batch must not kill the thread
            log.exception("prediction failed")
            for r in live:
                r.future.set_exception(exc)
            return
        self.batches += 1
        for r, result in zip(live, results, strict=True):
            r.future.set_result(result)


def load_predictor(
    weights: Path, *, device: str, runtime: str, onnx_dir: Path, threads: int | None = None
) -> Predictor:
    """The model at ``weights`` with its dense network in the ``runtime`` chosen
    (``auto``: onnxruntime on the CPU, torch on CUDA; see ``Settings.predict_runtime``).

    onnxruntime's graph is exported into ``onnx_dir`` once per weights checksum and checked
    against PyTorch at each load; a graph that cannot be exported or disagrees is logged and
    the model is served by PyTorch instead (same detections, slower).
    """
    predictor = Predictor.load(weights, device=device)
    if runtime == "torch" or (runtime == "auto" and predictor.device.type != "cpu"):
        return predictor
    if predictor.device.type != "cpu":
        log.warning("onnxruntime serves on the CPU; %s stays on %s", weights, predictor.device)
        return predictor
    try:
        return onnxruntime_predictor(
            predictor, cache_dir=onnx_dir, weights_sha256=sha256_file(weights), threads=threads
        )
    except Exception:  # OnnxNetworkError, or anything the exporter raises
        log.exception("onnxruntime unavailable for %s; serving it with PyTorch", weights)
        return predictor


class ModelCache:
    """Least recently used models, bounded by count and by their weights' size in memory."""

    def __init__(
        self,
        *,
        max_models: int,
        max_bytes: int,
        make_runner: Callable[[str, Path], BatchingRunner],
    ) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._make_runner = make_runner
        self._runners: OrderedDict[str, tuple[BatchingRunner, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id: str, weights: Path, size_bytes: int) -> BatchingRunner:
        """The model's runner, loading it (once, even under concurrent requests) if needed."""
        with self._lock:
            if model_id in self._runners:
                self._runners.move_to_end(model_id)
                return self._runners[model_id][0]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                if model_id in self._runners:
                    return self._runners[model_id][0]
            runner = self._make_runner(model_id, weights)  # slow: outside the cache lock
            with self._lock:
                self._runners[model_id] = (runner, size_bytes)
                self._loading.pop(model_id, None)
                self._evict(keep=model_id)
            return runner

    def drop(self, model_id: str) -> None:
        """Forget a model (deleted); its queued requests still finish."""
        with self._lock:
            entry = self._runners.pop(model_id, None)
        if entry is not None:
            entry[0].close()

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._runners)

    def close(self) -> None:
        with self._lock:
            entries = list(self._runners.values())
            self._runners.clear()
        for runner, _ in entries:
            runner.close()

    def _evict(self, *, keep: str) -> None:
        """Drop least recently used models until both bounds hold (the newest always stays)."""
        while len(self._runners) > 1 and (
            len(self._runners) > self.max_models
            or sum(size for _, size in self._runners.values()) > self.max_bytes
        ):
            oldest = next(iter(self._runners))
            if oldest == keep:
                break
            runner, _ = self._runners.pop(oldest)
            log.info("model %s evicted from the cache", oldest)
            runner.close()
