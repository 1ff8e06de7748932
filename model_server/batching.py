"""Dynamic batching, as Triton's dynamic batcher: concurrent small requests that arrive within
a short window become one model call, and each caller gets its own rows of the outputs back.

A model call has a fixed cost (argument checks, session dispatch) that a one-row request pays
in full; stacking rows pays it once per batch. With no delay (Triton's default, and this
server's) a batch is whatever queued while the event loop was busy with other requests.

One batch runs at a time per input shape. A big batch runs in a worker thread, so that the
event loop keeps parsing requests into the next one; a small one runs on the event loop,
because for a small model the two thread hops cost more than the call itself
(bench/model_server.py measures both).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.errors import GatewayError

Outputs = dict[str, np.ndarray]
Predict = Callable[[np.ndarray], Outputs]
_REASON_CHARS = 300  # of the runtime's message in a failed batch's problem: enough to act on


@dataclasses.dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_rows: int
    max_delay_s: float
    inline_rows: int = 0  # batches of at most this many rows run on the event loop

    def __post_init__(self) -> None:
        if self.max_rows < 2:
            raise ValueError("a batch needs room for at least 2 rows; below that, batch nothing")
        if self.max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")


@dataclasses.dataclass(slots=True)
class BatchStats:
    batches: int = 0
    requests: int = 0
    rows: int = 0
    failed_batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class _Pending:
    matrix: np.ndarray
    future: asyncio.Future[Outputs]
    arrived: float

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])


class _Lane:
    """The queue of one input shape: only matrices in the same lane are ever stacked."""

    __slots__ = ("queue", "rows", "wake", "worker")

    def __init__(self) -> None:
        self.queue: deque[_Pending] = deque()
        self.rows = 0
        self.wake: asyncio.Future[None] | None = None  # set while waiting for more rows
        self.worker: asyncio.Task[None] | None = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Batcher:
    """Collects rows until ``max_rows`` are waiting or the oldest request has waited
    ``max_delay_s``, then runs them with one ``predict`` call.

    Callers validate their own matrix first (a request the model would refuse must fail
    alone, with its own 4xx); the batcher only keeps shapes apart."""

    def __init__(self, predict: Predict, policy: BatchPolicy) -> None:
        self.policy = policy
        self.stats = BatchStats()
        self._predict = predict
        self._lanes: dict[Hashable, _Lane] = {}
        # One thread: batches run one after another, as on one Triton model instance, and
        # they never take a core from the event loop, the bottleneck for small models.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-batch")

    async def predict(self, matrix: np.ndarray) -> Outputs:
        """The outputs for ``matrix``'s rows (batch-major: ``matrix.shape[0]`` rows)."""
        if matrix.ndim < 1:
            raise ValueError("a batch needs a leading row dimension")
        loop = asyncio.get_running_loop()
        key = (matrix.shape[1:], matrix.dtype.str)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        pending = _Pending(matrix, loop.create_future(), loop.time())
        lane.queue.append(pending)
        lane.rows += pending.rows
        if lane.worker is None:
            lane.worker = loop.create_task(self._drain(key, lane))
        elif lane.rows >= self.policy.max_rows and lane.wake is not None:
            _settle(lane.wake)
        return await pending.future

    def close(self) -> None:
        for lane in self._lanes.values():
            if lane.worker is not None:
                lane.worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, key: Hashable, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.queue:
                await self._fill(lane, loop)
                batch = self._take(lane)
                if batch:
                    await self._run(batch, loop)
        finally:
            lane.worker = None
            if not lane.queue:
                del self._lanes[key]
            for pending in lane.queue:  # only when cancelled: the server is stopping
                pending.future.cancel()

    async def _fill(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the lane holds ``max_rows`` or its oldest request's delay is up."""
        deadline = lane.queue[0].arrived + self.policy.max_delay_s
        while lane.rows < self.policy.max_rows and loop.time() < deadline:
            lane.wake = loop.create_future()
            timer = loop.call_at(deadline, _settle, lane.wake)
            try:
                await lane.wake
            finally:
                timer.cancel()
                lane.wake = None

    def _take(self, lane: _Lane) -> list[_Pending]:
        """The oldest requests that fit in ``max_rows`` together (the first always fits:
        a request larger than a batch runs alone)."""
        batch: list[_Pending] = []
        rows = 0
        while lane.queue:
            head = lane.queue[0]
            if head.future.done():  # its caller went away: nobody to answer
                lane.queue.popleft()
                lane.rows -= head.rows
                continue
            if batch and rows + head.rows > self.policy.max_rows:
                break
            lane.queue.popleft()
            lane.rows -= head.rows
            rows += head.rows
            batch.append(head)
        return batch

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        matrices = [p.matrix for p in batch]
        rows = sum(p.rows for p in batch)
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.rows += rows
        try:
            if rows <= self.policy.inline_rows:
                parts = self._predict_split(matrices)
            else:
                parts = await loop.run_in_executor(self._executor, self._predict_split, matrices)
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as exc:
            self.stats.failed_batches += 1
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(_failure(exc, batch))
            return
        for pending, part in zip(batch, parts, strict=True):
            if not pending.future.done():
                pending.future.set_result(part)

    def _predict_split(self, matrices: list[np.ndarray]) -> list[Outputs]:
        if len(matrices) == 1:
            return [self._predict(matrices[0])]
        return split(self._predict(np.concatenate(matrices)), [m.shape[0] for m in matrices])


def split(outputs: Outputs, sizes: Sequence[int]) -> list[Outputs]:
    """Each request's rows of a batch's outputs (views, no copies)."""
    total = sum(sizes)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            # A model whose outputs do not follow its input rows cannot be batched.
            raise ValueError(
                f"output {name!r} has shape {list(value.shape)}; a batch of {total} rows "
                "needs one entry per row"
            )
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [
        {name: value[start:stop] for name, value in outputs.items()}
        for start, stop in itertools.pairwise(bounds)
    ]


def _failure(exc: Exception, batch: list[_Pending]) -> Exception:
    if len(batch) == 1 and isinstance(exc, GatewayError):
        return exc  # a batch of one: the model's own answer, exactly as without batching
    reason = f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]
    return GatewayError(
        f"The model failed on a batch of {len(batch)} request(s) that this request was "
        f"part of ({reason}).",
        batch_requests=len(batch),
        batch_rows=sum(p.rows for p in batch),
    )
