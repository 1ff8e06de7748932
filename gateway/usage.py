"""Requests counted per tenant, model and day: in memory on the request path, written to
the usage store in batches so no request pays a store round trip for it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from gateway.errors import DependencyUnavailableError
from gateway.ports import UsageStore

log = logging.getLogger(__name__)
UsageKey = tuple[str, str, str]  # tenant, day (YYYY-MM-DD), model


class UsageRecorder:
    def __init__(
        self,
        store: UsageStore,
        flush_every_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
    ) -> None:
        self._store = store
        self._every = flush_every_s
        self._clock = clock
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="usage")
        self._pending: dict[UsageKey, list[int]] = {}
        self._lock = threading.Lock()
        self._last_flush = clock()
        self._flushing = False
        self._day_index = -1
        self._day_text = ""

    def record(self, tenant: str, model: str, ok: bool) -> None:
        now = self._clock()
        key = (tenant, self._day(now), model)
        with self._lock:
            counts = self._pending.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += 0 if ok else 1
            due = now - self._last_flush >= self._every and not self._flushing
            if due:
                self._flushing = True
        if due:
            self._executor.submit(self.flush)

    def _day(self, now: float) -> str:
        """The UTC date of ``now``, formatted once a day rather than once a request."""
        index = int(now // 86_400)
        if index != self._day_index:
            self._day_text = time.strftime("%Y-%m-%d", time.gmtime(now))
            self._day_index = index
        return self._day_text

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            self._last_flush = self._clock()
        try:
            if batch:
                self._store.add({k: (v[0], v[1]) for k, v in batch.items()})
        except DependencyUnavailableError as exc:
            # The store adds counters in order and says how many it wrote before failing:
            # only the rest is kept, so nothing is counted twice.
            written = exc.extensions.get("written", 0)
            rest = list(batch.items())[written if isinstance(written, int) else 0 :]
            log.warning("usage store unavailable; keeping %d counters for next flush", len(rest))
            with self._lock:
                for key, (requests, errors) in rest:
                    counts = self._pending.setdefault(key, [0, 0])
                    counts[0] += requests
                    counts[1] += errors
        finally:
            self._flushing = False
