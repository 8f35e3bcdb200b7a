"""Adaptive micro-batching: concurrent requests share one forward pass in one worker thread.

Requests (arrays whose first dimension is rows) are queued from the event loop. The worker takes
the first, then everything else already queued, up to ``max_batch_size`` rows. If the batch is not
full it waits for more, at most ``max_wait_s`` after the first was taken, while more are expected:

- requests *arriving* (the app announces each request before it reads the body, see
  ``arriving``);
- the clients of the batch that just finished, which have not come back yet. Under steady load
  a batcher that never waits for them settles into two cohorts that take turns (32 clients, two
  alternating batches of 16), and a compute-bound model then pays two passes for every 32 rows.
  A request queued after the last batch finished counts as one of its clients coming back, so a
  lone client at concurrency 1 (whose next request *is* the return) is never delayed; nor is the
  first request after a burst (queued more than ``max_wait_s`` after the last batch finished).

A request with more rows than ``max_batch_size`` runs alone. Outputs are split back per request
and resolved on the event loop.

If a combined batch fails, each of its requests is retried alone, so one bad request cannot fail
its neighbours; a request that fails alone is checked by the guard first (a row far beyond the
training data's scale is refused as such, not answered as the model's failure).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

__all__ = ["MicroBatcher", "BatcherClosed"]

RunFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class Guard(Protocol):
    """Per-request checks of a batch's outputs, run in the worker (off the event loop): ``suspect``
    once per batch (cheap); ``check`` per request of a suspect batch, raising to answer that
    request with the exception instead of its outputs (protocol.InputGuard)."""

    def suspect(self, array: np.ndarray, results: dict[str, np.ndarray]) -> bool: ...

    def check(self, array: np.ndarray, results: dict[str, np.ndarray]) -> None: ...
OnBatch = Callable[[int, float], None]


class BatcherClosed(RuntimeError):
    """``submit`` after ``stop``."""


@dataclass
class _Item:
    array: np.ndarray
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])


_STOP = object()


class MicroBatcher:
    """Queue requests from an event loop; run them in batches in one worker thread."""

    def __init__(self, run: RunFn, max_batch_size: int = 32, max_wait_s: float = 0.002,
                 on_batch: OnBatch | None = None, thread_init: Callable[[], None] | None = None,
                 guard: Guard | None = None) -> None:
        self._run = run
        self._guard = guard
        self._thread_init = thread_init
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._carry: _Item | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._arriving = 0  # written on the event loop, read (racily, as a hint) by the worker
        self._last_rows = 0         # rows of the batch that finished last (worker only)
        self._last_done = 0.0       # when it finished (perf_counter)
        # While the worker waits for a batch to fill, it sleeps on ``_wake`` rather than on the
        # queue: a queue.get woke it (and took the GIL from the event loop) for every request, ~4 us
        # of the loop's time each. The loop sets ``_wake`` once the batch may be complete: ``_space``
        # rows queued since the worker began to wait (``_queued``), or ``_awaited`` rows of the last
        # batch's clients back (``_back``) and none arriving. (Worker writes the first two, the loop
        # the counts; a spurious wake only makes the worker look again.)
        self._wake = threading.Event()
        self._waiting = False
        self._space = self._awaited = 0
        self._queued = self._back = 0

    # -- event-loop side -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="mlbuild-batcher", daemon=True)
        self._thread.start()

    def arriving(self, delta: int) -> None:
        """+1 when a request starts (before its body is read), -1 once it is submitted or refused."""
        self._arriving += delta
        if delta < 0 and self._waiting:
            self._nudge()

    def _nudge(self) -> None:
        """Wake the waiting worker if the batch it waits for may be complete now (loop side)."""
        if self._queued >= self._space or (self._back >= self._awaited and self._arriving <= 0):
            self._wake.set()

    async def submit(self, array: np.ndarray, arrived: bool = False) -> dict[str, np.ndarray]:
        """Run ``array`` (rows first) in a batch; returns this request's slice of every output.

        ``arrived=True`` ends the request's ``arriving(1)`` announcement once it is queued.
        """
        try:
            if self._closed or self._loop is None:
                raise BatcherClosed("the server is shutting down")
            future: asyncio.Future[dict[str, np.ndarray]] = self._loop.create_future()
            item = _Item(array, future, time.perf_counter())
            self._queue.put(item)
        finally:
            if arrived:
                self._arriving -= 1
        if self._waiting:
            self._queued += item.rows
            if item.enqueued >= self._last_done:
                self._back += item.rows
            self._nudge()
        return await future

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- worker side -----------------------------------------------------------------------------

    def _next(self, timeout: float | None) -> _Item | None:
        """The carried-over item, else the next queued one; ``None`` on timeout or stop."""
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            got = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if got is _STOP:
            self._queue.put(_STOP)  # seen again once the batch in hand is done
            return None
        assert isinstance(got, _Item)
        return got

    def _collect(self) -> list[_Item] | None:
        first = self._next(None)
        if first is None:
            return None
        batch, rows = [first], first.rows
        returned = first.rows if first.enqueued >= self._last_done else 0
        # The last batch's clients are expected back only while the load goes on: not when this
        # request came long after that batch (a burst ended).
        expected = self._last_rows if first.enqueued - self._last_done < self.max_wait_s else 0
        deadline = time.perf_counter() + self.max_wait_s
        while rows < self.max_batch_size:
            item = self._next(0)
            if item is None:
                remaining = deadline - time.perf_counter()
                coming_back = expected - returned   # the last batch's clients not yet here
                if (self._arriving <= 0 and coming_back <= 0) or remaining <= 0 or self._closed:
                    break
                item = self._wait(self.max_batch_size - rows, coming_back, remaining)
                if item is None:
                    continue
            if rows + item.rows > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
            if item.enqueued >= self._last_done:
                returned += item.rows
        return batch

    def _wait(self, space: int, awaited: int, timeout: float) -> _Item | None:
        """The next queued item, waiting at most ``timeout`` until the loop says the batch may be
        complete (``space`` rows queued, or ``awaited`` rows of the last batch's clients back)."""
        self._wake.clear()
        self._queued = self._back = 0
        self._space, self._awaited = space, awaited
        self._waiting = True
        try:
            item = self._next(0)   # queued before the loop saw ``_waiting``
            if item is None and not self._closed:   # stop() may have set the event before it was cleared
                self._wake.wait(timeout)
                item = self._next(0)
            return item
        finally:
            self._waiting = False

    def _work(self) -> None:
        if self._thread_init is not None:
            self._thread_init()  # per-thread runtime settings (torch's OpenMP thread count)
        while True:
            batch = self._collect()
            if batch is None:
                if self._carry is None and self._closed:
                    return
                continue
            self._execute(batch)

    def _execute(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            arrays = [item.array for item in batch]
            merged = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            outputs = self._run(merged)
        except Exception as e:
            if len(batch) > 1:
                for item in batch:  # isolate the request that broke the batch
                    self._execute([item])
                return
            failure: BaseException = e   # the app logs it and answers 500 (a ProtocolError: its 4xx)
            if self._guard is not None:
                try:  # a row far beyond the training data's scale that broke the model is the client's
                    self._guard.check(batch[0].array, {})
                except Exception as refused:
                    failure = refused
            self._resolve([(batch[0].future, failure)])
            return
        self._last_done = time.perf_counter()
        self._last_rows = sum(item.rows for item in batch)
        elapsed = self._last_done - started
        if self._on_batch is not None:
            self._on_batch(self._last_rows, elapsed)
        results: list[tuple[asyncio.Future[dict[str, np.ndarray]], dict[str, np.ndarray] | BaseException]] = []
        guard = self._guard if self._guard is not None and self._guard.suspect(merged, outputs) else None
        offset = 0
        for item in batch:
            end = offset + item.rows
            sliced = {k: v[offset:end] for k, v in outputs.items()}
            mine: dict[str, np.ndarray] | BaseException = sliced
            if guard is not None:
                try:
                    guard.check(item.array, sliced)
                except Exception as e:
                    mine = e
            results.append((item.future, mine))
            offset = end
        self._resolve(results)

    def _resolve(self, results: list[tuple[asyncio.Future[dict[str, np.ndarray]],
                                           dict[str, np.ndarray] | BaseException]]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_set_all, results)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _set_all(results: list[tuple[asyncio.Future[dict[str, np.ndarray]],
                                 dict[str, np.ndarray] | BaseException]]) -> None:
    for future, value in results:
        if future.done():  # the client went away and the request task was cancelled
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
