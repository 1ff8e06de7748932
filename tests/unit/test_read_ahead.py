"""model_runtime.read_ahead: a job's input read in a thread ahead of the model - in order,
errors in their place, memory bounded, and no reading left running once the block is left."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from gateway.errors import SchemaMismatchError
from model_runtime.read_ahead import ReadAhead
from model_runtime.streaming import NDJSON, NPY, read_batches


def reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "read-ahead"]


class Source:
    """Items 0, 1, 2, ... (``count`` of them, or without end), counting what was asked."""

    def __init__(self, count: int | None = None, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.produced = 0
        self.taken = 0  # set by the consumer
        self.overrun = 0  # the most items ever produced beyond what was taken

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.fail_at is not None and self.produced == self.fail_at:
            raise SchemaMismatchError(f"Row {self.fail_at + 1} contains NaN or infinity.")
        if self.count is not None and self.produced == self.count:
            raise StopIteration
        self.produced += 1
        self.overrun = max(self.overrun, self.produced - self.taken)
        return self.produced - 1


def busy() -> None:
    """Work in Python, as a model's pre- and post-processing is: holds the GIL for a while."""
    sum(range(20_000))


def test_items_come_out_all_and_in_order() -> None:
    with ReadAhead(Source(1000), depth=3) as items:
        assert list(items) == list(range(1000))
    assert reading_threads() == []


def test_an_error_comes_out_after_the_items_before_it() -> None:
    got: list[int] = []
    with (
        pytest.raises(SchemaMismatchError, match="Row 8 contains NaN"),
        ReadAhead(Source(fail_at=7), depth=2) as items,
    ):
        for item in items:
            got.append(item)
    assert got == list(range(7))
    assert reading_threads() == []


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_the_reader_is_never_more_than_depth_items_ahead(depth: int) -> None:
    source = Source(300)
    with ReadAhead(source, depth=depth) as items:
        for _ in items:
            busy()  # a slow consumer: an unbounded reader would run far ahead
            source.taken += 1
    # ``depth`` ready, plus the one read while the consumer has not yet counted its last.
    assert 1 <= source.overrun <= depth + 1


def test_leaving_early_stops_the_reader_before_the_block_ends() -> None:
    source = Source()  # without end
    with ReadAhead(source, depth=2) as items:
        for item in items:
            if item == 5:
                break
    produced = source.produced
    assert reading_threads() == []  # joined: nothing reads the stream once it is closed
    assert produced <= 6 + 2
    assert source.produced == produced


def test_an_error_in_the_consumer_stops_the_reader_and_passes_through() -> None:
    source = Source()
    with pytest.raises(RuntimeError, match="model crashed"), ReadAhead(source) as items:
        for item in items:
            if item == 3:
                raise RuntimeError("model crashed")
    assert reading_threads() == []


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        ReadAhead(Source(1), depth=0)


# -- through read_batches, as the worker reads ---------------------------------------------
def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


X = np.random.default_rng(3).uniform(-4, 4, size=(5000, 8)).astype(np.float32)
NDJSON_BODY = "\n".join(str(row) for row in X.tolist()).encode()


@pytest.mark.parametrize(("body", "kind"), [(npy(X), NPY), (NDJSON_BODY, NDJSON)])
def test_batches_read_ahead_are_the_batches_read_in_line(body: bytes, kind: str) -> None:
    in_line = [(first, m.copy()) for first, m in read_batches(io.BytesIO(body), kind, 64, 8)]
    with read_batches(io.BytesIO(body), kind, 64, 8).read_ahead() as ahead:
        read_ahead = [(first, m.copy()) for first, m in ahead]
    assert [first for first, _ in read_ahead] == [first for first, _ in in_line]
    assert [len(m) for _, m in read_ahead] == [len(m) for _, m in in_line]
    np.testing.assert_array_equal(np.concatenate([m for _, m in read_ahead]), X)


def test_a_nan_read_ahead_fails_the_job_after_the_rows_before_it() -> None:
    x = X.copy()
    x[4321, 2] = np.nan
    done = 0
    with (
        pytest.raises(SchemaMismatchError, match="Row 4322 contains NaN") as caught,
        read_batches(io.BytesIO(npy(x)), NPY, 64, 8).read_ahead() as ahead,
    ):
        for _first, matrix in ahead:
            done += len(matrix)
    assert caught.value.extensions["row"] == 4322
    # Whole reads are checked before any of their batches comes out: rows of earlier reads
    # were handed on, none at or after the bad one.
    assert done < 4321
    assert reading_threads() == []
