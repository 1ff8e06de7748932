"""gateway.live: the circuit breaker and the per-backend live state, on an injected clock."""

from __future__ import annotations

import threading

import pytest

from gateway.live import (
    SLOW_ESTIMATE_GRACE_S,
    SLOW_ESTIMATE_HALF_LIFE_S,
    BackendView,
    BreakerState,
    CircuitBreaker,
    LiveState,
)
from gateway.models import EndpointTarget
from tests.fakes import FakeClock

T0 = 1_000.0

REALTIME = EndpointTarget(endpoint_name="m-realtime", expected_latency_ms=50.0, capacity=2)
SERVERLESS = EndpointTarget(
    endpoint_name="m-serverless",
    expected_latency_ms=80.0,
    capacity=3,
    idle_timeout_s=60.0,
    cold_start_ms=2500.0,
)


# --- CircuitBreaker ------------------------------------------------------------------------


def opened(threshold: int = 3, open_for_s: float = 5.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold=threshold, open_for_s=open_for_s)
    for _ in range(threshold):
        breaker.on_failure(T0)
    return breaker


@pytest.mark.parametrize("threshold", [1, 2, 3, 5])
def test_breaker_opens_after_threshold_consecutive_failures(threshold: int) -> None:
    breaker = CircuitBreaker(threshold=threshold, open_for_s=5.0)
    for _ in range(threshold - 1):
        breaker.on_failure(T0)
        assert breaker.state(T0) is BreakerState.CLOSED
        assert breaker.allows(T0)
    breaker.on_failure(T0)
    assert breaker.state(T0) is BreakerState.OPEN
    assert not breaker.allows(T0)
    assert breaker.opened_count == 1


def test_a_success_resets_the_consecutive_failures() -> None:
    breaker = CircuitBreaker(threshold=3)
    for ok in (False, False, True, False, False):
        breaker.on_success() if ok else breaker.on_failure(T0)
    assert breaker.state(T0) is BreakerState.CLOSED
    breaker.on_failure(T0)
    assert breaker.state(T0) is BreakerState.OPEN


def test_open_breaker_stays_open_until_open_for_s_then_half_opens() -> None:
    breaker = opened(open_for_s=5.0)
    assert breaker.state(T0 + 4.999) is BreakerState.OPEN
    assert not breaker.allows(T0 + 4.999)
    assert breaker.state(T0 + 5.0) is BreakerState.HALF_OPEN  # the tie half-opens
    assert breaker.allows(T0 + 5.0)
    assert breaker.state(T0 + 500.0) is BreakerState.HALF_OPEN


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = opened(open_for_s=5.0)
    now = T0 + 5.0
    assert breaker.allows(now)
    assert breaker.claim(now)  # the probe starts
    assert breaker.state(now) is BreakerState.HALF_OPEN
    assert not breaker.allows(now)  # a second, concurrent probe is refused
    assert not breaker.claim(now)
    assert not breaker.allows(now + 60.0)  # for as long as the probe is out


def test_an_attempt_while_closed_is_not_a_probe() -> None:
    breaker = CircuitBreaker(threshold=3)
    assert breaker.claim(T0) and breaker.claim(T0)
    assert breaker.allows(T0)
    assert not breaker.probing


def test_probe_success_closes_the_breaker() -> None:
    breaker = opened(threshold=3, open_for_s=5.0)
    breaker.claim(T0 + 5.0)
    breaker.on_success()
    assert breaker.state(T0 + 5.0) is BreakerState.CLOSED
    assert breaker.allows(T0 + 5.0)
    assert breaker.retry_after_s(T0 + 5.0) == 0.0
    # Closed for real: it takes the full threshold again to reopen.
    breaker.on_failure(T0 + 6.0)
    breaker.on_failure(T0 + 6.0)
    assert breaker.state(T0 + 6.0) is BreakerState.CLOSED


def test_probe_failure_reopens_the_breaker_for_another_open_for_s() -> None:
    breaker = opened(threshold=3, open_for_s=5.0)
    probe_at = T0 + 7.0
    breaker.claim(probe_at)
    breaker.on_failure(probe_at)  # one failure is enough while half-open
    assert breaker.state(probe_at) is BreakerState.OPEN
    assert not breaker.allows(probe_at + 4.9)
    assert breaker.retry_after_s(probe_at) == pytest.approx(5.0)
    assert breaker.state(probe_at + 5.0) is BreakerState.HALF_OPEN
    assert breaker.allows(probe_at + 5.0)  # the probe slot is free again
    assert breaker.opened_count == 1  # it never closed in between


def test_opened_count_counts_each_opening_from_closed() -> None:
    breaker = opened(threshold=1, open_for_s=1.0)
    breaker.on_success()
    breaker.on_failure(T0 + 2.0)
    assert breaker.opened_count == 2


@pytest.mark.parametrize(
    ("elapsed", "retry_after"),
    [
        pytest.param(0.0, 5.0, id="just-opened"),
        pytest.param(1.5, 3.5, id="counting-down"),
        pytest.param(5.0, 0.0, id="half-open"),
        pytest.param(60.0, 0.0, id="never-negative"),
    ],
)
def test_retry_after_is_what_is_left_of_open_for_s(elapsed: float, retry_after: float) -> None:
    assert opened(open_for_s=5.0).retry_after_s(T0 + elapsed) == pytest.approx(retry_after)


def test_retry_after_of_a_closed_breaker_is_zero() -> None:
    assert CircuitBreaker().retry_after_s(T0) == 0.0


# --- LiveState: breaker through begin/end ----------------------------------------------------


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture()
def live(clock: FakeClock) -> LiveState:
    return LiveState(clock=clock, breaker=lambda: CircuitBreaker(threshold=2, open_for_s=10.0))


def call(
    live: LiveState,
    clock: FakeClock,
    target: EndpointTarget,
    seconds: float,
    ok: bool = True,
    cold_start_ms: float | None = None,
) -> None:
    started = live.begin(target)
    clock.advance(seconds)
    live.end(target, started, ok=ok, cold_start_ms=cold_start_ms)


def test_failures_open_the_backends_breaker_and_a_probe_closes_it(
    live: LiveState, clock: FakeClock
) -> None:
    call(live, clock, REALTIME, 0.01, ok=False)
    assert live.view(REALTIME).available
    call(live, clock, REALTIME, 0.01, ok=False)
    view = live.view(REALTIME)
    assert not view.available
    assert view.retry_after_s == pytest.approx(10.0)

    clock.advance(10.0)
    assert live.view(REALTIME).available  # half-open
    started = live.begin(REALTIME)  # the probe
    assert not live.view(REALTIME).available
    clock.advance(0.02)
    live.end(REALTIME, started, ok=True)
    view = live.view(REALTIME)
    assert view.available
    assert view.retry_after_s == 0.0
    assert live.snapshot()["m-realtime"]["breaker"] == "closed"


def test_failed_probe_reopens(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, REALTIME, 0.01, ok=False)
    call(live, clock, REALTIME, 0.01, ok=False)
    clock.advance(10.0)
    call(live, clock, REALTIME, 0.5, ok=False)
    assert not live.view(REALTIME).available
    assert live.view(REALTIME).retry_after_s == pytest.approx(10.0)
    assert live.snapshot()["m-realtime"]["breaker"] == "open"


def test_each_backend_has_its_own_breaker(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, REALTIME, 0.01, ok=False)
    call(live, clock, REALTIME, 0.01, ok=False)
    assert not live.view(REALTIME).available
    assert live.view(SERVERLESS).available


# --- LiveState: latency, in flight, cold -----------------------------------------------------


def test_expected_latency_is_the_configured_one_until_measured(live: LiveState) -> None:
    assert live.view(REALTIME) == BackendView(
        available=True, saturated=False, expected_ms=50.0, cold=False, retry_after_s=0.0
    )


def test_latency_is_an_ewma_of_successful_calls(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, REALTIME, 0.100)
    assert live.view(REALTIME).expected_ms == pytest.approx(100.0)  # the first sample
    call(live, clock, REALTIME, 0.200)
    assert live.view(REALTIME).expected_ms == pytest.approx(120.0)  # 100 + 0.2 * (200 - 100)
    call(live, clock, REALTIME, 0.020)
    assert live.view(REALTIME).expected_ms == pytest.approx(100.0)  # 120 + 0.2 * (20 - 120)
    call(live, clock, REALTIME, 1.0, ok=False)  # failures do not count as latency
    assert live.view(REALTIME).expected_ms == pytest.approx(100.0)
    assert live.stats(REALTIME).ewma_ms == pytest.approx(100.0)


def test_a_slow_estimate_fades_back_to_the_configured_one_without_new_samples(
    live: LiveState, clock: FakeClock
) -> None:
    prior = REALTIME.expected_latency_ms
    call(live, clock, REALTIME, 1.3)  # one slow spell, then the router stops sending
    assert live.view(REALTIME).expected_ms == pytest.approx(1300.0)
    clock.advance(SLOW_ESTIMATE_GRACE_S)  # since the sample, taken when the call ended
    assert live.view(REALTIME).expected_ms == pytest.approx(1300.0)  # within the grace
    clock.advance(SLOW_ESTIMATE_HALF_LIFE_S)
    assert live.view(REALTIME).expected_ms == pytest.approx(prior + (1300.0 - prior) / 2)
    clock.advance(10 * SLOW_ESTIMATE_HALF_LIFE_S)
    assert live.view(REALTIME).expected_ms == pytest.approx(prior, rel=0.02)
    # The next sample updates the faded estimate, not the stale one.
    call(live, clock, REALTIME, 0.040)
    faded = prior + (1300.0 - prior) * 0.5**11
    assert live.stats(REALTIME).ewma_ms == pytest.approx(faded + 0.2 * (40.0 - faded), rel=1e-3)


def test_a_fast_estimate_does_not_fade(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, REALTIME, REALTIME.expected_latency_ms / 2000)
    clock.advance(600.0)
    assert live.view(REALTIME).expected_ms == pytest.approx(REALTIME.expected_latency_ms / 2)


def test_in_flight_counts_begin_and_end_and_saturates_at_capacity(
    live: LiveState, clock: FakeClock
) -> None:
    stats = live.stats(REALTIME)
    first = live.begin(REALTIME)
    assert stats.in_flight == 1
    assert not live.view(REALTIME).saturated
    second = live.begin(REALTIME)  # capacity is 2
    assert stats.in_flight == 2
    assert live.view(REALTIME).saturated
    live.end(REALTIME, first, ok=True)
    assert stats.in_flight == 1
    assert not live.view(REALTIME).saturated
    live.end(REALTIME, second, ok=False)  # a failure ends the call too
    assert stats.in_flight == 0
    assert stats.calls == 2


def test_stats_are_per_endpoint_name(live: LiveState) -> None:
    same = REALTIME.model_copy(update={"capacity": 9})
    assert live.stats(same) is live.stats(REALTIME)
    assert live.stats(SERVERLESS) is not live.stats(REALTIME)


def test_never_used_serverless_is_cold_and_pays_the_configured_cold_start(
    live: LiveState,
) -> None:
    view = live.view(SERVERLESS)
    assert view.cold
    assert view.expected_ms == pytest.approx(80.0 + 2500.0)


def test_realtime_is_never_cold(live: LiveState, clock: FakeClock) -> None:
    assert not live.view(REALTIME).cold
    call(live, clock, REALTIME, 0.05)
    clock.advance(1e6)
    view = live.view(REALTIME)
    assert not view.cold
    assert view.expected_ms == pytest.approx(50.0)


def test_serverless_is_warm_after_a_call_and_cold_when_idle_past_the_timeout(
    live: LiveState, clock: FakeClock
) -> None:
    call(live, clock, SERVERLESS, 0.100)
    view = live.view(SERVERLESS)
    assert not view.cold
    assert view.expected_ms == pytest.approx(100.0)  # no cold start while warm

    clock.advance(60.0)  # idle exactly idle_timeout_s: still warm
    assert not live.view(SERVERLESS).cold
    clock.advance(0.5)
    view = live.view(SERVERLESS)
    assert view.cold
    # A minute without a call: the warm estimate is the configured one again.
    assert view.expected_ms == pytest.approx(SERVERLESS.expected_latency_ms + 2500.0, rel=1e-3)


def test_begin_counts_cold_starts(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, SERVERLESS, 0.1)  # cold: never used
    call(live, clock, SERVERLESS, 0.1)  # warm
    clock.advance(61.0)
    call(live, clock, SERVERLESS, 0.1)  # cold again
    assert live.stats(SERVERLESS).cold_starts == 2


def test_measured_cold_start_is_preferred_and_kept_out_of_the_ewma(
    live: LiveState, clock: FakeClock
) -> None:
    # 1.5 s in all, of which the backend reports 1.2 s of cold start: 300 ms of work.
    call(live, clock, SERVERLESS, 1.5, cold_start_ms=1200.0)
    stats = live.stats(SERVERLESS)
    assert stats.ewma_ms == pytest.approx(300.0)
    assert stats.cold_start_ms == 1200.0
    assert live.view(SERVERLESS).expected_ms == pytest.approx(300.0)  # warm now

    clock.advance(61.0)
    view = live.view(SERVERLESS)
    assert view.cold
    warm = SERVERLESS.expected_latency_ms  # the 300 ms measured a minute ago has faded
    assert view.expected_ms == pytest.approx(warm + 1200.0, rel=1e-3)  # measured, not 2500

    # A later warm call updates the EWMA with its whole latency.
    call(live, clock, SERVERLESS, 0.5)
    assert stats.ewma_ms == pytest.approx(warm + 0.2 * (500.0 - warm), rel=1e-3)
    assert stats.cold_start_ms == 1200.0  # kept until another cold start is reported


def test_reported_cold_start_longer_than_the_call_never_makes_negative_latency(
    live: LiveState, clock: FakeClock
) -> None:
    call(live, clock, SERVERLESS, 0.5, cold_start_ms=900.0)
    assert live.stats(SERVERLESS).ewma_ms == 0.0


# --- LiveState.snapshot ----------------------------------------------------------------------


def test_snapshot_is_empty_before_any_call(live: LiveState) -> None:
    assert live.snapshot() == {}


def test_snapshot_fields(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, SERVERLESS, 0.100)
    call(live, clock, SERVERLESS, 0.300)
    call(live, clock, SERVERLESS, 0.050, ok=False)
    call(live, clock, SERVERLESS, 1.0, cold_start_ms=400.0)  # 600 ms of work
    live.begin(SERVERLESS)  # one still in flight
    clock.advance(2.5)

    snapshot = live.snapshot()
    assert set(snapshot) == {"m-serverless"}
    entry = snapshot["m-serverless"]
    assert entry == {
        "in_flight": 1,
        "calls": 5,
        "failures": 1,
        "error_rate": 0.25,
        "ewma_ms": pytest.approx(100 + 0.2 * 200 + 0.2 * (600 - 140), abs=1e-3),
        "p50_ms": pytest.approx(300.0),
        "p99_ms": pytest.approx(600.0),
        "breaker": "closed",
        "breaker_opened": 0,
        "cold_starts": 1,
        "cold_start_ms": 400.0,
        "idle_s": 2.5,
    }


def test_snapshot_of_an_open_breaker(live: LiveState, clock: FakeClock) -> None:
    call(live, clock, REALTIME, 0.01, ok=False)
    call(live, clock, REALTIME, 0.01, ok=False)
    entry = live.snapshot()["m-realtime"]
    assert entry["breaker"] == "open"
    assert entry["breaker_opened"] == 1
    assert entry["error_rate"] == 1.0
    assert entry["ewma_ms"] is None
    assert entry["p50_ms"] is None
    assert entry["p99_ms"] is None
    assert entry["idle_s"] == 0.0


def test_begin_claims_the_half_open_probe_under_the_lock() -> None:
    clock = FakeClock(T0)
    live = LiveState(clock=clock, breaker=lambda: CircuitBreaker(threshold=1, open_for_s=5.0))
    started = live.begin(REALTIME)
    assert started is not None
    live.end(REALTIME, started, ok=False)  # opens the breaker
    assert live.begin(REALTIME) is None  # open: refused
    clock.advance(5.0)
    start = threading.Barrier(8)
    claims: list[float | None] = []

    def claim() -> None:
        start.wait()
        claims.append(live.begin(REALTIME))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(c is not None for c in claims) == 1  # one probe, however the threads interleave
    assert live.stats(REALTIME).in_flight == 1
