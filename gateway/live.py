"""Live state of each backend, per process: latency, in-flight, errors, circuit breaker,
warm or cold. Updated on every call, read by the router in microseconds."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.models import EndpointTarget

_EWMA_ALPHA = 0.2
_WINDOW = 512
# A slow estimate fades back to the configured one (at this half-life, once no call has
# completed for the grace time): a backend the router avoids for being slow gets no new
# samples, and without the fade one slow spell would keep it avoided for good. Traffic
# returns and measures it again.
SLOW_ESTIMATE_GRACE_S = 3.0
SLOW_ESTIMATE_HALF_LIFE_S = 2.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``open_for_s`` lets one probe
    through (half-open); the probe's success closes it, its failure opens it again."""

    def __init__(self, threshold: int = 3, open_for_s: float = 5.0) -> None:
        self.threshold = threshold
        self.open_for_s = open_for_s
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.opened_count = 0

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.open_for_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows(self, now: float) -> bool:
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.probing
        )

    def retry_after_s(self, now: float) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.open_for_s - (now - self.opened_at))

    def claim(self, now: float) -> bool:
        """Whether a call may start now. Half-open, the first claim takes the one probe slot
        and later ones are refused until the probe ends; open, every claim is refused."""
        if not self.allows(now):
            return False
        if self.opened_at is not None:  # allowed and not closed: half-open, this is the probe
            self.probing = True
        return True

    def on_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def on_failure(self, now: float) -> None:
        self.failures += 1
        half_open = self.opened_at is not None
        if half_open or self.failures >= self.threshold:
            if self.opened_at is None:
                self.opened_count += 1
            self.opened_at = now
        self.probing = False


@dataclass(frozen=True, slots=True)
class BackendView:
    """What the router needs to know about one backend, right now."""

    available: bool  # breaker closed, or half-open with the probe slot free
    saturated: bool  # in flight >= capacity
    expected_ms: float  # latency estimate, cold start included when cold
    cold: bool = False
    retry_after_s: float = 0.0


class BackendStats:
    def __init__(self, name: str, breaker: CircuitBreaker) -> None:
        self.name = name
        self.breaker = breaker
        self.in_flight = 0
        self.ewma_ms: float | None = None
        self.latencies: deque[float] = deque(maxlen=_WINDOW)
        self.outcomes: deque[bool] = deque(maxlen=100)
        self.last_used: float | None = None
        self.last_sample: float | None = None  # when a call last completed
        self.calls = 0
        self.failures = 0
        self.cold_starts = 0
        self.cold_start_ms: float | None = None  # measured, when the backend reports it

    def view(self, target: EndpointTarget, now: float) -> BackendView:
        cold = target.idle_timeout_s is not None and (
            self.last_used is None or now - self.last_used > target.idle_timeout_s
        )
        expected = self._latency_estimate(target.expected_latency_ms, now)
        if cold:
            expected += (
                self.cold_start_ms if self.cold_start_ms is not None else target.cold_start_ms
            )
        return BackendView(
            available=self.breaker.allows(now),
            saturated=self.in_flight >= target.capacity,
            expected_ms=expected,
            cold=cold,
            retry_after_s=self.breaker.retry_after_s(now),
        )

    def _latency_estimate(self, prior_ms: float, now: float) -> float:
        if self.ewma_ms is None:
            return prior_ms
        stale_s = 0.0 if self.last_sample is None else now - self.last_sample
        if self.ewma_ms <= prior_ms or stale_s <= SLOW_ESTIMATE_GRACE_S:
            return self.ewma_ms
        fade: float = 0.5 ** ((stale_s - SLOW_ESTIMATE_GRACE_S) / SLOW_ESTIMATE_HALF_LIFE_S)
        return prior_ms + (self.ewma_ms - prior_ms) * fade

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def error_rate(self) -> float:
        return 0.0 if not self.outcomes else self.outcomes.count(False) / len(self.outcomes)


class LiveState:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        breaker: Callable[[], CircuitBreaker] = CircuitBreaker,
    ) -> None:
        self._clock = clock
        self._breaker = breaker
        self._stats: dict[str, BackendStats] = {}
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._clock()

    def stats(self, target: EndpointTarget) -> BackendStats:
        stats = self._stats.get(target.endpoint_name)
        if stats is None:
            with self._lock:
                stats = self._stats.setdefault(
                    target.endpoint_name, BackendStats(target.endpoint_name, self._breaker())
                )
        return stats

    def view(self, target: EndpointTarget) -> BackendView:
        return self.stats(target).view(target, self._clock())

    def begin(self, target: EndpointTarget) -> float | None:
        """Counts a call to ``target`` as started (the time, for ``end``), or refuses it
        (None) when the target's breaker does. The router read the breaker earlier, maybe
        in another thread or before an await: two requests planned on the same half-open
        view would both probe, so the breaker is asked again here, under the lock."""
        stats = self.stats(target)
        now = self._clock()
        with self._lock:
            if not stats.breaker.claim(now):
                return None
            stats.in_flight += 1
            stats.calls += 1
            if stats.view(target, now).cold:
                stats.cold_starts += 1
            stats.last_used = now
        return now

    def end(
        self, target: EndpointTarget, started: float, ok: bool, cold_start_ms: float | None = None
    ) -> None:
        stats = self.stats(target)
        now = self._clock()
        elapsed_ms = (now - started) * 1000
        if cold_start_ms is not None:
            # A cold start is its own estimate; the latency EWMA is for warm calls.
            elapsed_ms = max(0.0, elapsed_ms - cold_start_ms)
            stats.cold_start_ms = cold_start_ms
        with self._lock:
            stats.in_flight -= 1
            stats.last_used = now
            stats.outcomes.append(ok)
            if ok:
                stats.breaker.on_success()
                stats.latencies.append(elapsed_ms)
                # Updated from the estimate as it stands now (faded if it had gone stale).
                current = stats._latency_estimate(target.expected_latency_ms, now)
                stats.ewma_ms = (
                    elapsed_ms
                    if stats.ewma_ms is None
                    else current + _EWMA_ALPHA * (elapsed_ms - current)
                )
                stats.last_sample = now
            else:
                stats.failures += 1
                stats.breaker.on_failure(now)

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {
            name: {
                "in_flight": s.in_flight,
                "calls": s.calls,
                "failures": s.failures,
                "error_rate": round(s.error_rate(), 4),
                "ewma_ms": None if s.ewma_ms is None else round(s.ewma_ms, 3),
                "p50_ms": s.percentile(0.5),
                "p99_ms": s.percentile(0.99),
                "breaker": s.breaker.state(now).value,
                "breaker_opened": s.breaker.opened_count,
                "cold_starts": s.cold_starts,
                "cold_start_ms": s.cold_start_ms,
                "idle_s": None if s.last_used is None else round(now - s.last_used, 3),
            }
            for name, s in self._stats.items()
        }
