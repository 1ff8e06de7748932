"""gateway.admission: which limits apply, the RateLimit headers, failure modes, concurrency."""

from __future__ import annotations

import calendar
import re

import pytest

from functions.problems import problem_headers
from gateway.admission import Admission
from gateway.errors import DependencyUnavailableError, RateLimitedError
from gateway.models import DEFAULT_TIERS, ModelPolicy, RateLimitSpec, Tier
from gateway.ratelimit import LeasedLimiter
from gateway.values import Principal
from tests.fakes import DeferredExecutor, FakeClock, InMemoryLimitStore

NOW = float(calendar.timegm((2026, 3, 14, 15, 9, 26)))
DAY = "2026-03-14"
MIDNIGHT = float(calendar.timegm((2026, 3, 15, 0, 0, 0)))
IRIS = ModelPolicy(model="iris")

# draft-ietf-httpapi-ratelimit-headers: a list of sf-strings with integer parameters
POLICY_ITEM = re.compile(r'"(?P<name>[a-z]+)";q=(?P<q>\d+);w=(?P<w>\d+)')
RATELIMIT = re.compile(r'"(?P<name>[a-z]+)";r=(?P<r>\d+);t=(?P<t>\d+)')


def principal(tier: str = "standard", key_id: str = "key_abc", tenant: str = "acme") -> Principal:
    return Principal(tenant=tenant, key_id=key_id, scopes=frozenset({"invoke"}), tier=tier)


class Gate:
    def __init__(self, tiers: dict[str, Tier] | None = None) -> None:
        self.clock = FakeClock(NOW)
        self.store = InMemoryLimitStore()
        self.executor = DeferredExecutor()
        self.limiter = LeasedLimiter(self.store, clock=self.clock, executor=self.executor)
        self.admission = Admission(self.limiter, tiers, clock=self.clock)

    def admit(self, who: Principal, policy: ModelPolicy = IRIS) -> dict[str, str]:
        ticket = self.admission.admit(who, policy)
        self.executor.run_pending()
        ticket.release()
        return ticket.headers


def policy_items(header: str) -> list[dict[str, str]]:
    items = header.split(", ")
    matches = [POLICY_ITEM.fullmatch(item) for item in items]
    assert all(matches), header
    return [m.groupdict() for m in matches if m]


# --- limits_for -----------------------------------------------------------------------


def test_standard_tier_limits_are_key_tenant_and_daily() -> None:
    limits = Gate().admission.limits_for(principal(), IRIS)
    assert [(lim.name, lim.key) for lim in limits] == [
        ("key", "rate#key#key_abc"),
        ("tenant", "rate#tenant#acme"),
        ("daily", f"quota#acme#{DAY}"),
    ]
    key, tenant, daily = limits
    assert (key.rate, key.burst, key.window_s, key.expires_at) == (50, 100, 2, None)
    assert (tenant.rate, tenant.burst, tenant.window_s) == (100, 200, 2)
    assert (daily.rate, daily.burst, daily.window_s) == (0.0, 1_000_000, 86_400)
    assert daily.expires_at == MIDNIGHT


def test_a_policy_rate_limit_adds_a_model_limit_per_tenant() -> None:
    policy = ModelPolicy(model="iris", rate_limit=RateLimitSpec(rate_per_s=3, burst=10))
    limits = Gate().admission.limits_for(principal(tenant="beta"), policy)
    assert [lim.name for lim in limits] == ["key", "tenant", "model", "daily"]
    model = limits[2]
    assert (model.key, model.rate, model.burst, model.window_s) == (
        "rate#model#iris#beta",
        3,
        10,
        4,  # ceil(10 / 3)
    )


def test_a_tier_without_quota_has_no_daily_limit() -> None:
    limits = Gate().admission.limits_for(principal("premium"), IRIS)
    assert [lim.name for lim in limits] == ["key", "tenant"]
    assert DEFAULT_TIERS["premium"].daily_quota is None


def test_free_tier_limits_and_windows() -> None:
    limits = Gate().admission.limits_for(principal("free"), IRIS)
    assert [(lim.name, lim.rate, lim.burst, lim.window_s) for lim in limits] == [
        ("key", 2, 5, 3),
        ("tenant", 5, 10, 2),
        ("daily", 0.0, 1_000, 86_400),
    ]


def test_an_unknown_tier_gets_the_standard_limits() -> None:
    gate = Gate()
    assert gate.admission.limits_for(principal("gold"), IRIS) == gate.admission.limits_for(
        principal("standard"), IRIS
    )


def test_the_daily_bucket_changes_at_midnight_utc() -> None:
    gate = Gate()
    gate.clock.now = MIDNIGHT - 0.001
    before = gate.admission.limits_for(principal(), IRIS)[-1]
    gate.clock.now = MIDNIGHT
    after = gate.admission.limits_for(principal(), IRIS)[-1]
    assert (before.key, before.expires_at) == (f"quota#acme#{DAY}", MIDNIGHT)
    assert (after.key, after.expires_at) == ("quota#acme#2026-03-15", MIDNIGHT + 86_400)


# --- headers --------------------------------------------------------------------------


def test_allowed_requests_carry_every_policy_and_the_tightest_remaining() -> None:
    gate = Gate()
    headers = gate.admit(principal())
    assert headers == {
        "RateLimit-Policy": '"key";q=100;w=2, "tenant";q=200;w=2, "daily";q=1000000;w=86400',
        # key: 9 leased + 90 in the bucket; t: until the bucket is full again at 50/s
        "RateLimit": '"key";r=99;t=1',
    }
    assert [item["name"] for item in policy_items(headers["RateLimit-Policy"])] == [
        "key",
        "tenant",
        "daily",
    ]
    assert RATELIMIT.fullmatch(headers["RateLimit"])


def test_free_tier_headers_count_down_then_a_429_carries_retry_after_and_headers() -> None:
    gate = Gate()
    who = principal("free")
    seen = [gate.admit(who)["RateLimit"] for _ in range(5)]
    assert seen == [
        '"key";r=4;t=1',
        '"key";r=3;t=1',
        '"key";r=2;t=2',
        '"key";r=1;t=2',
        '"key";r=0;t=3',
    ]
    with pytest.raises(RateLimitedError) as caught:
        gate.admission.admit(who, IRIS)
    error = caught.value
    assert error.status == 429
    assert error.extensions["limit"] == "key"
    assert error.retry_after_s == 0.5  # one token at 2/s
    assert error.headers == {
        "RateLimit-Policy": '"key";q=5;w=3, "tenant";q=10;w=2, "daily";q=1000;w=86400',
        "RateLimit": '"key";r=0;t=1',
    }
    assert problem_headers(error)["Retry-After"] == "1"
    assert "key limit" in error.detail
    assert (gate.admission.stats.limited, gate.admission.stats.by_limit) == (1, {"key": 1})

    gate.clock.advance(error.retry_after_s)
    assert gate.admit(who)["RateLimit"] == '"key";r=0;t=3'


def test_the_tenant_limit_is_shared_by_the_tenants_keys() -> None:
    gate = Gate()
    for key_id in ("key_a", "key_b"):
        for _ in range(5):
            gate.admit(principal("free", key_id=key_id))
    with pytest.raises(RateLimitedError) as caught:
        gate.admit(principal("free", key_id="key_c"))
    assert caught.value.extensions["limit"] == "tenant"
    match = RATELIMIT.fullmatch(caught.value.headers["RateLimit"])
    assert match is not None and match["name"] == "tenant"
    gate.admit(principal("free", key_id="key_d", tenant="other"))  # other tenants unaffected


def test_a_model_limit_denies_with_its_own_name() -> None:
    gate = Gate()
    policy = ModelPolicy(model="iris", rate_limit=RateLimitSpec(rate_per_s=1, burst=2))
    gate.admit(principal(), policy)
    gate.admit(principal(), policy)
    with pytest.raises(RateLimitedError) as caught:
        gate.admit(principal(), policy)
    assert caught.value.extensions["limit"] == "model"
    assert caught.value.retry_after_s == 1.0
    assert '"model";q=2;w=2' in caught.value.headers["RateLimit-Policy"]
    assert caught.value.headers["RateLimit"] == '"model";r=0;t=1'


def test_an_exhausted_daily_quota_retries_after_midnight() -> None:
    roomy = RateLimitSpec(rate_per_s=1_000, burst=1_000)
    gate = Gate({"standard": Tier(key=roomy, tenant=roomy, daily_quota=3)})
    for _ in range(3):
        gate.admit(principal())
    with pytest.raises(RateLimitedError) as caught:
        gate.admit(principal())
    error = caught.value
    assert error.extensions["limit"] == "daily"
    assert error.retry_after_s == MIDNIGHT - NOW
    assert error.headers["RateLimit"] == f'"daily";r=0;t={int(MIDNIGHT - NOW)}'
    assert "3 requests per day" in error.detail
    gate.clock.advance(error.retry_after_s)
    gate.admit(principal())  # a new day, a new bucket


def test_rate_limit_reset_of_a_daily_quota_counts_down_to_midnight() -> None:
    roomy = RateLimitSpec(rate_per_s=1_000, burst=1_000)
    gate = Gate({"standard": Tier(key=roomy, tenant=roomy, daily_quota=3)})
    gate.clock.now = MIDNIGHT - 3_600
    headers = gate.admit(principal())
    assert headers["RateLimit"] == '"daily";r=2;t=3600'


def test_rate_limit_remaining_is_never_negative() -> None:
    roomy = RateLimitSpec(rate_per_s=1_000, burst=1_000)
    gate = Gate({"standard": Tier(key=RateLimitSpec(rate_per_s=1.1, burst=1), tenant=roomy)})
    gate.clock.now = 1_000.0  # e.g. a monotonic clock
    gate.admit(principal())
    with pytest.raises(RateLimitedError) as caught:
        gate.admit(principal())
    gate.clock.advance(caught.value.retry_after_s)
    headers = gate.admit(principal())
    match = RATELIMIT.fullmatch(headers["RateLimit"])
    assert match is not None, headers["RateLimit"]  # observed: "key";r=-1;t=2


# --- concurrency ------------------------------------------------------------------------


def test_the_cap_plus_first_concurrent_request_is_rejected_until_a_release() -> None:
    gate = Gate()
    policy = ModelPolicy(model="iris", max_concurrency=2)
    first = gate.admission.admit(principal("premium"), policy)
    second = gate.admission.admit(principal("premium"), policy)
    with pytest.raises(RateLimitedError) as caught:
        gate.admission.admit(principal("premium"), policy)
    assert caught.value.status == 429
    assert caught.value.extensions["limit"] == "concurrency"
    assert caught.value.retry_after_s == 1
    assert caught.value.headers["RateLimit-Policy"].startswith('"key";')
    assert gate.admission.stats.by_limit == {"concurrency": 1}

    other = gate.admission.admit(principal("premium"), ModelPolicy(model="wine", max_concurrency=2))
    first.release()
    first.release()  # idempotent: frees one slot, not two
    third = gate.admission.admit(principal("premium"), policy)
    with pytest.raises(RateLimitedError):
        gate.admission.admit(principal("premium"), policy)
    for ticket in (second, third, other):
        ticket.release()
    assert gate.admission.stats.allowed == 4


def test_without_a_cap_release_is_a_no_op() -> None:
    ticket = Gate().admission.admit(principal(), IRIS)
    ticket.release()
    ticket.release()


# --- failure modes ------------------------------------------------------------------------


def test_store_failure_fails_open_by_default() -> None:
    gate = Gate()
    gate.store.unavailable = True
    ticket = gate.admission.admit(principal(), IRIS)
    stats = gate.admission.stats
    assert (stats.allowed, stats.failed_open, stats.store_failures) == (1, 3, 3)
    assert set(ticket.headers) == {"RateLimit-Policy"}  # no verdict, so no remaining


def test_failing_open_still_caps_concurrency() -> None:
    gate = Gate()
    gate.store.unavailable = True
    policy = ModelPolicy(model="iris", max_concurrency=1)
    gate.admission.admit(principal(), policy)
    with pytest.raises(RateLimitedError):
        gate.admission.admit(principal(), policy)


def test_store_failure_fails_closed_when_the_policy_says_so() -> None:
    gate = Gate()
    gate.store.unavailable = True
    policy = ModelPolicy(model="iris", limiter_failure_mode="closed")
    with pytest.raises(DependencyUnavailableError) as caught:
        gate.admission.admit(principal(), policy)
    assert caught.value.status == 503
    stats = gate.admission.stats
    assert (stats.allowed, stats.failed_open, stats.store_failures) == (0, 0, 1)
