"""Reading a job's input in a thread of its own, a few reads ahead of the model.

A worker alternates between reading (a socket read from S3, a NaN check, a parse) and
inference. Inference runs outside the GIL - on a GPU, or in onnxruntime's own threads - so
while the model works on one read, the next can be fetched and checked: the model waits
for input only when reading is slower than inference. This is the prefetch of a training
input pipeline (PyTorch's DataLoader, tf.data), applied to one stream: items come out in
order, an error comes out where it happened (after the items before it), and memory stays
bounded by ``depth``."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    """The producer's last entry: the items ran out, or raised ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterates ``items`` in a thread, at most ``depth`` items ahead of the consumer.

    Use as a context manager and iterate what it gives: leaving the block - at the end, on
    an error, or early - stops the thread and waits for it, so the stream under ``items``
    may be closed right after. ``items`` must not be touched by anyone else meanwhile."""

    def __init__(self, items: Iterator[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._items = items
        self._ready: queue.SimpleQueue[tuple[T] | _End] = queue.SimpleQueue()
        # One permit per item the producer may have ready; the consumer returns one for
        # each item it takes, so at most ``depth`` wait while it works on another.
        self._room = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="read-ahead", daemon=True)

    def __enter__(self) -> Iterator[T]:
        self._thread.start()
        return self._consume()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._room.release()  # a producer waiting for room wakes, sees the stop, returns
        self._thread.join()

    def _consume(self) -> Iterator[T]:
        while True:
            entry = self._ready.get()
            if isinstance(entry, _End):
                if entry.error is not None:
                    raise entry.error
                return
            self._room.release()
            yield entry[0]

    def _produce(self) -> None:
        try:
            while True:
                self._room.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(self._items)
                except StopIteration:
                    self._ready.put(_End())
                    return
                self._ready.put((item,))
        except BaseException as error:  # handed to the consumer, in its place in the order
            self._ready.put(_End(error))
