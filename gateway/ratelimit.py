"""Distributed rate limits and quotas without a store round trip per request.

Each shared limit is a token bucket held in the limit store (DynamoDB). A gateway process
does not ask the store on every request: it *leases* a small batch of tokens with one
conditional write and admits requests from that batch locally, refilling it in the
background before it runs out.

Bound (stated and tested): leased tokens are taken from the shared bucket when leased, so
the total admitted by all processes over any interval of length T is at most
``burst + rate * T + 2 * instances * batch``: the bucket's own allowance plus what the
processes held when the interval began. A process holds at most two batches: the one it
is spending and a refill requested at half a batch, or a synchronous lease taken while that
refill was still on its way. Unspent leases are dropped after ``lease_ttl_s``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from gateway.errors import DependencyUnavailableError
from gateway.ports import LimitStore


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class Limit:
    """One token bucket: ``rate`` tokens a second up to ``burst``; rate 0 makes a quota."""

    name: str  # what the client sees in RateLimit-Policy: "key", "tenant", "model", "daily"
    key: str  # the bucket's key in the store
    rate: float
    burst: int
    window_s: int  # advertised window: burst / rate, or the quota period
    expires_at: float | None = None  # quota buckets end with their period


def take(
    state: BucketState | None, now: float, rate: float, burst: int, want: int
) -> tuple[int, BucketState]:
    """Pure token-bucket step: refill for the time elapsed, grant up to ``want``."""
    if state is None:
        tokens = float(burst)
    else:
        elapsed = max(0.0, now - state.updated)  # a clock running backwards refills nothing
        tokens = min(float(burst), state.tokens + elapsed * rate)
    # Tolerance for float time: a caller that waited exactly the advertised time must find
    # the token there, not 0.99999976 of it (epoch seconds carry ~2.4e-7 s of rounding).
    epsilon = 1e-9 + rate * 1e-6
    granted = max(0, min(want, math.floor(tokens + epsilon)))
    left = max(0.0, tokens - granted)
    return granted, BucketState(left, now if state is None else max(now, state.updated))


def seconds_until(tokens: float, rate: float, need: float = 1.0) -> float:
    """How long until the bucket holds ``need`` tokens (inf for an exhausted quota)."""
    if tokens >= need:
        return 0.0
    return math.inf if rate <= 0 else (need - tokens) / rate


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int
    remaining: float  # tokens left in the shared bucket after this grant


@dataclass(slots=True)  # not frozen: built per request (gateway/values.py)
class Verdict:
    allowed: bool
    limit: Limit
    remaining: int
    retry_after_s: float = 0.0


class _Local:
    """A process's lease on one bucket."""

    __slots__ = (
        "batch",
        "blocked_until",
        "expires",
        "limit",
        "lock",
        "refilling",
        "remote_remaining",
        "tokens",
    )

    def __init__(self) -> None:
        self.limit: Limit | None = None  # the limit ``batch`` was sized for
        self.batch = 1
        self.tokens = 0
        self.expires = 0.0
        self.remote_remaining = 0.0
        self.blocked_until = 0.0
        self.refilling = False
        self.lock = threading.Lock()


class LeasedLimiter:
    def __init__(
        self,
        store: LimitStore,
        clock: Callable[[], float] = time.time,
        lease_s: float = 0.2,
        lease_ttl_s: float = 2.0,
        max_batch: int = 1000,
        executor: Executor | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._lease_s = lease_s
        self._lease_ttl = lease_ttl_s
        self._max_batch = max_batch
        self._executor = executor or ThreadPoolExecutor(2, thread_name_prefix="limiter")
        self._local: dict[str, _Local] = {}
        self.store_calls = 0

    def batch(self, limit: Limit) -> int:
        """Tokens per lease: what the limit spends in ``lease_s``, within [1, max_batch],
        and a small share of the burst so one process cannot hoard a small bucket."""
        by_rate = limit.rate * self._lease_s if limit.rate > 0 else limit.burst / 100
        return max(1, min(self._max_batch, math.ceil(by_rate), max(1, limit.burst // 4)))

    def acquire(self, limit: Limit) -> Verdict:
        """Admit one request against ``limit``. Raises DependencyUnavailableError when the
        store cannot be reached and no local lease remains."""
        now = self._clock()
        local = self._local.get(limit.key)
        if local is None:
            local = self._local.setdefault(limit.key, _Local())
        if local.limit is not limit:  # first use, or the tier or policy changed
            local.batch, local.limit = self.batch(limit), limit
        with local.lock:
            if local.tokens > 0 and local.expires <= now:
                local.tokens = 0  # an old lease is dropped, which keeps the bound above
            if local.tokens == 0:
                if local.blocked_until > now:
                    return self._deny(limit, local, local.blocked_until - now)
                self._lease(limit, local, now)
                if local.tokens == 0:
                    return self._deny(limit, local, local.blocked_until - now)
            local.tokens -= 1
            remaining = local.tokens + math.floor(local.remote_remaining)
            batch = local.batch
            low = local.tokens <= batch // 2
            # A lease about to expire is topped up in time, so that a slow spender never
            # meets an expired lease (a store round trip on the request path).
            expiring = local.expires - now < self._lease_ttl / 2
            refill = (low or expiring) and not local.refilling and local.blocked_until <= now
            want = batch if low else max(1, batch - local.tokens)
            if refill:
                local.refilling = True
        if refill:
            # Submitted outside the lock: the refill takes the same lock when it lands.
            self._executor.submit(self._refill, limit, local, want)
        return Verdict(True, limit, max(0, remaining))

    def answers_locally(self, limit: Limit, margin_s: float) -> bool:
        """Whether ``acquire`` would answer without the store: a lease with tokens left
        that outlives ``margin_s``, or a denial still in force. Read without the lock: a
        refill landing meanwhile only makes the answer needlessly cautious."""
        local = self._local.get(limit.key)
        if local is None:
            return False
        later = self._clock() + margin_s
        return (local.tokens > 0 and local.expires > later) or local.blocked_until > later

    def _deny(self, limit: Limit, local: _Local, wait: float) -> Verdict:
        return Verdict(False, limit, 0, retry_after_s=wait)

    def _lease(self, limit: Limit, local: _Local, now: float) -> None:
        self.store_calls += 1
        want = self.batch(limit)
        self._apply(limit, local, self._store.lease(limit, want, now), now, want)

    def _apply(self, limit: Limit, local: _Local, grant: Grant, now: float, want: int) -> None:
        local.tokens += grant.granted
        local.remote_remaining = grant.remaining
        local.expires = now + self._lease_ttl
        if grant.granted < want:
            # The shared bucket is nearly dry. Coming back for every token it refills
            # would cost a store call per request; wait until a whole batch has refilled
            # (at most lease_s), spending what was granted meanwhile.
            wait = seconds_until(grant.remaining, limit.rate, need=want - grant.granted)
            if grant.granted == 0:
                wait = seconds_until(grant.remaining, limit.rate)
            if limit.expires_at is not None:
                wait = min(wait, max(1.0, limit.expires_at - now))
            local.blocked_until = now + min(wait, 366 * 86_400.0)

    def _refill(self, limit: Limit, local: _Local, want: int) -> None:
        # The store call happens outside the lock: requests keep spending the tokens left
        # while the next batch is on its way.
        try:
            now = self._clock()
            self.store_calls += 1
            grant = self._store.lease(limit, want, now)
        except DependencyUnavailableError:
            return  # the request path will retry, and apply the failure mode if it must
        finally:
            local.refilling = False
        with local.lock:
            self._apply(limit, local, grant, now, want)
