"""mlbuild.runtime.serve.batching: requests share forward passes; results go back to their owners."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlbuild.runtime.serve.batching import BatcherClosed, MicroBatcher


class Recorder:
    """A stand-in forward pass (doubles its input) that records batch sizes; the first call can
    block until released, so that requests pile up behind it deterministically."""

    def __init__(self, hold_first: bool = False) -> None:
        self.sizes: list[int] = []
        self.entered = threading.Event()  # the first pass has started (and is held)
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if not self.sizes:
            self.entered.set()
            self.release.wait(10)
        self.sizes.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2, "n": np.full(len(x), len(x))}


def _rows(value: float, n: int = 1) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.float32)


async def _with_batcher(run: Recorder, coro, **kwargs):  # type: ignore[no-untyped-def]
    batcher = MicroBatcher(run, **kwargs)
    batcher.start()
    try:
        return await coro(batcher)
    finally:
        batcher.stop()


def test_queued_requests_share_a_pass_and_get_their_own_rows() -> None:
    run = Recorder(hold_first=True)

    async def scenario(b: MicroBatcher) -> list[dict[str, np.ndarray]]:
        first = asyncio.ensure_future(b.submit(_rows(0)))
        await asyncio.to_thread(run.entered.wait, 10)  # the worker is now held in the first pass
        rest = [asyncio.ensure_future(b.submit(_rows(i, n=1 + i % 2))) for i in range(1, 9)]
        await asyncio.sleep(0.01)  # every submit has queued its request (this loop does the queueing)
        run.release.set()
        return [await first, *[await r for r in rest]]

    results = asyncio.run(_with_batcher(run, scenario, max_batch_size=32, max_wait_s=0.001))
    assert run.sizes[0] == 1 and run.sizes[1] == sum(1 + i % 2 for i in range(1, 9))
    for i, out in enumerate(results[1:], start=1):
        np.testing.assert_array_equal(out["y"], _rows(i * 2, n=1 + i % 2))


def test_batches_never_exceed_max_batch_size_and_big_requests_run_alone() -> None:
    run = Recorder(hold_first=True)

    async def scenario(b: MicroBatcher) -> list[dict[str, np.ndarray]]:
        first = asyncio.ensure_future(b.submit(_rows(0)))
        await asyncio.to_thread(run.entered.wait, 10)
        rest = [asyncio.ensure_future(b.submit(_rows(1, n))) for n in (3, 3, 9, 2, 1)]
        await asyncio.sleep(0.01)  # every submit has queued its request (this loop does the queueing)
        run.release.set()
        return [await first, *[await r for r in rest]]

    results = asyncio.run(_with_batcher(run, scenario, max_batch_size=4, max_wait_s=0.001))
    assert run.sizes == [1, 3, 3, 9, 3]  # 3 | 3 (3+3 > 4) | 9 alone | 2+1
    assert [len(r["y"]) for r in results] == [1, 3, 3, 9, 2, 1]


def test_a_failing_request_does_not_fail_its_batch() -> None:
    run = Recorder(hold_first=True)

    async def scenario(b: MicroBatcher) -> list[object]:
        first = asyncio.ensure_future(b.submit(_rows(0)))
        await asyncio.to_thread(run.entered.wait, 10)
        rest = [asyncio.ensure_future(b.submit(_rows(v))) for v in (1, -1, 2)]
        await asyncio.sleep(0.01)  # every submit has queued its request (this loop does the queueing)
        run.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(_with_batcher(run, scenario))
    assert isinstance(results[2], ValueError)
    assert results[1]["y"][0, 0] == 2 and results[3]["y"][0, 0] == 4  # type: ignore[index]
    assert run.sizes == [1, 3, 1, 1, 1]  # the batch of 3 failed, then each ran alone


def test_a_lone_request_does_not_wait() -> None:
    async def scenario(b: MicroBatcher) -> float:
        start = time.perf_counter()
        await b.submit(_rows(1))
        return time.perf_counter() - start

    assert asyncio.run(_with_batcher(Recorder(), scenario, max_wait_s=5.0)) < 2.0


def test_waits_for_announced_requests() -> None:
    run = Recorder()

    async def scenario(b: MicroBatcher) -> None:
        b.arriving(2)  # two requests are reading their bodies
        first = asyncio.ensure_future(b.submit(_rows(1), arrived=True))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit(_rows(2), arrived=True))
        assert (await first)["n"][0] == 2 and (await second)["n"][0] == 2

    asyncio.run(_with_batcher(run, scenario, max_wait_s=2.0))
    assert run.sizes == [2]


def test_a_refused_announced_request_ends_the_wait() -> None:
    """The worker sleeps until the loop says the batch may be complete: an announced request
    refused before it was submitted (a bad body) wakes it, not the deadline."""
    run = Recorder()

    async def scenario(b: MicroBatcher) -> float:
        b.arriving(2)
        start = time.perf_counter()
        first = asyncio.ensure_future(b.submit(_rows(1), arrived=True))
        await asyncio.sleep(0.05)
        b.arriving(-1)   # the other one's body was refused
        assert (await first)["n"][0] == 1
        return time.perf_counter() - start

    assert asyncio.run(_with_batcher(run, scenario, max_wait_s=5.0)) < 2.0
    assert run.sizes == [1]


def test_stop_while_the_worker_waits_ends_the_wait() -> None:
    """stop() wakes a worker waiting for an announced request: the batch in hand runs, at once."""
    run = Recorder()

    async def scenario() -> float:
        b = MicroBatcher(run, max_wait_s=5.0)
        b.start()
        b.arriving(2)
        first = asyncio.ensure_future(b.submit(_rows(1), arrived=True))
        await asyncio.sleep(0.05)   # the worker waits for the other announced request
        start = time.perf_counter()
        await asyncio.to_thread(b.stop)
        assert (await first)["n"][0] == 1
        return time.perf_counter() - start

    assert asyncio.run(scenario()) < 2.0
    assert run.sizes == [1]


def test_waits_for_the_last_batch_clients_to_come_back() -> None:
    """Two cohorts (A computing, B queued behind it) merge: B waits for A's clients to return
    instead of running half full, so a compute-bound model pays one pass, not two."""
    run = Recorder(hold_first=True)

    async def scenario(b: MicroBatcher) -> float:
        a = asyncio.ensure_future(b.submit(_rows(0, n=2)))
        await asyncio.to_thread(run.entered.wait, 10)
        queued_b = asyncio.ensure_future(b.submit(_rows(1, n=2)))     # queued while A computes
        await asyncio.sleep(0.01)
        run.release.set()
        await a
        start = time.perf_counter()
        c = await b.submit(_rows(2, n=2))                              # A's client comes back
        assert (await queued_b)["n"][0] == 4 and c["n"][0] == 4
        return time.perf_counter() - start

    elapsed = asyncio.run(_with_batcher(run, scenario, max_batch_size=4, max_wait_s=2.0))
    assert run.sizes == [2, 4]
    assert elapsed < 1.0   # the batch ran once it was full, not at the deadline


def test_a_lone_client_is_never_delayed_between_its_requests() -> None:
    async def scenario(b: MicroBatcher) -> float:
        start = time.perf_counter()
        for i in range(5):
            await b.submit(_rows(i))   # each request is the return of the last batch's only client
        return time.perf_counter() - start

    run = Recorder()
    assert asyncio.run(_with_batcher(run, scenario, max_wait_s=5.0)) < 2.0
    assert run.sizes == [1] * 5


def test_the_first_request_after_a_burst_does_not_wait() -> None:
    async def scenario(b: MicroBatcher) -> float:
        await asyncio.gather(*[b.submit(_rows(i)) for i in range(3)])   # a burst
        await asyncio.sleep(0.6)                                        # longer than max_wait
        start = time.perf_counter()
        await b.submit(_rows(9))
        return time.perf_counter() - start

    assert asyncio.run(_with_batcher(Recorder(), scenario, max_wait_s=0.5)) < 0.25


def test_stop_and_metrics_hook() -> None:
    seen: list[tuple[int, float]] = []

    async def scenario() -> None:
        b = MicroBatcher(Recorder(), on_batch=lambda rows, secs: seen.append((rows, secs)))
        b.start()
        await b.submit(_rows(1, 3))
        await asyncio.to_thread(b.stop)
        with pytest.raises(BatcherClosed):
            await b.submit(_rows(1))
        b.stop()  # idempotent

    asyncio.run(scenario())
    assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] >= 0


def test_thread_init_runs_in_the_worker_thread() -> None:
    names: list[str] = []

    async def scenario() -> None:
        b = MicroBatcher(Recorder(), thread_init=lambda: names.append(threading.current_thread().name))
        b.start()
        await b.submit(_rows(1))
        await asyncio.to_thread(b.stop)

    asyncio.run(scenario())
    assert names == ["mlbuild-batcher"]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # 3e38 * 2, on purpose
def test_the_nonfinite_check_answers_only_its_own_request() -> None:
    """A suspect batch (here: outputs not all finite): the guard's check runs per request in the
    worker, and only the request it refuses gets the error; a batch that is not suspect is not checked."""
    run = Recorder(hold_first=True)
    checked: list[int] = []

    class Guard:
        def suspect(self, x: np.ndarray, out: dict[str, np.ndarray]) -> bool:
            return not np.isfinite(out["y"]).all()

        def check(self, x: np.ndarray, out: dict[str, np.ndarray]) -> None:
            checked.append(len(x))
            if not np.isfinite(out["y"]).all():
                raise ValueError("overflow")

    async def scenario(b: MicroBatcher) -> list[object]:
        first = asyncio.ensure_future(b.submit(_rows(0)))
        await asyncio.to_thread(run.entered.wait, 10)
        rest = [asyncio.ensure_future(b.submit(_rows(v))) for v in (1.0, 3e38, 2.0)]   # 3e38 * 2: inf
        await asyncio.sleep(0.01)
        run.release.set()
        return [await first, *(await asyncio.gather(*rest, return_exceptions=True))]

    results = asyncio.run(_with_batcher(run, scenario, max_batch_size=32, max_wait_s=0.001, guard=Guard()))
    assert run.sizes == [1, 3] and checked == [1, 1, 1]   # the first (finite) batch was not checked
    assert isinstance(results[2], ValueError)
    np.testing.assert_array_equal(results[1]["y"], _rows(2.0))   # type: ignore[index]
    np.testing.assert_array_equal(results[3]["y"], _rows(4.0))   # type: ignore[index]


def test_a_request_that_fails_alone_is_checked_by_the_guard_first() -> None:
    """A row far beyond the training data's scale that makes the model raise is refused as such
    (the guard's error, a 400 in the app), not answered as the model's failure."""
    run = Recorder()

    class Guard:
        def suspect(self, x: np.ndarray, out: dict[str, np.ndarray]) -> bool:
            return False

        def check(self, x: np.ndarray, out: dict[str, np.ndarray]) -> None:
            if (np.abs(x) > 1e6).any():
                raise LookupError("far beyond the training data")

    async def scenario(b: MicroBatcher) -> list[object]:
        return list(await asyncio.gather(b.submit(_rows(-1e9)), b.submit(_rows(-1)), return_exceptions=True))

    results = asyncio.run(_with_batcher(run, scenario, guard=Guard()))
    assert isinstance(results[0], LookupError)   # the guard's refusal
    assert isinstance(results[1], ValueError)    # an ordinary row: the model's own error
