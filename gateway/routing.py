"""Which backend serves a request: a pure function of request facts, policy and live
backend state. It returns the choice and, behind it, the fallbacks in order.

1. Above the sync limit, or ``Prefer: respond-async``: async (413 when the model has no
   async backend and the body is too large for a sync one).
2. Realtime when it is healthy, has headroom and its expected latency fits the budget.
3. Else serverless if its expected latency (cold start included when cold) fits.
4. Else async if the policy allows it, else 503 with Retry-After.
Fallbacks: the other sync backends that are healthy, then async.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import (
    BackendUnavailableError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
)
from gateway.live import BackendView
from gateway.models import (
    REALTIME_MAX_BYTES,
    SERVERLESS_MAX_BYTES,
    EndpointTarget,
    ModelPolicy,
    Variant,
)
from gateway.values import Backend, RequestHints, RouteDecision

CEILINGS = {Backend.REALTIME: REALTIME_MAX_BYTES, Backend.SERVERLESS: SERVERLESS_MAX_BYTES}
SYNC_ORDER = (Backend.REALTIME, Backend.SERVERLESS)


@dataclass(slots=True)  # not frozen: built per request (gateway/values.py)
class RequestFacts:
    size: int
    budget_ms: float
    prefer_async: bool = False


@dataclass(slots=True)  # not frozen: built per request (gateway/values.py)
class Targets:
    """The sync endpoints of the variant being served."""

    variant: str
    version: str
    realtime: EndpointTarget | None
    serverless: EndpointTarget | None

    def of(self, backend: Backend) -> EndpointTarget | None:
        if backend is Backend.REALTIME:
            return self.realtime
        if backend is Backend.SERVERLESS:
            return self.serverless
        return None


def targets_for(policy: ModelPolicy, variant: Variant | None) -> Targets:
    if variant is None:
        return Targets("primary", policy.version, policy.realtime, policy.serverless)
    return Targets(
        variant.name,
        variant.version,
        variant.realtime or policy.realtime,
        variant.serverless or policy.serverless,
    )


def budgets(policy: ModelPolicy, hints: RequestHints) -> tuple[float, float]:
    """(latency budget for routing, hard timeout), both in ms. A client's
    X-Latency-Budget-Ms may only tighten the policy's SLO, and caps the timeout too: the
    client will not wait longer."""
    budget = float(policy.slo_ms)
    timeout = float(policy.timeout_ms)
    if hints.latency_budget_ms is not None:
        budget = min(budget, hints.latency_budget_ms)
        timeout = min(timeout, float(hints.latency_budget_ms))
    return budget, timeout


def sync_limit(policy: ModelPolicy, targets: Targets | None = None) -> int:
    """The largest body any synchronous backend of this policy accepts (0: none)."""
    targets = targets or targets_for(policy, None)
    ceilings = [CEILINGS[b] for b in SYNC_ORDER if targets.of(b) is not None]
    return min(policy.sync_max_bytes, max(ceilings, default=0))


def pick_variant(policy: ModelPolicy, sticky_key: str, requested: str | None) -> Variant | None:
    """Weighted split, sticky per caller: the same key always lands on the same variant
    while the weights stay the same. ``requested`` overrides when the policy allows."""
    if requested is not None:
        if requested == "primary" and not policy.variants:
            return None
        if not policy.allow_variant_override:
            raise ForbiddenError(f"Model '{policy.model}' does not allow choosing a variant.")
        for variant in policy.variants:
            if variant.name == requested:
                return variant
        raise NotFoundError(f"Model '{policy.model}' has no variant '{requested}'.")
    total = sum(v.weight for v in policy.variants)
    if total <= 0:
        return None
    digest = hashlib.blake2b(f"{policy.model}/{sticky_key}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64 * total
    for variant in policy.variants:
        point -= variant.weight
        if point < 0:
            return variant
    return policy.variants[-1]


def plan(
    facts: RequestFacts,
    policy: ModelPolicy,
    targets: Targets,
    views: Mapping[Backend, BackendView],
) -> list[RouteDecision]:
    """The decision first, then its fallbacks. Raises 413 or 503 when nothing can serve."""
    variant = targets.variant
    limit = sync_limit(policy, targets)
    if facts.size > limit or facts.prefer_async:
        if policy.async_enabled:
            reason = "prefer-async" if facts.prefer_async else "payload-over-sync-limit"
            return [RouteDecision(Backend.ASYNC, reason, variant)]
        if facts.size > limit:
            raise PayloadTooLargeError(
                f"The body is {facts.size} bytes; synchronous calls to '{policy.model}' accept "
                f"at most {limit} bytes and this model has no async backend.",
                limit_bytes=limit,
                size_bytes=facts.size,
            )
        # RFC 7240: a preference the server cannot honour is ignored.

    chosen: RouteDecision | None = None
    skipped: list[str] = []
    fallbacks: list[RouteDecision] = []
    for backend in SYNC_ORDER:
        if targets.of(backend) is None:
            skipped.append(f"{backend.value}-absent")
            continue
        if facts.size > CEILINGS[backend]:
            skipped.append(f"payload-over-{backend.value}-limit")
            continue
        view = views[backend]
        if not view.available:
            skipped.append(f"{backend.value}-unhealthy")
            continue
        if view.saturated:
            skipped.append(f"{backend.value}-saturated")
            continue
        if view.expected_ms > facts.budget_ms:
            skipped.append(f"{backend.value}-{'cold' if view.cold else 'too-slow'}")
            fallbacks.append(RouteDecision(backend, "fallback", variant))
            continue
        if chosen is None:
            chosen = RouteDecision(backend, _reason(backend, skipped), variant)
        else:
            fallbacks.append(RouteDecision(backend, "fallback", variant))
    if policy.async_enabled:
        fallbacks.append(RouteDecision(Backend.ASYNC, "fallback", variant))
    if chosen is not None:
        return [chosen, *fallbacks]
    if policy.async_enabled:
        return [RouteDecision(Backend.ASYNC, "no-sync-backend-fits:" + ",".join(skipped), variant)]
    raise BackendUnavailableError(
        f"No backend of '{policy.model}' can serve within {facts.budget_ms:.0f} ms now "
        f"({', '.join(skipped)}).",
        retry_after_s=_retry_after(views),
        reasons=skipped,
    )


def _reason(backend: Backend, skipped: list[str]) -> str:
    if backend is Backend.REALTIME:
        return "within-slo"
    return skipped[0] if skipped else "within-slo"


def _retry_after(views: Mapping[Backend, BackendView]) -> float:
    waits = [v.retry_after_s for v in views.values() if v.retry_after_s > 0]
    return max(1.0, min(waits)) if waits else 1.0
