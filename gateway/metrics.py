"""The four golden signals per model and route, kept in process: traffic and errors as
counters, latency as a window of recent samples. Read by /metrics, /status, the stats CLI
and the EMF metrics the Lambda emits."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

_SAMPLES = 2048


@dataclass(slots=True)  # not frozen: built per request (gateway/values.py)
class Sample:
    at: float
    model: str
    route: str
    status: int
    ms: float


class RequestMetrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, int], int] = {}
        self.samples: deque[Sample] = deque(maxlen=_SAMPLES)

    def record(self, model: str, route: str, status: int, ms: float) -> None:
        key = (model, route, status)
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            self.samples.append(Sample(self._clock(), model, route, status, ms))

    def window(self, seconds: float) -> list[Sample]:
        since = self._clock() - seconds
        with self._lock:
            return [s for s in self.samples if s.at >= since]

    def summary(self, seconds: float = 300.0) -> list[dict[str, object]]:
        """Per model and route over the last ``seconds``: traffic, errors, percentiles."""
        groups: dict[tuple[str, str], list[Sample]] = {}
        for sample in self.window(seconds):
            groups.setdefault((sample.model, sample.route), []).append(sample)
        rows = []
        for (model, route), samples in sorted(groups.items()):
            latencies = sorted(s.ms for s in samples if s.status < 400)
            rows.append(
                {
                    "model": model,
                    "route": route,
                    "requests": len(samples),
                    "errors": sum(1 for s in samples if s.status >= 500),
                    "rejected": sum(1 for s in samples if 400 <= s.status < 500),
                    "p50_ms": _percentile(latencies, 0.50),
                    "p95_ms": _percentile(latencies, 0.95),
                    "p99_ms": _percentile(latencies, 0.99),
                }
            )
        return rows


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)
