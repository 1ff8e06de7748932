"""model_server.batching: concurrent requests share one model call, each caller gets its own
rows back, and neither a bad request, a failed batch nor a different shape touches the rest.

Real asyncio throughout. Where a test needs to know that something has happened (a batch
started, a caller is queued), it awaits a future or an event; ``asyncio.wait_for`` bounds
only how long a broken batcher may hang a test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from gateway.errors import GatewayError, SchemaMismatchError
from model_server.batching import Batcher, BatchPolicy, Outputs, split

T = TypeVar("T")
HANG_GUARD_S = 10.0
NEVER_S = 3600.0  # a delay no test waits out: only a full batch releases it


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, HANG_GUARD_S))


def rows(first: float, n: int, width: int = 3) -> np.ndarray:
    """``n`` rows whose values tell where they came from: row i is ``first + i`` throughout."""
    return np.repeat(np.arange(first, first + n, dtype=np.float32)[:, None], width, axis=1)


class Model:
    """A stand-in for ``OnnxModel.predict`` that records every call it gets."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.threads: list[int] = []
        self.fail_on = fail_on

    def __call__(self, matrix: np.ndarray) -> Outputs:
        self.calls.append(matrix.copy())
        self.threads.append(threading.get_ident())
        if self.fail_on is not None and (matrix == self.fail_on).any():
            raise RuntimeError("the runtime fell over")
        return {"doubled": matrix * 2, "label": matrix[:, 0].astype(np.int64)}

    def batch_sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


def batcher(
    model: Callable[[np.ndarray], Outputs],
    max_rows: int,
    delay_s: float = 0.0,
    inline_rows: int = 0,
) -> Batcher:
    return Batcher(model, BatchPolicy(max_rows, delay_s, inline_rows))


def assert_own_rows(matrix: np.ndarray, outputs: Outputs | BaseException) -> None:
    assert not isinstance(outputs, BaseException), outputs
    np.testing.assert_array_equal(outputs["doubled"], matrix * 2)
    np.testing.assert_array_equal(outputs["label"], matrix[:, 0].astype(np.int64))


async def gather(b: Batcher, *matrices: np.ndarray) -> list[Outputs | BaseException]:
    return list(await asyncio.gather(*(b.predict(m) for m in matrices), return_exceptions=True))


@pytest.mark.parametrize("inline_rows", [0, 64], ids=["worker-thread", "inline"])
def test_concurrent_requests_share_one_call_and_each_gets_its_own_rows(inline_rows: int) -> None:
    model = Model()
    requests = [rows(0, 1), rows(10, 3), rows(20, 2), rows(30, 4)]

    async def scenario() -> list[Outputs | BaseException]:
        # The four fill the batch exactly: it must run at once, not after the delay.
        b = batcher(model, max_rows=10, delay_s=NEVER_S, inline_rows=inline_rows)
        try:
            return await gather(b, *requests)
        finally:
            b.close()

    results = run(scenario())
    assert model.batch_sizes() == [10]
    np.testing.assert_array_equal(model.calls[0], np.concatenate(requests))  # arrival order
    for matrix, outputs in zip(requests, results, strict=True):
        assert_own_rows(matrix, outputs)


def test_small_batches_run_on_the_event_loop_and_large_ones_in_the_worker_thread() -> None:
    model = Model()

    async def scenario() -> int:
        b = batcher(model, max_rows=8, inline_rows=2)
        try:
            await gather(b, rows(0, 1), rows(1, 1))  # 2 rows: inline
            await gather(b, rows(0, 2), rows(2, 1))  # 3 rows: the thread
            return threading.get_ident()
        finally:
            b.close()

    loop_thread = run(scenario())
    assert model.batch_sizes() == [2, 3]
    assert model.threads[0] == loop_thread
    assert model.threads[1] != loop_thread


def test_a_batch_waits_for_its_delay_until_enough_rows_arrive() -> None:
    model = Model()

    async def scenario() -> None:
        b = batcher(model, max_rows=4, delay_s=NEVER_S)
        try:
            early = [asyncio.ensure_future(b.predict(rows(i, 1))) for i in range(2)]
            # Long enough for a batcher that does not wait to have answered both.
            done, _ = await asyncio.wait(early, timeout=0.05)
            assert not done and model.calls == []
            late = await gather(b, rows(2, 2))
            for i, outputs in enumerate([*(await asyncio.gather(*early)), *late]):
                assert_own_rows(rows(i, 1 if i < 2 else 2), outputs)
        finally:
            b.close()

    run(scenario())
    assert model.batch_sizes() == [4]


def test_the_delay_releases_a_batch_that_never_fills() -> None:
    model = Model()
    delay_s = 0.05
    released: list[float] = []

    def timed(matrix: np.ndarray) -> Outputs:
        released.append(asyncio.get_running_loop().time())
        return model(matrix)

    async def scenario() -> float:
        b = batcher(timed, max_rows=100, delay_s=delay_s, inline_rows=100)
        try:
            submitted = asyncio.get_running_loop().time()
            results = await gather(b, rows(0, 1), rows(1, 2))
            assert not any(isinstance(r, BaseException) for r in results)
            return submitted
        finally:
            b.close()

    submitted = run(scenario())
    assert model.batch_sizes() == [3]
    # Not a speed limit: the batcher must not release the batch before its delay is up
    # (a millisecond of slack for the clock's granularity).
    assert released[0] - submitted >= delay_s - 0.001


def test_max_rows_splits_the_queue_into_batches_in_arrival_order() -> None:
    model = Model()
    requests = [rows(i, 1) for i in range(10)]

    async def scenario() -> list[Outputs | BaseException]:
        b = batcher(model, max_rows=4)
        try:
            return await gather(b, *requests)
        finally:
            b.close()

    results = run(scenario())
    assert model.batch_sizes() == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(model.calls), np.concatenate(requests))
    for matrix, outputs in zip(requests, results, strict=True):
        assert_own_rows(matrix, outputs)


def test_a_request_larger_than_a_batch_runs_alone_in_its_turn() -> None:
    model = Model()
    requests = [rows(0, 1), rows(1, 6), rows(7, 1)]

    async def scenario() -> list[Outputs | BaseException]:
        b = batcher(model, max_rows=4)
        try:
            return await gather(b, *requests)
        finally:
            b.close()

    results = run(scenario())
    assert model.batch_sizes() == [1, 6, 1]
    for matrix, outputs in zip(requests, results, strict=True):
        assert_own_rows(matrix, outputs)


def test_the_next_batch_forms_while_one_runs_in_the_worker_thread() -> None:
    model = Model()
    release = threading.Event()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def slow(matrix: np.ndarray) -> Outputs:
            loop.call_soon_threadsafe(started.set)
            if not release.wait(HANG_GUARD_S):
                raise TimeoutError("never released")
            return model(matrix)

        b = batcher(slow, max_rows=8)
        try:
            first = asyncio.ensure_future(b.predict(rows(0, 1)))
            await started.wait()  # the first batch holds the worker thread ...
            queued = [asyncio.ensure_future(b.predict(rows(i, 1))) for i in (1, 2)]
            release.set()  # ... and the event loop took two more requests meanwhile
            results = await asyncio.gather(first, *queued)
            for i, outputs in enumerate(results):
                assert_own_rows(rows(i, 1), outputs)
        finally:
            release.set()
            b.close()

    run(scenario())
    assert model.batch_sizes() == [1, 2]


def test_different_feature_counts_are_never_stacked() -> None:
    model = Model()
    requests = [rows(0, 1, width=3), rows(1, 2, width=5), rows(3, 1, width=3), rows(4, 1, 5)]

    async def scenario() -> list[Outputs | BaseException]:
        b = batcher(model, max_rows=100)
        try:
            return await gather(b, *requests)
        finally:
            b.close()

    results = run(scenario())
    assert sorted(call.shape for call in model.calls) == [(2, 3), (3, 5)]
    for matrix, outputs in zip(requests, results, strict=True):
        assert_own_rows(matrix, outputs)


def test_a_full_batch_of_one_width_does_not_take_rows_of_another() -> None:
    model = Model()

    async def scenario() -> None:
        b = batcher(model, max_rows=4, delay_s=NEVER_S)
        try:
            narrow = [asyncio.ensure_future(b.predict(rows(i, 1, width=3))) for i in range(2)]
            wide = asyncio.ensure_future(b.predict(rows(9, 2, width=5)))
            # Four rows are waiting, but no width has four: nothing may run.
            done, _ = await asyncio.wait([*narrow, wide], timeout=0.05)
            assert not done and model.calls == []
            narrow.append(asyncio.ensure_future(b.predict(rows(2, 2, width=3))))
            await asyncio.gather(*narrow)
            assert not wide.done()
            wide.cancel()
        finally:
            b.close()

    run(scenario())
    assert [call.shape for call in model.calls] == [(4, 3)]


def test_a_failing_batch_fails_only_its_own_requests_with_a_5xx_problem() -> None:
    model = Model(fail_on=-1.0)
    requests = [rows(0, 1), rows(-1, 1), rows(5, 1), rows(6, 1)]  # the second poisons

    async def scenario() -> list[Outputs | BaseException]:
        b = batcher(model, max_rows=2)
        try:
            results = await gather(b, *requests)
            assert b.stats.failed_batches == 1
            return results
        finally:
            b.close()

    results = run(scenario())
    assert model.batch_sizes() == [2, 2]
    for failed in results[:2]:
        assert isinstance(failed, GatewayError)
        assert failed.status == 500
        assert "batch of 2 request(s)" in failed.detail
        assert "RuntimeError: the runtime fell over" in failed.detail
        assert failed.extensions == {"batch_requests": 2, "batch_rows": 2}
    assert results[0] is not results[1]  # each caller its own exception
    for matrix, outputs in zip(requests[2:], results[2:], strict=True):
        assert_own_rows(matrix, outputs)


def test_a_batch_of_one_gets_the_models_own_error() -> None:
    def refuse(matrix: np.ndarray) -> Outputs:
        raise SchemaMismatchError("Rows have 3 features; the model expects 64.")

    async def scenario() -> BaseException | Outputs:
        b = batcher(refuse, max_rows=4)
        try:
            return (await gather(b, rows(0, 1)))[0]
        finally:
            b.close()

    error = run(scenario())
    assert isinstance(error, SchemaMismatchError) and error.status == 422


def test_outputs_that_do_not_follow_the_rows_fail_the_batch() -> None:
    def pooled(matrix: np.ndarray) -> Outputs:
        return {"mean": matrix.mean(axis=0)}  # one entry for the whole batch

    async def scenario() -> list[Outputs | BaseException]:
        b = batcher(pooled, max_rows=2)
        try:
            return await gather(b, rows(0, 1), rows(1, 1))
        finally:
            b.close()

    for result in run(scenario()):
        assert isinstance(result, GatewayError) and result.status == 500
        assert "needs one entry per row" in result.detail


def test_a_caller_that_went_away_is_left_out_of_the_batch() -> None:
    model = Model()

    async def scenario() -> None:
        b = batcher(model, max_rows=3, delay_s=NEVER_S)
        try:
            gone = asyncio.ensure_future(b.predict(rows(100, 1)))
            stays = asyncio.ensure_future(b.predict(rows(0, 1)))
            done, _ = await asyncio.wait([gone, stays], timeout=0.01)
            assert not done
            gone.cancel()
            rest = await gather(b, rows(1, 1), rows(2, 1))
            for i, outputs in enumerate([await stays, *rest]):
                assert_own_rows(rows(i, 1), outputs)
        finally:
            b.close()

    run(scenario())
    assert model.batch_sizes() == [3]
    assert 100 not in model.calls[0]


def test_stats_count_batches_requests_and_rows() -> None:
    async def scenario() -> dict[str, int]:
        b = batcher(Model(), max_rows=4)
        try:
            await gather(b, rows(0, 1), rows(1, 3), rows(4, 2))
            return b.stats.as_dict()
        finally:
            b.close()

    assert run(scenario()) == {"batches": 2, "requests": 3, "rows": 6, "failed_batches": 0}


def test_split_gives_each_request_its_rows() -> None:
    outputs = {"label": np.arange(6), "probabilities": np.arange(12).reshape(6, 2)}
    parts = split(outputs, [1, 0, 3, 2])
    assert [len(p["label"]) for p in parts] == [1, 0, 3, 2]
    np.testing.assert_array_equal(parts[2]["label"], [1, 2, 3])
    np.testing.assert_array_equal(parts[3]["probabilities"], [[8, 9], [10, 11]])


@pytest.mark.parametrize(("max_rows", "delay_s"), [(1, 0.001), (0, 0.001), (8, -0.001)])
def test_a_policy_that_cannot_batch_is_refused(max_rows: int, delay_s: float) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_rows, delay_s)


def test_close_cancels_callers_still_waiting() -> None:
    async def scenario() -> None:
        b = batcher(Model(), max_rows=4, delay_s=NEVER_S)
        waiting = asyncio.ensure_future(b.predict(rows(0, 1)))
        done, _ = await asyncio.wait([waiting], timeout=0.01)
        assert not done
        b.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    run(scenario())
