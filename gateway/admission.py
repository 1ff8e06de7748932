"""Whether a request may proceed now: the caller's tier limits, the model's limits, daily
quota and in-flight concurrency. Answers with the IETF RateLimit headers either way."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import DependencyUnavailableError, RateLimitedError
from gateway.models import DEFAULT_TIERS, ModelPolicy, RateLimitSpec, Tier
from gateway.ratelimit import LeasedLimiter, Limit, Verdict
from gateway.values import Principal

log = logging.getLogger(__name__)
DAY_S = 86_400


@dataclass
class Ticket:
    """An admitted request; ``release`` when its work is done (frees the concurrency slot)."""

    headers: dict[str, str]
    _release: Callable[[], None] | None = None

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


@dataclass
class AdmissionStats:
    allowed: int = 0
    limited: int = 0
    store_failures: int = 0
    failed_open: int = 0
    by_limit: dict[str, int] = field(default_factory=dict)


def _bucket(name: str, key: str, spec: RateLimitSpec) -> Limit:
    return Limit(
        name, key, spec.rate_per_s, spec.burst, max(1, math.ceil(spec.burst / spec.rate_per_s))
    )


class Admission:
    def __init__(
        self,
        limiter: LeasedLimiter,
        tiers: dict[str, Tier] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limiter = limiter
        self._tiers = tiers or DEFAULT_TIERS
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stats = AdmissionStats()
        # A caller's rate limits on a model follow from who it is and the policy object
        # (replaced, never changed, when the policy is): built once, not per request.
        self._rates: dict[tuple[str, str, str, str], tuple[ModelPolicy, list[Limit]]] = {}

    def limits_for(self, principal: Principal, policy: ModelPolicy) -> list[Limit]:
        tier = self._tiers.get(principal.tier) or self._tiers["standard"]
        limits = self._rate_limits(principal, policy, tier)
        if tier.daily_quota is not None:
            limits = list(limits)
            now = self._clock()
            day_start = now - now % DAY_S
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            limits.append(
                Limit(
                    "daily",
                    f"quota#{principal.tenant}#{day}",
                    0.0,
                    tier.daily_quota,
                    DAY_S,
                    expires_at=day_start + DAY_S,
                )
            )
        return limits

    def _rate_limits(self, principal: Principal, policy: ModelPolicy, tier: Tier) -> list[Limit]:
        key = (principal.key_id, principal.tenant, principal.tier, policy.model)
        cached = self._rates.get(key)
        if cached is not None and cached[0] is policy:
            return cached[1]
        limits = [
            _bucket("key", f"rate#key#{principal.key_id}", tier.key),
            _bucket("tenant", f"rate#tenant#{principal.tenant}", tier.tenant),
        ]
        if policy.rate_limit is not None:
            limits.append(
                _bucket("model", f"rate#model#{policy.model}#{principal.tenant}", policy.rate_limit)
            )
        if len(self._rates) >= 100_000:
            self._rates.clear()  # callers x models is small; a bound, not an eviction policy
        self._rates[key] = (policy, limits)
        return limits

    def answers_locally(self, principal: Principal, policy: ModelPolicy, margin_s: float) -> bool:
        """Whether ``admit`` would answer without a limit store round trip for ``margin_s``."""
        return all(
            self._limiter.answers_locally(limit, margin_s)
            for limit in self.limits_for(principal, policy)
        )

    def admit(self, principal: Principal, policy: ModelPolicy) -> Ticket:
        limits = self.limits_for(principal, policy)
        verdicts: list[Verdict] = []
        for limit in limits:
            verdict = self._acquire(limit, policy)
            if verdict is None:
                continue
            verdicts.append(verdict)
            if not verdict.allowed:
                self._count_limited(limit.name)
                raise RateLimitedError(
                    f"The {limit.name} limit ({_describe(limit)}) is exhausted; retry after "
                    f"{math.ceil(verdict.retry_after_s)} s.",
                    retry_after_s=verdict.retry_after_s,
                    headers=_headers(limits, verdicts, verdict, self._clock()),
                    limit=limit.name,
                )
        release = self._enter(policy, limits, verdicts)
        self.stats.allowed += 1
        return Ticket(_headers(limits, verdicts, None, self._clock()), release)

    def _acquire(self, limit: Limit, policy: ModelPolicy) -> Verdict | None:
        try:
            return self._limiter.acquire(limit)
        except DependencyUnavailableError:
            self.stats.store_failures += 1
            if policy.limiter_failure_mode == "closed":
                log.warning("limit store unavailable; failing closed for %s", policy.model)
                raise
            self.stats.failed_open += 1
            log.warning("limit store unavailable; failing open for %s", policy.model)
            return None

    def in_flight(self, model: str) -> int:
        """Admitted requests to ``model`` not yet released (counted only under a cap)."""
        with self._lock:
            return self._in_flight.get(model, 0)

    def _enter(
        self, policy: ModelPolicy, limits: list[Limit], verdicts: list[Verdict]
    ) -> Callable[[], None] | None:
        cap = policy.max_concurrency
        if cap is None:
            return None
        with self._lock:
            current = self._in_flight.get(policy.model, 0)
            if current >= cap:
                self._count_limited("concurrency")
                raise RateLimitedError(
                    f"Model '{policy.model}' already has {cap} requests in flight.",
                    retry_after_s=1,
                    headers=_headers(limits, verdicts, None, self._clock()),
                    limit="concurrency",
                )
            self._in_flight[policy.model] = current + 1

        def release() -> None:
            with self._lock:
                self._in_flight[policy.model] -= 1

        return release

    def _count_limited(self, name: str) -> None:
        self.stats.limited += 1
        self.stats.by_limit[name] = self.stats.by_limit.get(name, 0) + 1


def _describe(limit: Limit) -> str:
    if limit.rate <= 0:
        return f"{limit.burst} requests per day"
    return f"{limit.rate:g}/s, burst {limit.burst}"


def _headers(
    limits: list[Limit], verdicts: list[Verdict], denied: Verdict | None, now: float
) -> dict[str, str]:
    """draft-ietf-httpapi-ratelimit-headers: every policy, and the tightest remaining."""
    policy = ", ".join(f'"{lim.name}";q={lim.burst};w={lim.window_s}' for lim in limits)
    tightest = denied or min(verdicts, key=lambda v: v.remaining, default=None)
    headers = {"RateLimit-Policy": policy}
    if tightest is not None:
        lim = tightest.limit
        if tightest.allowed and lim.rate <= 0:
            # A quota resets when its period ends (midnight UTC for the daily one).
            end = lim.expires_at if lim.expires_at is not None else now + lim.window_s
            reset = math.ceil(max(0.0, end - now))
        elif tightest.allowed:
            reset = math.ceil(max(0, lim.burst - tightest.remaining) / lim.rate)
        else:
            reset = math.ceil(tightest.retry_after_s)
        headers["RateLimit"] = f'"{lim.name}";r={tightest.remaining};t={max(0, reset)}'
    return headers
