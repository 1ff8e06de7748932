"""gateway.routing: the pure router (``plan``), the variant split and the sync limits.

``plan`` is driven with hand-made ``BackendView`` values, so every rule of the module
docstring (and every tie at its thresholds) is one row of a table; Hypothesis then checks
the invariants over arbitrary views, sizes and budgets."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    MiB,
    ModelPolicy,
    Variant,
)
from gateway.routing import (
    CEILINGS,
    RequestFacts,
    Targets,
    pick_variant,
    plan,
    sync_limit,
    targets_for,
)
from gateway.values import Backend, RouteDecision

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RT = EndpointTarget(endpoint_name="m-realtime", expected_latency_ms=50.0, capacity=4)
SL = EndpointTarget(
    endpoint_name="m-serverless",
    expected_latency_ms=80.0,
    capacity=2,
    idle_timeout_s=600.0,
    cold_start_ms=3000.0,
)

# Views as the router sees them.
WARM = BackendView(available=True, saturated=False, expected_ms=50.0)
SLOW = BackendView(available=True, saturated=False, expected_ms=1500.0)
COLD = BackendView(available=True, saturated=False, expected_ms=3080.0, cold=True)
COLD_FAST = BackendView(available=True, saturated=False, expected_ms=300.0, cold=True)
FULL = BackendView(available=False, saturated=True, expected_ms=50.0)  # breaker open and full
SATURATED = BackendView(available=True, saturated=True, expected_ms=50.0)
UNHEALTHY = BackendView(available=False, saturated=False, expected_ms=50.0, retry_after_s=3.5)
EXACT = BackendView(available=True, saturated=False, expected_ms=1000.0)  # == default budget

SMALL = 1_000
BETWEEN = 5 * MiB  # above serverless (4 MiB), below realtime (6 MiB)
HUGE = 7 * MiB  # above every sync ceiling

ABSENT = None


def policy(
    realtime: EndpointTarget | None = RT,
    serverless: EndpointTarget | None = SL,
    async_enabled: bool = False,
    **fields: object,
) -> ModelPolicy:
    return ModelPolicy(
        model="m",
        version="7",
        realtime=realtime,
        serverless=serverless,
        async_enabled=async_enabled,
        **fields,
    )


@dataclass(frozen=True)
class Case:
    """One routing situation: the views of the two sync backends (None: not configured)."""

    realtime: BackendView | None = WARM
    serverless: BackendView | None = WARM
    size: int = SMALL
    budget_ms: float = 1000.0
    prefer_async: bool = False
    async_enabled: bool = False
    sync_max_bytes: int = REALTIME_MAX_BYTES

    def policy(self) -> ModelPolicy:
        return policy(
            RT if self.realtime is not None else None,
            SL if self.serverless is not None else None,
            self.async_enabled,
            sync_max_bytes=self.sync_max_bytes,
        )

    def views(self) -> dict[Backend, BackendView]:
        views = {Backend.REALTIME: self.realtime, Backend.SERVERLESS: self.serverless}
        return {b: v for b, v in views.items() if v is not None}

    def plan(self) -> list[RouteDecision]:
        p = self.policy()
        facts = RequestFacts(self.size, self.budget_ms, self.prefer_async)
        return plan(facts, p, targets_for(p, None), self.views())


def steps(decisions: list[RouteDecision]) -> list[tuple[str, str]]:
    return [(d.backend.value, d.reason) for d in decisions]


# --- plan: the chosen route and its fallbacks ---------------------------------------------


ROUTES = [
    # Rule 2: realtime when healthy, with headroom and fitting; fallbacks behind it.
    pytest.param(
        Case(),
        [("realtime", "within-slo"), ("serverless", "fallback")],
        id="realtime-healthy-within-slo",
    ),
    pytest.param(
        Case(async_enabled=True),
        [("realtime", "within-slo"), ("serverless", "fallback"), ("async", "fallback")],
        id="realtime-within-slo-fallbacks-serverless-then-async",
    ),
    pytest.param(
        Case(serverless=ABSENT),
        [("realtime", "within-slo")],
        id="realtime-only-no-fallbacks",
    ),
    pytest.param(
        Case(realtime=EXACT),
        [("realtime", "within-slo"), ("serverless", "fallback")],
        id="tie-expected-equals-budget-fits",
    ),
    pytest.param(
        Case(serverless=COLD, async_enabled=True),
        [("realtime", "within-slo"), ("serverless", "fallback"), ("async", "fallback")],
        id="too-slow-serverless-is-still-a-fallback",
    ),
    pytest.param(
        Case(serverless=SATURATED, async_enabled=True),
        [("realtime", "within-slo"), ("async", "fallback")],
        id="saturated-serverless-is-no-fallback",
    ),
    pytest.param(
        Case(serverless=UNHEALTHY, async_enabled=True),
        [("realtime", "within-slo"), ("async", "fallback")],
        id="unhealthy-serverless-is-no-fallback",
    ),
    # Rule 3: else serverless, the reason naming why realtime was passed over.
    pytest.param(
        Case(realtime=SATURATED),
        [("serverless", "realtime-saturated")],
        id="realtime-saturated",
    ),
    pytest.param(
        Case(realtime=SATURATED, async_enabled=True),
        [("serverless", "realtime-saturated"), ("async", "fallback")],
        id="realtime-saturated-async-fallback",
    ),
    pytest.param(
        Case(realtime=UNHEALTHY),
        [("serverless", "realtime-unhealthy")],
        id="realtime-unhealthy",
    ),
    pytest.param(
        Case(realtime=FULL),
        [("serverless", "realtime-unhealthy")],
        id="unhealthy-wins-over-saturated",
    ),
    pytest.param(
        Case(realtime=ABSENT),
        [("serverless", "realtime-absent")],
        id="realtime-absent",
    ),
    pytest.param(
        Case(realtime=SLOW),
        [("serverless", "realtime-too-slow"), ("realtime", "fallback")],
        id="realtime-too-slow",
    ),
    pytest.param(
        Case(realtime=SLOW, async_enabled=True),
        [("serverless", "realtime-too-slow"), ("realtime", "fallback"), ("async", "fallback")],
        id="realtime-too-slow-fallbacks-realtime-then-async",
    ),
    pytest.param(
        Case(realtime=COLD),
        [("serverless", "realtime-cold"), ("realtime", "fallback")],
        id="realtime-cold-too-slow",
    ),
    pytest.param(
        Case(realtime=ABSENT, serverless=COLD_FAST),
        [("serverless", "realtime-absent")],
        id="serverless-cold-but-fits",
    ),
    pytest.param(
        Case(realtime=ABSENT, serverless=COLD, budget_ms=3080.0),
        [("serverless", "realtime-absent")],
        id="tie-cold-start-included-equals-budget",
    ),
    # Rule 4: nothing sync fits -> async when allowed.
    pytest.param(
        Case(realtime=ABSENT, serverless=COLD, async_enabled=True),
        [("async", "no-sync-backend-fits:realtime-absent,serverless-cold")],
        id="serverless-cold-budget-too-tight-async",
    ),
    pytest.param(
        Case(realtime=SLOW, serverless=COLD, async_enabled=True),
        [("async", "no-sync-backend-fits:realtime-too-slow,serverless-cold")],
        id="both-too-slow-async",
    ),
    pytest.param(
        Case(realtime=SATURATED, serverless=UNHEALTHY, async_enabled=True),
        [("async", "no-sync-backend-fits:realtime-saturated,serverless-unhealthy")],
        id="both-unusable-async",
    ),
    pytest.param(
        Case(realtime=ABSENT, serverless=ABSENT, async_enabled=True),
        [("async", "payload-over-sync-limit")],
        id="async-only-model",
    ),
    # Rule 1: above the sync limit, or Prefer: respond-async.
    pytest.param(
        Case(size=HUGE, async_enabled=True),
        [("async", "payload-over-sync-limit")],
        id="payload-above-sync-limit-async",
    ),
    pytest.param(
        Case(size=REALTIME_MAX_BYTES + 1, async_enabled=True),
        [("async", "payload-over-sync-limit")],
        id="tie-one-byte-over-realtime-ceiling-async",
    ),
    pytest.param(
        Case(size=REALTIME_MAX_BYTES),
        [("realtime", "within-slo")],
        id="tie-exactly-realtime-ceiling-sync",
    ),
    pytest.param(
        Case(size=2_001, sync_max_bytes=2_000, async_enabled=True),
        [("async", "payload-over-sync-limit")],
        id="policy-sync-max-bytes-lower-than-ceilings",
    ),
    pytest.param(
        Case(size=2_000, sync_max_bytes=2_000),
        [("realtime", "within-slo"), ("serverless", "fallback")],
        id="tie-exactly-policy-sync-max-bytes",
    ),
    pytest.param(
        Case(prefer_async=True, async_enabled=True),
        [("async", "prefer-async")],
        id="prefer-async-with-async",
    ),
    pytest.param(
        Case(prefer_async=True, size=HUGE, async_enabled=True),
        [("async", "prefer-async")],
        id="prefer-async-and-too-large-with-async",
    ),
    pytest.param(
        Case(prefer_async=True),
        [("realtime", "within-slo"), ("serverless", "fallback")],
        id="prefer-async-without-async-ignored-rfc7240",
    ),
    pytest.param(
        Case(prefer_async=True, realtime=SATURATED),
        [("serverless", "realtime-saturated")],
        id="prefer-async-without-async-still-spills-over",
    ),
    # Between the serverless (4 MiB) and realtime (6 MiB) ceilings: never serverless.
    pytest.param(
        Case(size=BETWEEN),
        [("realtime", "within-slo")],
        id="between-ceilings-realtime-no-serverless-fallback",
    ),
    pytest.param(
        Case(size=BETWEEN, async_enabled=True),
        [("realtime", "within-slo"), ("async", "fallback")],
        id="between-ceilings-realtime-then-async",
    ),
    pytest.param(
        Case(size=BETWEEN, realtime=SATURATED, async_enabled=True),
        [("async", "no-sync-backend-fits:realtime-saturated,payload-over-serverless-limit")],
        id="between-ceilings-realtime-saturated-async-not-serverless",
    ),
    pytest.param(
        Case(size=BETWEEN, realtime=ABSENT, async_enabled=True),
        [("async", "payload-over-sync-limit")],
        id="between-ceilings-serverless-only-is-over-its-limit",
    ),
    pytest.param(
        Case(size=SERVERLESS_MAX_BYTES, realtime=ABSENT),
        [("serverless", "realtime-absent")],
        id="tie-exactly-serverless-ceiling",
    ),
    pytest.param(
        Case(size=SERVERLESS_MAX_BYTES + 1, realtime=SATURATED, async_enabled=True),
        [("async", "no-sync-backend-fits:realtime-saturated,payload-over-serverless-limit")],
        id="tie-one-byte-over-serverless-ceiling",
    ),
]


@pytest.mark.parametrize(("case", "expected"), ROUTES)
def test_plan_routes(case: Case, expected: list[tuple[str, str]]) -> None:
    assert steps(case.plan()) == expected


def test_every_step_carries_the_variant() -> None:
    p = policy(async_enabled=True)
    variant = Variant(name="green", version="8", weight=1)
    decisions = plan(
        RequestFacts(SMALL, 1000.0),
        p,
        targets_for(p, variant),
        {Backend.REALTIME: WARM, Backend.SERVERLESS: WARM},
    )
    assert len(decisions) == 3
    assert {d.variant for d in decisions} == {"green"}


def test_plan_is_pure() -> None:
    case = Case(realtime=SLOW, async_enabled=True)
    assert case.plan() == case.plan()


# --- plan: 413 and 503 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "limit"),
    [
        pytest.param(Case(size=HUGE), REALTIME_MAX_BYTES, id="above-realtime-ceiling"),
        pytest.param(
            Case(size=REALTIME_MAX_BYTES + 1), REALTIME_MAX_BYTES, id="one-byte-over-realtime"
        ),
        pytest.param(
            Case(size=BETWEEN, realtime=ABSENT), SERVERLESS_MAX_BYTES, id="serverless-only"
        ),
        pytest.param(Case(size=2_001, sync_max_bytes=2_000), 2_000, id="policy-sync-max-bytes"),
        pytest.param(
            Case(size=HUGE, prefer_async=True), REALTIME_MAX_BYTES, id="prefer-async-too-large"
        ),
        pytest.param(Case(size=1, realtime=ABSENT, serverless=ABSENT), 0, id="no-sync-backend"),
    ],
)
def test_payload_above_sync_limit_without_async_is_413(case: Case, limit: int) -> None:
    with pytest.raises(PayloadTooLargeError) as raised:
        case.plan()
    assert raised.value.status == 413
    assert raised.value.extensions == {"limit_bytes": limit, "size_bytes": case.size}


@pytest.mark.parametrize(
    ("case", "reasons", "retry_after"),
    [
        pytest.param(
            Case(realtime=ABSENT, serverless=COLD),
            ["realtime-absent", "serverless-cold"],
            1.0,
            id="serverless-cold-budget-too-tight",
        ),
        pytest.param(
            Case(realtime=SLOW, serverless=COLD),
            ["realtime-too-slow", "serverless-cold"],
            1.0,
            id="both-too-slow",
        ),
        pytest.param(
            Case(realtime=SATURATED, serverless=SATURATED),
            ["realtime-saturated", "serverless-saturated"],
            1.0,
            id="both-saturated",
        ),
        pytest.param(
            Case(realtime=UNHEALTHY, serverless=SATURATED),
            ["realtime-unhealthy", "serverless-saturated"],
            3.5,
            id="breaker-open-retry-after-from-breaker",
        ),
        pytest.param(
            Case(realtime=UNHEALTHY, serverless=ABSENT),
            ["realtime-unhealthy", "serverless-absent"],
            3.5,
            id="only-backend-unhealthy",
        ),
        pytest.param(
            Case(
                realtime=BackendView(False, False, 50.0, retry_after_s=0.2),
                serverless=BackendView(False, False, 50.0, retry_after_s=4.0),
            ),
            ["realtime-unhealthy", "serverless-unhealthy"],
            1.0,
            id="retry-after-never-below-one-second",
        ),
        pytest.param(
            Case(
                realtime=BackendView(False, False, 50.0, retry_after_s=2.5),
                serverless=BackendView(False, False, 50.0, retry_after_s=4.0),
            ),
            ["realtime-unhealthy", "serverless-unhealthy"],
            2.5,
            id="retry-after-is-the-soonest-breaker",
        ),
        pytest.param(
            Case(size=BETWEEN, realtime=SATURATED),
            ["realtime-saturated", "payload-over-serverless-limit"],
            1.0,
            id="between-ceilings-realtime-saturated",
        ),
        pytest.param(
            Case(size=0, realtime=ABSENT, serverless=ABSENT),
            ["realtime-absent", "serverless-absent"],
            1.0,
            id="empty-body-no-backends",
        ),
    ],
)
def test_nothing_fits_without_async_is_503(
    case: Case, reasons: list[str], retry_after: float
) -> None:
    with pytest.raises(BackendUnavailableError) as raised:
        case.plan()
    assert raised.value.status == 503
    assert raised.value.extensions == {"reasons": reasons}
    assert raised.value.retry_after_s == pytest.approx(retry_after)
    assert raised.value.retry_after_s >= 1


# --- sync_limit and targets_for ------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "limit"),
    [
        pytest.param(policy(), REALTIME_MAX_BYTES, id="both"),
        pytest.param(policy(serverless=None), REALTIME_MAX_BYTES, id="realtime-only"),
        pytest.param(policy(realtime=None), SERVERLESS_MAX_BYTES, id="serverless-only"),
        pytest.param(policy(None, None, True), 0, id="none"),
        pytest.param(policy(sync_max_bytes=1234), 1234, id="policy-lower"),
        pytest.param(
            policy(realtime=None, sync_max_bytes=10 * MiB), SERVERLESS_MAX_BYTES, id="policy-higher"
        ),
    ],
)
def test_sync_limit(p: ModelPolicy, limit: int) -> None:
    assert sync_limit(p) == limit
    assert sync_limit(p, targets_for(p, None)) == limit


def test_sync_limit_uses_the_variants_endpoints() -> None:
    p = policy(realtime=None)
    with_realtime = Variant(name="big", version="2", realtime=RT)
    assert sync_limit(p, targets_for(p, with_realtime)) == REALTIME_MAX_BYTES


def test_targets_for_primary_and_variants() -> None:
    p = policy()
    assert targets_for(p, None) == Targets("primary", "7", RT, SL)
    own_rt = EndpointTarget(endpoint_name="m-green-rt")
    own = Variant(name="green", version="8", realtime=own_rt)
    # A variant's own endpoint replaces the policy's; a missing one is inherited.
    assert targets_for(p, own) == Targets("green", "8", own_rt, SL)
    assert targets_for(p, own).of(Backend.ASYNC) is None


# --- pick_variant ----------------------------------------------------------------------------


def split(*weights: tuple[str, float], **fields: object) -> ModelPolicy:
    variants = [
        Variant(name=name, version=str(i + 1), weight=weight)
        for i, (name, weight) in enumerate(weights)
    ]
    return policy(variants=variants, **fields)


@pytest.mark.parametrize(
    "p",
    [
        pytest.param(split(("a", 50), ("b", 50)), id="50-50"),
        pytest.param(split(("a", 90), ("b", 10)), id="90-10"),
        pytest.param(split(("a", 70), ("b", 20), ("c", 10)), id="70-20-10"),
        pytest.param(split(("a", 1), ("off", 0), ("b", 3)), id="zero-weight-in-the-middle"),
        pytest.param(split(("a", 0.5), ("b", 0.25), ("c", 0.25)), id="fractional"),
    ],
)
def test_weights_converge_over_many_sticky_keys(p: ModelPolicy) -> None:
    n = 20_000
    seen = Counter(pick_variant(p, f"caller-{i}", None).name for i in range(n))
    total = sum(v.weight for v in p.variants)
    for v in p.variants:
        share = v.weight / total
        # 5 standard deviations of a binomial share: a fair split never misses this.
        tolerance = 5 * (share * (1 - share) / n) ** 0.5 + 1e-9
        assert abs(seen[v.name] / n - share) <= tolerance, (v.name, seen)
    assert set(seen) == {v.name for v in p.variants if v.weight > 0}


@PROPERTY
@given(
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
    key=st.text(min_size=1, max_size=40),
)
def test_the_same_key_always_lands_on_the_same_weighted_variant(
    weights: list[int], key: str
) -> None:
    p = split(*((f"v{i}", w) for i, w in enumerate(weights)))
    first = pick_variant(p, key, None)
    assert first is not None
    assert first.weight > 0  # a zero-weight variant takes no traffic
    assert pick_variant(p, key, None) == first
    # Unrelated policy changes do not move anyone.
    assert pick_variant(p.model_copy(update={"slo_ms": 5, "revision": 9}), key, None) == first


def test_different_keys_spread_and_models_split_independently() -> None:
    p = split(("a", 50), ("b", 50))
    other = p.model_copy(update={"model": "other"})
    keys = [f"k{i}" for i in range(200)]
    here = [pick_variant(p, k, None).name for k in keys]
    there = [pick_variant(other, k, None).name for k in keys]
    assert set(here) == {"a", "b"}
    assert here != there  # the model is part of the hash


@pytest.mark.parametrize(
    "p",
    [
        pytest.param(policy(), id="no-variants"),
        pytest.param(split(("a", 0), ("b", 0)), id="all-zero-weights"),
    ],
)
def test_zero_total_weight_serves_the_primary(p: ModelPolicy) -> None:
    assert pick_variant(p, "anyone", None) is None
    assert targets_for(p, None).variant == "primary"


@pytest.mark.parametrize(
    ("allow", "requested", "expected"),
    [
        pytest.param(True, "b", "b", id="allowed"),
        pytest.param(True, "off", "off", id="allowed-even-at-zero-weight"),
        pytest.param(False, "b", ForbiddenError, id="forbidden"),
        pytest.param(False, "nope", ForbiddenError, id="forbidden-before-unknown"),
        pytest.param(True, "nope", NotFoundError, id="unknown"),
        pytest.param(True, "primary", NotFoundError, id="primary-unknown-when-split"),
    ],
)
def test_variant_override(allow: bool, requested: str, expected: str | type[Exception]) -> None:
    p = split(("a", 100), ("b", 0), ("off", 0), allow_variant_override=allow)
    if isinstance(expected, str):
        chosen = pick_variant(p, "sticky", requested)
        assert chosen is not None
        assert chosen.name == expected
    else:
        with pytest.raises(expected):
            pick_variant(p, "sticky", requested)


@pytest.mark.parametrize("allow", [True, False])
def test_requesting_primary_of_a_model_without_variants_is_fine(allow: bool) -> None:
    assert pick_variant(policy(allow_variant_override=allow), "k", "primary") is None


# --- plan: properties ------------------------------------------------------------------------


views_st = st.builds(
    BackendView,
    available=st.booleans(),
    saturated=st.booleans(),
    expected_ms=st.floats(1.0, 5_000.0),
    cold=st.booleans(),
    retry_after_s=st.one_of(st.just(0.0), st.floats(0.0, 30.0)),
)
sizes_st = st.one_of(
    st.integers(0, 8 * MiB),
    st.sampled_from(
        [
            0,
            SERVERLESS_MAX_BYTES,
            SERVERLESS_MAX_BYTES + 1,
            REALTIME_MAX_BYTES,
            REALTIME_MAX_BYTES + 1,
        ]
    ),
)


Situation = tuple[RequestFacts, ModelPolicy, Targets, dict[Backend, BackendView]]


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    has_rt, has_sl = draw(st.booleans()), draw(st.booleans())
    p = policy(
        RT if has_rt else None,
        SL if has_sl else None,
        draw(st.booleans()),
        sync_max_bytes=draw(st.one_of(st.just(REALTIME_MAX_BYTES), st.integers(1, 10 * MiB))),
    )
    views: dict[Backend, BackendView] = {}
    if has_rt:
        views[Backend.REALTIME] = draw(views_st)
    if has_sl:
        views[Backend.SERVERLESS] = draw(views_st)
    # Budgets equal to an expected latency hit the tie at the threshold.
    ties = [v.expected_ms for v in views.values()] or [1.0]
    budget = draw(st.one_of(st.floats(1.0, 5_000.0), st.sampled_from(ties)))
    facts = RequestFacts(draw(sizes_st), budget, draw(st.booleans()))
    return facts, p, targets_for(p, None), views


def usable(
    backend: Backend, facts: RequestFacts, p: ModelPolicy, views: dict[Backend, BackendView]
) -> bool:
    """Configured, within its ceiling and the policy's limit, available, unsaturated, fitting."""
    view = views.get(backend)
    return (
        view is not None
        and facts.size <= min(CEILINGS[backend], p.sync_max_bytes)
        and view.available
        and not view.saturated
        and view.expected_ms <= facts.budget_ms
    )


def plan_or_error(
    facts: RequestFacts, p: ModelPolicy, targets: Targets, views: dict[Backend, BackendView]
) -> list[RouteDecision] | PayloadTooLargeError | BackendUnavailableError:
    try:
        return plan(facts, p, targets, views)
    except (PayloadTooLargeError, BackendUnavailableError) as error:
        return error


@PROPERTY
@given(situations())
def test_property_never_routes_a_payload_above_a_backends_ceiling(situation: Situation) -> None:
    facts, p, targets, views = situation
    result = plan_or_error(facts, p, targets, views)
    if isinstance(result, list):
        for decision in result:
            if decision.backend is not Backend.ASYNC:
                assert facts.size <= CEILINGS[decision.backend]
                assert facts.size <= p.sync_max_bytes


@PROPERTY
@given(situations())
def test_property_never_picks_a_too_slow_backend_when_another_fits(situation: Situation) -> None:
    facts, p, targets, views = situation
    result = plan_or_error(facts, p, targets, views)
    fitting = [b for b in (Backend.REALTIME, Backend.SERVERLESS) if usable(b, facts, p, views)]
    honours_async = facts.prefer_async and p.async_enabled
    if fitting and not honours_async:
        assert isinstance(result, list)
        assert result[0].backend is fitting[0]  # and realtime first when both fit
    if isinstance(result, list) and result[0].backend is not Backend.ASYNC:
        assert views[result[0].backend].expected_ms <= facts.budget_ms


@PROPERTY
@given(situations())
def test_property_chosen_and_fallback_sync_backends_are_healthy(situation: Situation) -> None:
    facts, p, targets, views = situation
    result = plan_or_error(facts, p, targets, views)
    if not isinstance(result, list):
        return
    chosen, *fallbacks = result
    sync = [d for d in result if d.backend is not Backend.ASYNC]
    for decision in sync:
        assert targets.of(decision.backend) is not None
        assert views[decision.backend].available
        assert not views[decision.backend].saturated
    if chosen.backend is not Backend.ASYNC:
        assert chosen.reason != "fallback"
    assert all(d.reason == "fallback" for d in fallbacks)
    # No backend twice; async, when present, only last.
    assert len({d.backend for d in result}) == len(result)
    assert all(d.backend is not Backend.ASYNC for d in result[:-1])
    if fallbacks and p.async_enabled:
        assert result[-1].backend is Backend.ASYNC


@PROPERTY
@given(situations())
def test_property_plan_returns_steps_or_raises_413_or_503_only(situation: Situation) -> None:
    facts, p, targets, views = situation
    result = plan_or_error(facts, p, targets, views)  # anything else propagates and fails
    if isinstance(result, list):
        assert result
        assert all(d.variant == "primary" for d in result)
        if any(d.backend is Backend.ASYNC for d in result):
            assert p.async_enabled
        return
    assert not p.async_enabled  # with async, there is always somewhere to go
    if isinstance(result, PayloadTooLargeError):
        assert facts.size > sync_limit(p, targets)
    else:
        assert facts.size <= sync_limit(p, targets)
        assert result.retry_after_s is not None
        assert result.retry_after_s >= 1
        assert not any(usable(b, facts, p, views) for b in views)
