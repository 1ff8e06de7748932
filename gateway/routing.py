"""Which backend serves a request: a pure function of request facts and policy."""

from __future__ import annotations

from gateway.errors import BackendUnavailableError, PayloadTooLargeError
from gateway.models import (
    REALTIME_MAX_BYTES,
    SERVERLESS_MAX_BYTES,
    Backend,
    ModelPolicy,
    RequestHints,
    RouteDecision,
)


def sync_limit(policy: ModelPolicy) -> int:
    """The largest body any synchronous backend of this policy accepts."""
    ceilings = []
    if policy.realtime is not None:
        ceilings.append(REALTIME_MAX_BYTES)
    if policy.serverless is not None:
        ceilings.append(SERVERLESS_MAX_BYTES)
    return min(policy.sync_max_bytes, max(ceilings, default=0))


def decide(size: int, policy: ModelPolicy, hints: RequestHints) -> RouteDecision:
    if policy.realtime is None and policy.serverless is None:
        raise BackendUnavailableError(
            f"Model '{policy.model}' has no synchronous backend.", retry_after_s=30
        )
    limit = sync_limit(policy)
    if size > limit:
        raise PayloadTooLargeError(
            f"The body is {size} bytes; synchronous calls to '{policy.model}' accept at most "
            f"{limit} bytes.",
            limit_bytes=limit,
            size_bytes=size,
        )
    if policy.realtime is not None:
        return RouteDecision(Backend.REALTIME, "within-slo")
    return RouteDecision(Backend.SERVERLESS, "realtime-absent")
