"""gateway.routing: which backend serves a request, and how large it may be."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BackendUnavailableError, PayloadTooLargeError
from gateway.models import (
    REALTIME_MAX_BYTES,
    SERVERLESS_MAX_BYTES,
    Backend,
    EndpointTarget,
    MiB,
    ModelPolicy,
    RequestHints,
    RouteDecision,
)
from gateway.routing import decide, sync_limit

REALTIME = EndpointTarget(endpoint_name="m-realtime")
SERVERLESS = EndpointTarget(endpoint_name="m-serverless")


def policy(realtime: bool = False, serverless: bool = False, **fields: object) -> ModelPolicy:
    return ModelPolicy(
        model="m",
        realtime=REALTIME if realtime else None,
        serverless=SERVERLESS if serverless else None,
        **fields,
    )


@pytest.mark.parametrize(
    ("subject", "limit"),
    [
        pytest.param(policy(realtime=True), REALTIME_MAX_BYTES, id="realtime"),
        pytest.param(policy(serverless=True), SERVERLESS_MAX_BYTES, id="serverless-ceiling"),
        pytest.param(
            policy(realtime=True, serverless=True), REALTIME_MAX_BYTES, id="both-realtime-preferred"
        ),
        pytest.param(policy(realtime=True, sync_max_bytes=MiB), MiB, id="policy-lower"),
        pytest.param(
            policy(serverless=True, sync_max_bytes=1000), 1000, id="policy-lower-serverless"
        ),
        pytest.param(
            policy(realtime=True, sync_max_bytes=10 * MiB),
            REALTIME_MAX_BYTES,
            id="policy-higher-than-realtime",
        ),
        pytest.param(
            policy(serverless=True, sync_max_bytes=5 * MiB),
            SERVERLESS_MAX_BYTES,
            id="policy-higher-than-serverless",
        ),
        pytest.param(policy(), 0, id="no-sync-backend"),
    ],
)
def test_sync_limit(subject: ModelPolicy, limit: int) -> None:
    assert sync_limit(subject) == limit


@pytest.mark.parametrize(
    ("subject", "limit"),
    [
        (policy(realtime=True), REALTIME_MAX_BYTES),
        (policy(serverless=True), SERVERLESS_MAX_BYTES),
        (policy(realtime=True, sync_max_bytes=2048), 2048),
    ],
)
def test_body_above_the_limit_is_413_with_the_limit(subject: ModelPolicy, limit: int) -> None:
    assert decide(limit, subject, RequestHints()).backend in (Backend.REALTIME, Backend.SERVERLESS)
    with pytest.raises(PayloadTooLargeError) as raised:
        decide(limit + 1, subject, RequestHints())
    error = raised.value
    assert error.status == 413
    assert error.extensions == {"limit_bytes": limit, "size_bytes": limit + 1}
    assert f"at most {limit} bytes" in error.detail
    assert "'m'" in error.detail


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (policy(realtime=True), RouteDecision(Backend.REALTIME, "within-slo")),
        (policy(realtime=True, serverless=True), RouteDecision(Backend.REALTIME, "within-slo")),
        (policy(serverless=True), RouteDecision(Backend.SERVERLESS, "realtime-absent")),
    ],
)
def test_backend_choice(subject: ModelPolicy, expected: RouteDecision) -> None:
    assert decide(100, subject, RequestHints()) == expected


@pytest.mark.parametrize(
    ("decision", "header"),
    [
        (RouteDecision(Backend.REALTIME, "within-slo"), "realtime; reason=within-slo"),
        (
            RouteDecision(Backend.SERVERLESS, "realtime-absent"),
            "serverless; reason=realtime-absent",
        ),
    ],
)
def test_decision_header(decision: RouteDecision, header: str) -> None:
    assert decision.header() == header


@pytest.mark.parametrize("size", [0, 1, 100, 20 * MiB])
def test_no_sync_backend_is_503_with_retry_after_for_any_body(size: int) -> None:
    # Regression: with no sync backend the limit was 0, so any body got 413 "at most 0 bytes".
    with pytest.raises(BackendUnavailableError) as raised:
        decide(size, policy(async_enabled=True), RequestHints())
    assert raised.value.status == 503
    assert raised.value.retry_after_s == 30


@given(
    size=st.integers(0, 12 * MiB),
    realtime=st.booleans(),
    serverless=st.booleans(),
    sync_max=st.integers(1, 10 * MiB),
    hints=st.builds(RequestHints, prefer_async=st.booleans()),
)
def test_decide_only_picks_configured_backends_within_the_limit(
    size: int, realtime: bool, serverless: bool, sync_max: int, hints: RequestHints
) -> None:
    subject = policy(realtime=realtime, serverless=serverless, sync_max_bytes=sync_max)
    try:
        decision = decide(size, subject, hints)
    except PayloadTooLargeError:
        assert size > sync_limit(subject)
    except BackendUnavailableError:
        assert not realtime and not serverless
    else:
        assert size <= sync_limit(subject) <= sync_max
        configured = {Backend.REALTIME: realtime, Backend.SERVERLESS: serverless}
        assert configured[decision.backend]
