"""Dynamic batching: videos of concurrent requests run together in one model call.

One worker thread owns the model. It takes the oldest waiting chunk, then keeps taking chunks
until the batch holds `max_batch` videos or `max_wait_s` has passed since that chunk arrived
(chunks already queued by then still join, without further waiting), pads the batch to the
smallest of a few fixed sizes (the jitted call compiles once per size, not once per batch) and
hands each chunk its rows of the scores.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

_STOP = object()


def bucket_sizes(max_batch: int, fixed: int | None = None) -> list[int]:
    """Batch sizes calls are padded to: powers of two below max_batch, and max_batch itself."""
    if fixed is not None:
        return [fixed]
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return [*sizes, max_batch]


@dataclasses.dataclass
class _Chunk:
    rows: dict[str, np.ndarray]
    n: int
    future: concurrent.futures.Future
    arrived: float


class Batcher:
    """Queues rows, runs them through `predict` in padded batches on one thread, scatters scores.

    predict: {name: [b, ...]} -> [b, num_classes] for any b in `sizes`.
    zeros: n -> {name: n zero rows}, the padding.
    max_wait_s: 0 runs each request's videos on their own (no batching across requests).
    """

    def __init__(
        self,
        predict: Callable[[dict], np.ndarray],
        zeros: Callable[[int], dict],
        max_batch: int,
        max_wait_s: float,
        sizes: list[int],
    ):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1 and max_wait_s={max_wait_s} >= 0")
        if max(sizes) < max_batch:
            raise ValueError(f"batch sizes {sizes} cannot hold max_batch={max_batch} videos")
        self.predict, self.zeros = predict, zeros
        self.max_batch, self.max_wait_s, self.sizes = max_batch, max_wait_s, sorted(sizes)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._batches = 0
        self._videos = 0
        self._padded_rows = 0
        self._histogram: collections.Counter = collections.Counter()
        self._device_s = 0.0
        self._wait_s = 0.0

    def warm_up(self) -> None:
        """Compiles the model for every batch size now, not on the first requests."""
        for size in self.sizes:
            self.predict(self.zeros(size))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vmjax-serve-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finishes what is queued, then stops the worker."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def submit(self, rows: dict[str, np.ndarray]) -> list[concurrent.futures.Future]:
        """Queues a request's rows; each future gets one chunk's scores, in order."""
        n = len(next(iter(rows.values())))
        futures = []
        for start in range(0, n, self.max_batch):
            stop = min(start + self.max_batch, n)
            future: concurrent.futures.Future = concurrent.futures.Future()
            part = {k: v[start:stop] for k, v in rows.items()}
            self._queue.put(_Chunk(part, stop - start, future, time.monotonic()))
            futures.append(future)
        return futures

    def stats(self) -> dict:
        with self._lock:
            batches = self._batches
            return {
                "device_batches": batches,
                "batched_videos": self._videos,
                "mean_batch_size": self._videos / batches if batches else 0.0,
                "padded_rows": self._padded_rows,
                "batch_size_histogram": {str(k): v for k, v in sorted(self._histogram.items())},
                "mean_device_ms": 1e3 * self._device_s / batches if batches else 0.0,
                "mean_queue_wait_ms": 1e3 * self._wait_s / self._videos if self._videos else 0.0,
                "queued_chunks": self._queue.qsize(),
            }

    def _run(self) -> None:
        carry = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            chunks, n, stop = [first], first.n, False
            if self.max_wait_s > 0:
                deadline = first.arrived + self.max_wait_s
                while n < self.max_batch:
                    try:
                        left = deadline - time.monotonic()
                        item = (
                            self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                        )
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    if n + item.n > self.max_batch:
                        carry = item
                        break
                    chunks.append(item)
                    n += item.n
            self._run_batch(chunks, n)
            if stop:
                return

    def _run_batch(self, chunks: list[_Chunk], n: int) -> None:
        # Chunks whose request went away (client disconnected) are dropped; the rest can no
        # longer be cancelled, so setting their results below cannot fail.
        chunks = [c for c in chunks if c.future.set_running_or_notify_cancel()]
        n = sum(c.n for c in chunks)
        if not chunks:
            return
        size = next(s for s in self.sizes if s >= n)
        started = time.monotonic()
        try:
            parts = [c.rows for c in chunks]
            if size > n:
                parts.append(self.zeros(size - n))
            batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            scores = self.predict(batch)
        except Exception as e:  # the requests fail (500); the worker lives on
            for c in chunks:
                c.future.set_exception(e)
            return
        finished = time.monotonic()
        with self._lock:
            self._batches += 1
            self._videos += n
            self._padded_rows += size - n
            self._histogram[n] += 1
            self._device_s += finished - started
            self._wait_s += sum((started - c.arrived) * c.n for c in chunks)
        offset = 0
        for c in chunks:
            c.future.set_result(scores[offset : offset + c.n])
            offset += c.n
