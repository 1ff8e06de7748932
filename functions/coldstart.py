"""The imports of a Lambda entry module without the cyclic garbage collector.

A cold start's imports allocate hundreds of thousands of objects (modules, classes,
functions, pydantic's and botocore's tables) that live as long as the process. Each time
allocations pass the collector's threshold it traverses them again, looking for garbage
that is not there: some 7 ms of the API function's cold start. Paused for the imports,
then frozen (``gc.freeze``: moved to a generation the collector no longer visits), they
cost no collection later either. Standard library only: imported before anything heavy."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """No collection inside; what was allocated inside is frozen on the way out. Leaves
    a process whose collector is off (nested, or managed by its embedder) alone."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
