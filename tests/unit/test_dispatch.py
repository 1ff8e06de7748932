"""gateway.dispatch: carrying out a plan (fallback, budget, breakers), shadow mirroring and
agreement; and, through ``Gateway.invoke``, variants that stick to a session.

Backends are a ``ScriptedInvoker`` that advances a ``FakeClock`` by each endpoint's
latency, so ``LiveState`` measures exactly what the script says; shadow calls run on an
``InlineExecutor`` (at once) or a ``DeferredExecutor`` (when the test says)."""

from __future__ import annotations

import json
from concurrent.futures import Executor

import pytest

from gateway import routing
from gateway.dispatch import MAX_ATTEMPTS, Attempt, Dispatcher, ShadowStats, agree
from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    SchemaMismatchError,
)
from gateway.hints import parse_hints
from gateway.live import BreakerState, CircuitBreaker, LiveState
from gateway.models import EndpointTarget, ModelPolicy, Variant
from gateway.routing import RequestFacts, Targets, targets_for
from gateway.service import Gateway
from gateway.values import (
    Backend,
    BackendReply,
    InvocationOutcome,
    InvocationRequest,
    Principal,
    RouteDecision,
)
from tests.fakes import (
    DeferredExecutor,
    FakeClock,
    InlineExecutor,
    InMemoryPolicyStore,
    ScriptedInvoker,
)

T0 = 1_000.0
RT = EndpointTarget(endpoint_name="m-realtime", expected_latency_ms=50.0)
SL = EndpointTarget(endpoint_name="m-serverless", expected_latency_ms=80.0)
TARGETS = Targets("primary", "1", RT, SL)

OK = BackendReply(b'{"predictions": [{"label": 1}]}', "application/json")
OK_SL = BackendReply(b'{"predictions": [{"label": 1}]}', "application/json", variant="sl")

FIRST_RT = RouteDecision(Backend.REALTIME, "within-slo")
FIRST_SL = RouteDecision(Backend.SERVERLESS, "realtime-saturated")
FALLBACK_SL = RouteDecision(Backend.SERVERLESS, "fallback")
FALLBACK_RT = RouteDecision(Backend.REALTIME, "fallback")
FALLBACK_ASYNC = RouteDecision(Backend.ASYNC, "fallback")


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture()
def live(clock: FakeClock) -> LiveState:
    return LiveState(clock=clock)


def dispatcher(
    invoker: ScriptedInvoker, live: LiveState, executor: Executor | None = None, queue: int = 64
) -> Dispatcher:
    return Dispatcher(
        invoker, live, shadow_executor=executor or InlineExecutor(), max_shadow_queue=queue
    )


def call(
    d: Dispatcher,
    plan: list[RouteDecision],
    *,
    timeout_s: float = 30.0,
    budget_s: float = 1.0,
    targets: Targets = TARGETS,
) -> Attempt:
    now = d.live.now()
    return d.call_sync(
        plan,
        targets,
        b'{"inputs": [[1, 2]]}',
        "application/json",
        "application/json",
        deadline=now + timeout_s,
        budget_end=now + budget_s,
    )


# --- call_sync: success, fallback, client errors --------------------------------------------


def test_success_on_the_first_step(clock: FakeClock, live: LiveState) -> None:
    invoker = ScriptedInvoker({"m-realtime": [OK]}, clock=clock, latency_s={"m-realtime": 0.04})
    d = dispatcher(invoker, live)
    attempt = call(d, [FIRST_RT, FALLBACK_SL, FALLBACK_ASYNC])
    assert attempt.reply == OK
    assert attempt.error is None
    assert attempt.decision == FIRST_RT
    assert attempt.tried == ["realtime"]
    assert attempt.fallbacks == 0
    assert d.fallbacks == 0
    [only] = invoker.calls
    assert only.target == RT
    assert only.body == b'{"inputs": [[1, 2]]}'
    assert only.timeout_s == pytest.approx(30.0)
    assert live.stats(RT).ewma_ms == pytest.approx(40.0)
    assert live.stats(RT).in_flight == 0


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(BackendUnavailableError("throttled"), id="unavailable"),
        pytest.param(BackendTimeoutError("slow"), id="timeout"),
        pytest.param(BackendError("500 from the model"), id="backend-error"),
    ],
)
def test_retryable_failure_falls_back_to_the_next_step(
    clock: FakeClock, live: LiveState, error: GatewayError
) -> None:
    invoker = ScriptedInvoker(
        {"m-realtime": [error], "m-serverless": [OK_SL]},
        clock=clock,
        latency_s={"m-realtime": 0.1, "m-serverless": 0.05},
    )
    d = dispatcher(invoker, live)
    attempt = call(d, [FIRST_RT, FALLBACK_SL])
    assert invoker.endpoints() == ["m-realtime", "m-serverless"]
    assert attempt.reply == OK_SL
    assert attempt.error is None
    assert attempt.decision == RouteDecision(Backend.SERVERLESS, "fallback-from-realtime")
    assert attempt.decision.header() == "serverless; reason=fallback-from-realtime"
    assert attempt.tried == ["realtime", "serverless"]
    assert attempt.fallbacks == 1
    assert d.fallbacks == 1
    # The fallback gets what is left of the timeout.
    assert invoker.calls[1].timeout_s == pytest.approx(30.0 - 0.1)
    assert live.stats(RT).failures == 1
    assert live.stats(SL).failures == 0


def test_fallback_keeps_the_variant_and_names_the_first_backend(
    clock: FakeClock, live: LiveState
) -> None:
    invoker = ScriptedInvoker({"m-serverless": [BackendError("boom")]}, clock=clock)
    first = RouteDecision(Backend.SERVERLESS, "realtime-too-slow", "green")
    attempt = call(
        dispatcher(invoker, live),
        [first, RouteDecision(Backend.REALTIME, "fallback", "green")],
        targets=Targets("green", "2", RT, SL),
    )
    assert attempt.decision == RouteDecision(Backend.REALTIME, "fallback-from-serverless", "green")


def test_every_step_failing_returns_the_last_error(clock: FakeClock, live: LiveState) -> None:
    last = BackendTimeoutError("serverless too")
    invoker = ScriptedInvoker(
        {"m-realtime": [BackendError("rt")], "m-serverless": [last]}, clock=clock
    )
    d = dispatcher(invoker, live)
    attempt = call(d, [FIRST_RT, FALLBACK_SL])
    assert attempt.error is last
    assert attempt.reply is None
    assert attempt.tried == ["realtime", "serverless"]
    assert d.fallbacks == 0  # only a fallback that answered counts


def test_schema_mismatch_does_not_fall_back_nor_count_as_backend_failure(
    clock: FakeClock, live: LiveState
) -> None:
    mismatch = SchemaMismatchError("expected 4 features")
    invoker = ScriptedInvoker(default=mismatch, clock=clock, latency_s={"m-realtime": 0.01})
    d = dispatcher(invoker, live)
    for _ in range(5):  # more than the breaker's threshold
        attempt = call(d, [FIRST_RT, FALLBACK_SL, FALLBACK_ASYNC])
        assert attempt.error is mismatch
        assert attempt.reply is None
        assert attempt.decision == FIRST_RT
        assert attempt.tried == ["realtime"]
    assert invoker.endpoints() == ["m-realtime"] * 5
    stats = live.stats(RT)
    assert stats.failures == 0
    assert stats.breaker.state(clock()) is BreakerState.CLOSED
    assert live.view(RT).available
    assert stats.in_flight == 0


def test_a_client_error_closes_a_half_open_breaker(clock: FakeClock, live: LiveState) -> None:
    # The backend answered (if only to say the input is wrong): it is healthy again.
    for _ in range(3):
        call(dispatcher(ScriptedInvoker(default=BackendError("x")), live), [FIRST_RT])
    assert not live.view(RT).available
    clock.advance(5.0)
    call(dispatcher(ScriptedInvoker(default=SchemaMismatchError("bad")), live), [FIRST_RT])
    assert live.stats(RT).breaker.state(clock()) is BreakerState.CLOSED


# --- call_sync: async steps, budget, deadline, attempts ---------------------------------------


def test_an_async_first_step_is_returned_without_calling_anything(live: LiveState) -> None:
    invoker = ScriptedInvoker()
    decision = RouteDecision(Backend.ASYNC, "payload-over-sync-limit")
    attempt = call(dispatcher(invoker, live), [decision])
    assert attempt.decision == decision
    assert attempt.reply is None
    assert attempt.error is None
    assert attempt.tried == []
    assert invoker.calls == []


def test_an_async_fallback_is_returned_for_the_caller(clock: FakeClock, live: LiveState) -> None:
    invoker = ScriptedInvoker({"m-realtime": [BackendUnavailableError("down")]}, clock=clock)
    attempt = call(dispatcher(invoker, live), [FIRST_RT, FALLBACK_ASYNC])
    assert attempt.decision == FALLBACK_ASYNC
    assert attempt.reply is None
    assert attempt.tried == ["realtime"]
    assert invoker.endpoints() == ["m-realtime"]


def test_async_is_returned_even_when_the_sync_budget_is_spent(
    clock: FakeClock, live: LiveState
) -> None:
    invoker = ScriptedInvoker(
        {"m-realtime": [BackendTimeoutError("slow")]}, clock=clock, latency_s={"m-realtime": 5.0}
    )
    attempt = call(dispatcher(invoker, live), [FIRST_RT, FALLBACK_SL, FALLBACK_ASYNC])
    assert attempt.decision == FALLBACK_ASYNC
    assert invoker.endpoints() == ["m-realtime"]


@pytest.mark.parametrize(
    ("first_latency_s", "serverless_expected_ms", "falls_back"),
    [
        pytest.param(0.1, 80.0, True, id="fits"),
        pytest.param(0.9, 200.0, False, id="next-backend-too-slow-for-what-is-left"),
        pytest.param(0.5, 500.0, True, id="tie-exactly-fits"),
        pytest.param(0.5, 500.5, False, id="half-a-millisecond-over"),
        pytest.param(1.2, 1.0, False, id="budget-already-spent"),
    ],
)
def test_fallback_only_while_the_budget_lasts(
    clock: FakeClock,
    live: LiveState,
    first_latency_s: float,
    serverless_expected_ms: float,
    falls_back: bool,
) -> None:
    serverless = SL.model_copy(update={"expected_latency_ms": serverless_expected_ms})
    failure = BackendError("rt failed")
    invoker = ScriptedInvoker(
        {"m-realtime": [failure]}, clock=clock, latency_s={"m-realtime": first_latency_s}
    )
    attempt = call(
        dispatcher(invoker, live),
        [FIRST_RT, FALLBACK_SL],
        budget_s=1.0,
        targets=Targets("primary", "1", RT, serverless),
    )
    if falls_back:
        assert invoker.endpoints() == ["m-realtime", "m-serverless"]
        assert attempt.error is None
        assert attempt.decision.reason == "fallback-from-realtime"
    else:
        assert invoker.endpoints() == ["m-realtime"]
        assert attempt.error is failure
        assert attempt.decision == FIRST_RT  # what was tried, not what was skipped


def test_a_cold_serverless_fallback_counts_its_cold_start_against_the_budget(
    clock: FakeClock, live: LiveState
) -> None:
    cold = SL.model_copy(update={"idle_timeout_s": 60.0, "cold_start_ms": 2000.0})
    invoker = ScriptedInvoker({"m-realtime": [BackendError("x")]}, clock=clock)
    attempt = call(
        dispatcher(invoker, live),
        [FIRST_RT, FALLBACK_SL],
        budget_s=1.0,
        targets=Targets("primary", "1", RT, cold),
    )
    assert invoker.endpoints() == ["m-realtime"]
    assert attempt.error is not None


def test_no_call_once_the_deadline_has_passed(clock: FakeClock, live: LiveState) -> None:
    invoker = ScriptedInvoker(
        {"m-realtime": [BackendError("x")]}, clock=clock, latency_s={"m-realtime": 2.0}
    )
    attempt = call(dispatcher(invoker, live), [FIRST_RT, FALLBACK_SL], timeout_s=2.0, budget_s=9)
    assert invoker.endpoints() == ["m-realtime"]
    assert attempt.tried == ["realtime"]

    fresh = ScriptedInvoker()
    late = call(dispatcher(fresh, live), [FIRST_RT], timeout_s=0.0)
    assert fresh.calls == []
    assert (late.reply, late.error, late.tried) == (None, None, [])


def test_no_fallback_to_a_backend_whose_breaker_is_open(clock: FakeClock, live: LiveState) -> None:
    for _ in range(3):
        live.end(SL, live.begin(SL), ok=False)
    invoker = ScriptedInvoker({"m-realtime": [BackendError("x")]}, clock=clock)
    attempt = call(dispatcher(invoker, live), [FIRST_RT, FALLBACK_SL, FALLBACK_ASYNC])
    assert invoker.endpoints() == ["m-realtime"]
    assert attempt.decision == FALLBACK_ASYNC


def test_at_most_max_attempts_backend_calls(clock: FakeClock) -> None:
    # A breaker that never opens, so only MAX_ATTEMPTS stops the loop.
    live = LiveState(clock=clock, breaker=lambda: CircuitBreaker(threshold=1_000))
    invoker = ScriptedInvoker(default=BackendUnavailableError("down"), clock=clock)
    long_plan = [FIRST_RT, FALLBACK_SL, FALLBACK_RT, FALLBACK_SL, FALLBACK_RT, FALLBACK_SL]
    attempt = call(dispatcher(invoker, live), long_plan, budget_s=60.0)
    assert MAX_ATTEMPTS == 3
    assert len(invoker.calls) == MAX_ATTEMPTS
    assert attempt.tried == ["realtime", "serverless", "realtime"]
    assert isinstance(attempt.error, BackendUnavailableError)


def test_max_attempts_still_lets_an_async_step_through(clock: FakeClock) -> None:
    live = LiveState(clock=clock, breaker=lambda: CircuitBreaker(threshold=1_000))
    invoker = ScriptedInvoker(default=BackendUnavailableError("down"), clock=clock)
    plan = [FIRST_RT, FALLBACK_SL, FALLBACK_RT, FALLBACK_SL, FALLBACK_ASYNC]
    attempt = call(dispatcher(invoker, live), plan, budget_s=60.0)
    assert len(invoker.calls) == MAX_ATTEMPTS
    assert attempt.decision == FALLBACK_ASYNC


def test_breaker_opens_after_repeated_failures_and_later_plans_skip_the_backend(
    clock: FakeClock, live: LiveState
) -> None:
    policy = ModelPolicy(model="m", realtime=RT, serverless=SL)
    targets = targets_for(policy, None)
    invoker = ScriptedInvoker(
        {"m-realtime": [BackendUnavailableError("down")] * 3, "m-serverless": []},
        default=OK_SL,
        clock=clock,
        latency_s={"m-realtime": 0.01, "m-serverless": 0.02},
    )
    d = dispatcher(invoker, live)

    def route() -> Attempt:
        views = {b: live.view(t) for b in routing.SYNC_ORDER if (t := targets.of(b)) is not None}
        steps = routing.plan(RequestFacts(100, 1000.0), policy, targets, views)
        return call(d, steps)

    for _ in range(3):  # the default breaker opens after 3 consecutive failures
        assert route().decision.reason == "fallback-from-realtime"
    assert not live.view(RT).available

    invoker.calls.clear()
    attempt = route()
    assert attempt.decision == RouteDecision(Backend.SERVERLESS, "realtime-unhealthy")
    assert invoker.endpoints() == ["m-serverless"]  # realtime is not even tried

    # After open_for_s realtime gets one probe, which succeeds and closes the breaker.
    clock.advance(5.0)
    invoker.script["m-realtime"] = [OK]
    invoker.calls.clear()
    attempt = route()
    assert attempt.decision == FIRST_RT
    assert invoker.endpoints() == ["m-realtime"]
    assert live.view(RT).available
    assert live.snapshot()["m-realtime"]["breaker_opened"] == 1


# --- mirror ----------------------------------------------------------------------------------


SHADOW_RT = EndpointTarget(endpoint_name="m-shadow-rt")
SHADOW_SL = EndpointTarget(endpoint_name="m-shadow-sl")
SHADOW = Targets("candidate", "9", SHADOW_RT, SHADOW_SL)
PRIMARY = b'{"predictions": [{"label": 1, "probabilities": [0.1, 0.9]}]}'


def mirror(d: Dispatcher, shadow: Targets = SHADOW, primary: bytes = PRIMARY) -> None:
    d.mirror("m", shadow, b"[1, 2]", "application/json", "application/json", primary, 2.0)


def reply(body: bytes) -> BackendReply:
    return BackendReply(body, "application/json")


def test_mirror_compares_the_shadow_answer_with_the_primary(
    clock: FakeClock, live: LiveState
) -> None:
    same_label = reply(b'{"predictions": [{"label": 1, "probabilities": [0.3, 0.7]}]}')
    other_label = reply(b'{"predictions": [{"label": 0, "probabilities": [0.6, 0.4]}]}')
    invoker = ScriptedInvoker({"m-shadow-rt": [same_label, other_label, same_label]}, clock=clock)
    executor = InlineExecutor()
    d = dispatcher(invoker, live, executor)
    for _ in range(3):
        mirror(d)
    assert executor.submitted == 3
    assert d.shadow["m"] == ShadowStats(mirrored=3, compared=3, agreed=2)
    assert d.shadow["m"].agreement() == pytest.approx(2 / 3)
    [first, *_] = invoker.calls
    assert (first.target, first.body, first.timeout_s) == (SHADOW_RT, b"[1, 2]", 2.0)
    assert live.stats(SHADOW_RT).calls == 3  # the shadow's own live state
    assert live.stats(SHADOW_RT).in_flight == 0


def test_mirror_uses_the_shadows_serverless_when_it_has_no_realtime(live: LiveState) -> None:
    invoker = ScriptedInvoker()
    mirror(dispatcher(invoker, live), Targets("candidate", "9", None, SHADOW_SL))
    assert invoker.endpoints() == ["m-shadow-sl"]


def test_mirror_without_shadow_endpoints_does_nothing(live: LiveState) -> None:
    invoker = ScriptedInvoker()
    d = dispatcher(invoker, live)
    mirror(d, Targets("candidate", "9", None, None))
    assert invoker.calls == []
    assert d.shadow["m"] == ShadowStats()
    assert d.shadow["m"].agreement() is None


def test_shadow_errors_are_counted_not_raised(clock: FakeClock, live: LiveState) -> None:
    invoker = ScriptedInvoker(
        {"m-shadow-rt": [BackendError("shadow broke"), SchemaMismatchError("x")]}, clock=clock
    )
    d = dispatcher(invoker, live)
    mirror(d)
    mirror(d)
    assert d.shadow["m"] == ShadowStats(mirrored=2, compared=0, agreed=0, shadow_errors=2)
    assert live.stats(SHADOW_RT).failures == 2


def test_a_full_shadow_queue_drops_the_copy(live: LiveState) -> None:
    invoker = ScriptedInvoker()
    executor = DeferredExecutor()  # the shadow "lags": nothing runs until run_pending
    d = dispatcher(invoker, live, executor, queue=1)
    primary = b'{"predictions": [0]}'
    mirror(d, primary=primary)
    mirror(d, primary=primary)
    mirror(d, primary=primary)
    assert executor.submitted == 1
    assert d.shadow["m"] == ShadowStats(mirrored=1, dropped=2)
    assert invoker.calls == []

    assert executor.run_pending() == 1
    assert d.shadow["m"] == ShadowStats(mirrored=1, compared=1, agreed=1, dropped=2)
    mirror(d, primary=primary)  # the slot is free again
    assert d.shadow["m"].mirrored == 2


def test_a_failed_shadow_call_frees_its_slot(live: LiveState) -> None:
    invoker = ScriptedInvoker({"m-shadow-rt": [BackendError("x")]})
    d = dispatcher(invoker, live, InlineExecutor(), queue=1)
    mirror(d)
    mirror(d)
    assert d.shadow["m"].dropped == 0
    assert d.shadow["m"].shadow_errors == 1
    assert d.shadow["m"].compared == 1


def test_a_zero_shadow_queue_drops_everything(live: LiveState) -> None:
    invoker = ScriptedInvoker()
    d = dispatcher(invoker, live, InlineExecutor(), queue=0)
    mirror(d)
    assert invoker.calls == []
    assert d.shadow["m"] == ShadowStats(dropped=1)


def test_shadow_stats_are_per_model(live: LiveState) -> None:
    d = dispatcher(ScriptedInvoker(), live)
    d.mirror("a", SHADOW, b"1", "application/json", "application/json", b"x", 1.0)
    d.mirror("b", SHADOW, b"1", "application/json", "application/json", b"x", 1.0)
    assert set(d.shadow) == {"a", "b"}
    assert d.shadow["a"].mirrored == d.shadow["b"].mirrored == 1


# Adapters are meant to raise only GatewayErrors, but not every failure is translated: e.g.
# HttpOipInvoker lets a 200 with a non-JSON body escape as ValueError from response.json(),
# SageMakerRuntimeInvoker a bad x-infergw-cold-start-ms header as ValueError from float().
UNTRANSLATED = (
    "BUG gateway/dispatch.py:119-135 call_sync: live.begin() is not paired with live.end() "
    "when the invoker raises anything but a GatewayError, so in_flight never comes down and "
    "a half-open probe stays 'probing' forever"
)


def test_an_untranslated_invoker_exception_still_ends_the_call(
    clock: FakeClock, live: LiveState
) -> None:
    invoker = ScriptedInvoker(default=ValueError("Expecting value: line 1 column 1"))
    d = dispatcher(invoker, live)
    threshold = live.stats(RT).breaker.threshold
    for _ in range(RT.capacity):
        attempt = call(d, [FIRST_RT])
        assert isinstance(attempt.error, BackendError | BackendUnavailableError)  # no crash
    # Each call until the breaker opened reached the backend; the rest were refused.
    assert len(invoker.calls) == threshold < RT.capacity
    # Observed: in_flight == capacity, so realtime looks saturated for the life of the process.
    assert live.stats(RT).in_flight == 0
    assert not live.view(RT).saturated


def test_an_untranslated_exception_during_the_probe_does_not_wedge_the_breaker(
    clock: FakeClock, live: LiveState
) -> None:
    for _ in range(3):
        call(dispatcher(ScriptedInvoker(default=BackendError("x")), live), [FIRST_RT])
    clock.advance(5.0)  # half-open: the next call is the probe
    attempt = call(dispatcher(ScriptedInvoker(default=ValueError("bad body")), live), [FIRST_RT])
    assert isinstance(attempt.error, BackendError)
    clock.advance(3600.0)
    # Observed: still unavailable an hour later (probing is never reset).
    assert live.view(RT).available


def test_an_untranslated_shadow_exception_is_counted_and_ends_the_call(live: LiveState) -> None:
    d = dispatcher(ScriptedInvoker(default=ValueError("bad body")), live)
    mirror(d)
    assert d.shadow["m"].shadow_errors == 1
    assert live.stats(SHADOW_RT).in_flight == 0


# --- agree -----------------------------------------------------------------------------------


def preds(*rows: object) -> bytes:
    return json.dumps({"model": "m", "version": "1", "predictions": list(rows)}).encode()


@pytest.mark.parametrize(
    ("primary", "shadow", "expected"),
    [
        pytest.param(
            preds({"label": 1, "probabilities": [0.1, 0.9]}),
            json.dumps(
                {"version": "2", "predictions": [{"label": 1, "probabilities": [0.4, 0.6]}]}
            ).encode(),
            True,
            id="same-labels-other-probabilities-and-version",
        ),
        pytest.param(preds({"label": 1}), preds({"label": 2}), False, id="different-labels"),
        pytest.param(
            preds({"label": 1}, {"label": 2}),
            preds({"label": 2}, {"label": 1}),
            False,
            id="labels-in-another-order",
        ),
        pytest.param(
            preds({"label": 1}), preds({"label": 1}, {"label": 1}), False, id="other-row-count"
        ),
        pytest.param(preds({"label": 1}), preds({"score": 1}), False, id="label-on-one-side"),
        pytest.param(preds(0, 1, 2), preds(0, 1, 2), True, id="same-unlabelled-predictions"),
        pytest.param(preds(0, 1, 2), preds(0, 1, 3), False, id="other-unlabelled-predictions"),
        pytest.param(preds(0.5), b'{"predictions": [0.5]}', True, id="extra-fields-ignored"),
        pytest.param(preds(1), b"not json", False, id="json-vs-non-json"),
        pytest.param(b"1\n0\n", b"1\n0\n", True, id="non-json-same-bytes"),
        pytest.param(b"1\n0\n", b"1\n1\n", False, id="non-json-other-bytes"),
        pytest.param(b"[1, 2]", b"[1, 2]", True, id="json-array-same-bytes"),
        pytest.param(b"[1, 2]", b"[1,2]", False, id="json-array-compares-bytes"),
        pytest.param(b"\xff\xfe", b"\xff\xfe", True, id="undecodable-same-bytes"),
        pytest.param(b"", b"", True, id="both-empty"),
    ],
)
def test_agree(primary: bytes, shadow: bytes, expected: bool) -> None:
    assert agree(primary, shadow) is expected


@pytest.mark.parametrize(
    ("primary", "shadow"),
    [
        pytest.param(b'{"scores": [0.1]}', b'{"scores": [0.9]}', id="other-key"),
        pytest.param(b'{"error": "model crashed"}', b'{"scores": [0.9]}', id="error-vs-answer"),
    ],
)
def test_answers_without_predictions_that_differ_do_not_agree(
    primary: bytes, shadow: bytes
) -> None:
    assert agree(primary, shadow) is False


# --- Gateway.invoke: variants and stickiness ---------------------------------------------------


BLUE_RT = EndpointTarget(endpoint_name="m-blue-rt")
GREEN_RT = EndpointTarget(endpoint_name="m-green-rt")
CANDIDATE_RT = EndpointTarget(endpoint_name="m-candidate-rt")
SPLIT = ModelPolicy(
    model="m",
    version="1",
    realtime=RT,
    serverless=SL,
    variants=[
        Variant(name="blue", version="3", weight=50, realtime=BLUE_RT),
        Variant(name="green", version="4", weight=50, realtime=GREEN_RT),
    ],
    allow_variant_override=True,
)
ENDPOINT_OF = {"blue": "m-blue-rt", "green": "m-green-rt"}
VERSION_OF = {"blue": "3", "green": "4"}
ALICE = Principal(tenant="tenant-a", key_id="key_alice", scopes=frozenset({"invoke"}))
BODY = b'{"inputs": [[1.0, 2.0]]}'


def gateway(
    clock: FakeClock, invoker: ScriptedInvoker, policy: ModelPolicy = SPLIT
) -> tuple[Gateway, Dispatcher]:
    live = LiveState(clock=clock)
    d = Dispatcher(invoker, live, shadow_executor=InlineExecutor())
    return Gateway(InMemoryPolicyStore([policy]), invoker, live=live, dispatcher=d, clock=clock), d


def invoke(gw: Gateway, headers: dict[str, str], principal: Principal = ALICE) -> InvocationOutcome:
    request = InvocationRequest("m", BODY, "application/json", hints=parse_hints(headers))
    return gw.invoke(principal, request)


def test_session_id_keeps_a_caller_on_one_variant(clock: FakeClock) -> None:
    invoker = ScriptedInvoker(clock=clock)
    gw, _ = gateway(clock, invoker)
    seen: set[str] = set()
    for i in range(40):
        session = f"session-{i}"
        expected = routing.pick_variant(SPLIT, session, None)
        assert expected is not None
        for _ in range(3):
            invoker.calls.clear()
            outcome = invoke(gw, {"x-session-id": session})
            assert outcome.status == 200
            assert outcome.decision == RouteDecision(Backend.REALTIME, "within-slo", expected.name)
            assert outcome.model_version == VERSION_OF[expected.name]
            assert invoker.endpoints() == [ENDPOINT_OF[expected.name]]
        seen.add(expected.name)
    assert seen == {"blue", "green"}  # 40 sessions reach both halves of a 50/50 split


def test_without_a_session_the_api_key_is_the_sticky_key(clock: FakeClock) -> None:
    gw, _ = gateway(clock, ScriptedInvoker(clock=clock))
    expected = routing.pick_variant(SPLIT, ALICE.key_id, None)
    assert expected is not None
    variants = {invoke(gw, {}).decision.variant for _ in range(5)}
    assert variants == {expected.name}


def test_target_variant_header_overrides_the_split(clock: FakeClock) -> None:
    invoker = ScriptedInvoker(clock=clock)
    gw, _ = gateway(clock, invoker)
    for name in ("blue", "green"):
        outcome = invoke(gw, {"x-target-variant": name, "x-session-id": "s-1"})
        assert (outcome.decision.variant, outcome.model_version) == (name, VERSION_OF[name])
    assert invoker.endpoints() == ["m-blue-rt", "m-green-rt"]


def test_a_variants_fallback_keeps_the_variant_and_its_version(clock: FakeClock) -> None:
    invoker = ScriptedInvoker(
        {"m-blue-rt": [BackendUnavailableError("blue down")]},
        clock=clock,
    )
    gw, _ = gateway(clock, invoker)
    outcome = invoke(gw, {"x-target-variant": "blue"})
    # Blue has no serverless of its own and inherits the policy's.
    assert invoker.endpoints() == ["m-blue-rt", "m-serverless"]
    assert outcome.decision == RouteDecision(Backend.SERVERLESS, "fallback-from-realtime", "blue")
    assert outcome.model_version == "3"


def test_shadow_traffic_through_the_gateway(clock: FakeClock) -> None:
    policy = ModelPolicy(
        model="m",
        version="1",
        realtime=RT,
        shadow=Variant(name="candidate", version="2", realtime=CANDIDATE_RT),
    )
    answer = reply(b'{"predictions": [{"label": 3}]}')
    invoker = ScriptedInvoker(default=answer, clock=clock)
    gw, d = gateway(clock, invoker, policy)
    outcome = invoke(gw, {})
    assert outcome.body == answer.body
    assert (outcome.decision.variant, outcome.model_version) == ("primary", "1")
    assert invoker.endpoints() == ["m-realtime", "m-candidate-rt"]
    assert d.shadow["m"] == ShadowStats(mirrored=1, compared=1, agreed=1)


def test_two_requests_planned_on_one_half_open_view_send_one_probe(
    clock: FakeClock, live: LiveState
) -> None:
    for _ in range(3):
        call(dispatcher(ScriptedInvoker(default=BackendError("x")), live), [FIRST_RT])
    clock.advance(5.0)
    assert live.view(RT).available  # both requests' routers see the probe slot free

    # The first request's probe is in flight when the second one is dispatched.
    probe = live.begin(RT)
    assert probe is not None
    second = ScriptedInvoker(default=BackendError("must not be called"))
    attempt = call(dispatcher(second, live), [FIRST_RT, FALLBACK_SL])
    assert second.endpoints() == ["m-serverless"]  # skipped the probing backend, fell back
    assert attempt.tried == ["serverless"]

    alone = ScriptedInvoker(default=BackendError("must not be called"))
    attempt = call(dispatcher(alone, live), [FIRST_RT])
    assert alone.calls == []
    assert isinstance(attempt.error, BackendUnavailableError)
    assert attempt.error.status == 503 and attempt.error.retry_after_s >= 1

    live.end(RT, probe, ok=True)  # the probe succeeds: the breaker closes
    assert live.begin(RT) is not None and live.begin(RT) is not None
