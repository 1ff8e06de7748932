"""gateway.ratelimit: the pure token bucket and the leased limiter built on it.

Background refills run on a ``DeferredExecutor`` so a test (or Hypothesis) decides when
they happen; an inline executor would deadlock ``LeasedLimiter``, which submits its refill
while holding the bucket's lock."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DependencyUnavailableError
from gateway.ratelimit import BucketState, LeasedLimiter, Limit, Verdict, seconds_until, take
from tests.fakes import DeferredExecutor, FakeClock, InMemoryLimitStore

START = 1_000.0
EPS = 1e-6  # float slack in bounds
SLACK_S = 1e-6  # waits are honest up to float rounding; see the xfail tests for exactness
HAIR = 1e-9  # take() grants a token from 1 - 1e-9, leaving at worst -1e-9 (xfail below)
EPOCH = 1_773_500_966.0  # 2026-03-14T15:09:26Z: what time.time() looks like

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- take ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "now", "rate", "burst", "want", "granted", "after"),
    [
        # a new bucket starts full
        (None, 5.0, 1.0, 10, 3, 3, BucketState(7.0, 5.0)),
        (None, 5.0, 1.0, 10, 25, 10, BucketState(0.0, 5.0)),
        (None, 5.0, 0.0, 10, 4, 4, BucketState(6.0, 5.0)),
        # refill by elapsed * rate
        (BucketState(2.0, 10.0), 12.0, 1.5, 10, 10, 5, BucketState(0.0, 12.0)),
        (BucketState(0.0, 10.0), 10.5, 4.0, 10, 1, 1, BucketState(1.0, 10.5)),
        # ... capped at burst
        (BucketState(8.0, 0.0), 100.0, 1.0, 10, 1, 1, BucketState(9.0, 100.0)),
        (BucketState(0.0, 0.0), 1e6, 50.0, 10, 25, 10, BucketState(0.0, 1e6)),
        # a clock going backwards refills nothing and does not move `updated` back
        (BucketState(2.5, 50.0), 40.0, 100.0, 10, 5, 2, BucketState(0.5, 50.0)),
        (BucketState(0.0, 50.0), 49.0, 100.0, 10, 1, 0, BucketState(0.0, 50.0)),
        # only whole tokens are granted; the fraction stays
        (BucketState(0.75, 0.0), 0.0, 1.0, 10, 1, 0, BucketState(0.75, 0.0)),
        (BucketState(1.75, 0.0), 0.0, 1.0, 10, 5, 1, BucketState(0.75, 0.0)),
        # a quota (rate 0) never refills
        (BucketState(0.0, 0.0), 1e9, 0.0, 10, 1, 0, BucketState(0.0, 1e9)),
        # wanting nothing (or less) grants nothing
        (BucketState(5.0, 0.0), 0.0, 1.0, 10, 0, 0, BucketState(5.0, 0.0)),
        (BucketState(5.0, 0.0), 0.0, 1.0, 10, -3, 0, BucketState(5.0, 0.0)),
    ],
)
def test_take_table(
    state: BucketState | None,
    now: float,
    rate: float,
    burst: int,
    want: int,
    granted: int,
    after: BucketState,
) -> None:
    assert take(state, now, rate, burst, want) == (granted, after)


@PROPERTY
@given(
    rate=st.floats(0, 1_000),
    burst=st.integers(1, 1_000),
    steps=st.lists(st.tuples(st.floats(-10, 10), st.integers(0, 2_000)), max_size=40),
)
def test_take_never_goes_negative_nor_grants_more_than_wanted_or_refilled(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    state: BucketState | None = None
    now = START
    first: float | None = None
    latest = -math.inf
    total = 0
    for dt, want in steps:
        now += dt
        first = now if first is None else first
        granted, new = take(state, now, rate, burst, want)
        assert 0 <= granted <= max(0, want)
        assert -HAIR <= new.tokens <= burst
        if state is not None:
            assert new.updated >= state.updated
        total += granted
        latest = max(latest, now)
        state = new
    # Refill only counts forward time, so everything granted fits burst + rate * elapsed.
    if first is not None:
        assert total <= burst + rate * (latest - first) + EPS


def test_seconds_until() -> None:
    assert seconds_until(3.0, 2.0) == 0.0
    assert seconds_until(1.0, 2.0) == 0.0
    assert seconds_until(0.5, 2.0) == 0.25
    assert seconds_until(0.0, 4.0, need=10) == 2.5
    assert seconds_until(0.0, 0.0) == math.inf  # an exhausted quota never refills


def test_take_refills_a_whole_token_after_exactly_one_over_rate() -> None:
    # 0.9999999999999432 tokens by float arithmetic: take() tolerates the hair
    granted, _ = take(BucketState(0.0, 1_000.0), 1_000.0 + 1 / 1.5, 1.5, 1, 1)
    assert granted == 1


NEGATIVE_BUG = (
    "BUG gateway/ratelimit.py:58-59: the 1e-9 tolerance grants a token from "
    "0.9999999999999432 and stores tokens - granted = -5.7e-14 unclamped, so the bucket goes "
    "negative and LeasedLimiter.acquire (line 139) reports remaining = 0 + floor(-5.7e-14) = -1"
)


def test_take_never_leaves_a_negative_bucket() -> None:
    _, after = take(BucketState(0.0, 1_000.0), 1_000.0 + 1 / 1.5, 1.5, 1, 1)
    assert after.tokens >= 0  # observed: -5.684341886080802e-14


# --- harness -------------------------------------------------------------------------


@dataclass
class Fleet:
    """``n`` gateway instances sharing one limit store and one clock."""

    clock: FakeClock
    store: InMemoryLimitStore
    limiters: list[LeasedLimiter]
    executors: list[DeferredExecutor]
    admitted: list[float] = field(default_factory=list)  # when each admitted request ran
    first_request: float | None = None

    def background(self) -> None:
        for executor in self.executors:
            executor.run_pending()

    def acquire(self, limit: Limit, instance: int = 0) -> Verdict:
        if self.first_request is None:
            self.first_request = self.clock.now
        verdict = self.limiters[instance].acquire(limit)
        if verdict.allowed:
            self.admitted.append(self.clock.now)
        assert all(b.tokens >= -HAIR for b in self.store.buckets.values())
        return verdict

    def elapsed(self) -> float:
        return 0.0 if self.first_request is None else self.clock.now - self.first_request


def make_fleet(
    n: int = 1, *, lease_s: float = 0.2, lease_ttl_s: float = 2.0, max_batch: int = 100
) -> Fleet:
    clock = FakeClock(START)
    store = InMemoryLimitStore()
    executors = [DeferredExecutor() for _ in range(n)]
    limiters = [
        LeasedLimiter(
            store,
            clock=clock,
            lease_s=lease_s,
            lease_ttl_s=lease_ttl_s,
            max_batch=max_batch,
            executor=executor,
        )
        for executor in executors
    ]
    return Fleet(clock, store, limiters, executors)


@dataclass(frozen=True)
class Config:
    rate: float
    burst: int
    lease_s: float
    lease_ttl_s: float
    max_batch: int

    def limit(self) -> Limit:
        return Limit("key", "rate#key#k", self.rate, self.burst, 1)

    def fleet(self, n: int = 1) -> Fleet:
        return make_fleet(
            n, lease_s=self.lease_s, lease_ttl_s=self.lease_ttl_s, max_batch=self.max_batch
        )


configs = st.builds(
    Config,
    rate=st.integers(1, 200).map(float),
    burst=st.integers(1, 300),
    lease_s=st.sampled_from([0.05, 0.2, 1.0]),
    lease_ttl_s=st.sampled_from([0.5, 2.0, 10.0]),
    max_batch=st.sampled_from([1, 5, 100]),
)

# (advance the clock by ms, which instance, how many requests, refills land at once?)
Step = tuple[int, int, int, bool]


def steps(instances: int = 1, max_advance_ms: int = 3_000) -> st.SearchStrategy[list[Step]]:
    return st.lists(
        st.tuples(
            st.integers(0, max_advance_ms),
            st.integers(0, instances - 1),
            st.integers(0, 60),
            st.booleans(),
        ),
        max_size=30,
    )


def play(fleet: Fleet, limit: Limit, plan: list[Step]) -> None:
    """Run ``plan``. A step whose flag is false leaves its refills queued (a slow store)
    until a later step lets background work run."""
    for advance_ms, instance, requests, refills_land in plan:
        fleet.clock.advance(advance_ms / 1000)
        for _ in range(requests):
            fleet.acquire(limit, instance)
            if refills_land:
                fleet.background()


def worst_window_excess(times: list[float], rate: float) -> float:
    """max over windows [a, b] of (admitted in the window - rate * (b - a))."""
    distinct = sorted(set(times))
    counts = [times.count(t) for t in distinct]
    worst = 0.0
    for i, start in enumerate(distinct):
        admitted = 0
        for j in range(i, len(distinct)):
            admitted += counts[j]
            worst = max(worst, admitted - rate * (distinct[j] - start))
    return worst


# --- over-admission bound --------------------------------------------------------------


@PROPERTY
@given(config=configs, plan=steps(instances=1))
def test_one_limiter_admits_at_most_burst_plus_rate_times_elapsed_plus_batch(
    config: Config, plan: list[Step]
) -> None:
    fleet, limit = config.fleet(), config.limit()
    play(fleet, limit, plan)
    fleet.background()
    batch = fleet.limiters[0].batch(limit)
    assert len(fleet.admitted) <= config.burst + config.rate * fleet.elapsed() + batch + EPS


@PROPERTY
@given(config=configs, n=st.integers(2, 4), plan=steps(instances=4))
def test_instances_sharing_a_store_admit_at_most_burst_plus_rate_elapsed_plus_n_batches(
    config: Config, n: int, plan: list[Step]
) -> None:
    fleet, limit = config.fleet(n), config.limit()
    play(fleet, limit, [(ms, i % n, k, land) for ms, i, k, land in plan])
    fleet.background()
    batch = fleet.limiters[0].batch(limit)
    assert len(fleet.admitted) <= config.burst + config.rate * fleet.elapsed() + n * batch + EPS


@PROPERTY
@given(config=configs, n=st.integers(1, 4), plan=steps(instances=4))
def test_bucket_tokens_in_the_store_never_go_negative(
    config: Config, n: int, plan: list[Step]
) -> None:
    fleet, limit = config.fleet(n), config.limit()
    """Never negative beyond take()'s hair of tolerance (exactly: see NEGATIVE_BUG)."""
    play(fleet, limit, [(ms, i % n, k, land) for ms, i, k, land in plan])  # checks each step
    fleet.background()
    assert all(-HAIR <= b.tokens <= config.burst for b in fleet.store.buckets.values())


@PROPERTY
@given(config=configs, n=st.integers(1, 4), plan=steps(instances=4))
def test_over_any_window_admitted_is_within_burst_rate_t_plus_two_batches_per_instance(
    config: Config, n: int, plan: list[Step]
) -> None:
    """The module's stated bound, over *every* window of the run (not only the whole run):
    burst + rate * T + 2 * instances * batch."""
    fleet, limit = config.fleet(n), config.limit()
    play(fleet, limit, [(ms, i % n, k, land) for ms, i, k, land in plan])
    batch = fleet.limiters[0].batch(limit)
    excess = worst_window_excess(fleet.admitted, config.rate)
    assert excess <= config.burst + n * 2 * batch + EPS


def _burst_after_idle(fleet: Fleet, limit: Limit, idle_s: float) -> int:
    fleet.clock.advance(idle_s)
    admitted = 0
    while fleet.acquire(limit).allowed:
        fleet.background()
        admitted += 1
    return admitted


def test_an_instance_holds_one_and_a_half_batches_when_refills_land_at_once() -> None:
    """Why the bound needs more than one batch per instance: the refill is asked for at half
    a batch and brings a whole one."""
    # rate 100/s, burst 100, lease_s 0.2 -> batch 20
    fleet, limit = make_fleet(), Limit("key", "k", 100.0, 100, 1)
    batch = fleet.limiters[0].batch(limit)
    assert batch == 20
    for _ in range(11):  # the 10th request finds 10 tokens left and refills: 29 held
        assert fleet.acquire(limit).allowed
        fleet.background()
    # 1 s later the bucket is full again, and the lease (TTL 2 s) is still spendable.
    admitted = _burst_after_idle(fleet, limit, 1.0)  # a window of length 0
    assert limit.burst + batch < admitted <= limit.burst + 2 * batch
    assert admitted == 129


def test_an_instance_holds_two_batches_when_a_slow_refill_lands_late() -> None:
    fleet, limit = make_fleet(), Limit("key", "k", 100.0, 100, 1)
    batch = fleet.limiters[0].batch(limit)
    for _ in range(21):  # refill queued at 10 tokens left; at 0 the request leases itself
        assert fleet.acquire(limit).allowed
    fleet.background()  # ... and then the slow refill lands too: 39 tokens held
    admitted = _burst_after_idle(fleet, limit, 1.0)
    assert limit.burst + batch < admitted <= limit.burst + 2 * batch
    assert admitted == 139


# --- refill, quotas ----------------------------------------------------------------------


@PROPERTY
@given(config=configs, plan=steps(instances=1))
def test_after_idling_burst_over_rate_a_full_burst_is_admitted_again(
    config: Config, plan: list[Step]
) -> None:
    fleet, limit = config.fleet(), config.limit()
    play(fleet, limit, plan)
    admitted = _burst_after_idle(fleet, limit, config.burst / config.rate + SLACK_S)
    assert admitted >= config.burst


@PROPERTY
@given(
    burst=st.integers(1, 500),
    n=st.integers(1, 3),
    lease_ttl_s=st.sampled_from([0.5, 2.0, 10.0]),
    plan=steps(instances=3, max_advance_ms=5_000_000),
)
def test_a_quota_bucket_admits_at_most_its_burst_ever(
    burst: int, n: int, lease_ttl_s: float, plan: list[Step]
) -> None:
    fleet = make_fleet(n, lease_ttl_s=lease_ttl_s)
    quota = Limit("daily", "quota#t#2026-01-01", 0.0, burst, 86_400, expires_at=START + 86_400)
    play(fleet, quota, [(ms, i % n, k, land) for ms, i, k, land in plan])
    fleet.background()
    for _ in range(burst + 5):  # and whatever else is asked, much later
        fleet.clock.advance(10_000)
        for instance in range(n):
            fleet.acquire(quota, instance)
            fleet.background()
    assert len(fleet.admitted) <= burst


def test_a_quota_is_fully_usable_by_one_instance() -> None:
    fleet = make_fleet()
    quota = Limit("daily", "quota#t#d", 0.0, 50, 86_400, expires_at=START + 3_600)
    results = []
    for _ in range(60):
        results.append(fleet.acquire(quota).allowed)
        fleet.background()
    assert results == [True] * 50 + [False] * 10
    denied = fleet.acquire(quota)
    assert denied.retry_after_s == pytest.approx(3_600)  # until the quota period ends


# --- store calls ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "lease_s", "max_batch", "interval_s"),
    [
        (10_000.0, 20_000, 0.2, 100, 0.001),  # batch 100
        (50.0, 100, 0.2, 100, 0.1),  # batch 10, requests at 10/s of 50/s
        (1_000.0, 1_000, 0.05, 100, 0.002),  # batch 50
        (100.0, 8, 0.2, 100, 0.05),  # batch 2 (a quarter of the burst)
    ],
)
def test_store_calls_per_1000_unsaturated_requests_are_about_one_per_batch(
    rate: float, burst: int, lease_s: float, max_batch: int, interval_s: float
) -> None:
    fleet = make_fleet(lease_s=lease_s, max_batch=max_batch)
    limit = Limit("key", "k", rate, burst, 1)
    batch = fleet.limiters[0].batch(limit)
    for _ in range(1_000):
        assert fleet.acquire(limit).allowed
        fleet.background()
        fleet.clock.advance(interval_s)
    assert fleet.store.calls == fleet.limiters[0].store_calls
    assert fleet.store.calls <= math.ceil(1_000 / batch) + 2


def test_a_denied_limiter_does_not_call_the_store_before_blocked_until() -> None:
    fleet = make_fleet()
    limit = Limit("key", "k", 10.0, 20, 2)  # batch 2
    while fleet.acquire(limit).allowed:
        fleet.background()
    calls = fleet.store.calls
    denied = fleet.acquire(limit)
    assert not denied.allowed and denied.retry_after_s > 0
    blocked_until = fleet.clock.now + denied.retry_after_s
    assert fleet.store.calls == calls
    for _ in range(50):
        fleet.clock.advance((blocked_until - fleet.clock.now) / 3)
        verdict = fleet.acquire(limit)
        assert not verdict.allowed
        assert verdict.retry_after_s == pytest.approx(blocked_until - fleet.clock.now)
    assert fleet.store.calls == calls
    fleet.clock.now = blocked_until + SLACK_S
    assert fleet.acquire(limit).allowed
    assert fleet.store.calls == calls + 1


# --- Retry-After ---------------------------------------------------------------------------


@PROPERTY
@given(config=configs, plan=steps(instances=1))
def test_retry_after_is_honest_for_a_single_instance(config: Config, plan: list[Step]) -> None:
    fleet, limit = config.fleet(), config.limit()
    denials = 0
    for advance_ms, _, requests, refills_land in plan:
        fleet.clock.advance(advance_ms / 1000)
        for _ in range(requests):
            verdict = fleet.acquire(limit)
            if not verdict.allowed:
                denials += 1
                assert verdict.remaining == 0
                assert 0 < verdict.retry_after_s <= config.burst / config.rate + EPS
                fleet.clock.advance(verdict.retry_after_s + SLACK_S)
                assert fleet.acquire(limit).allowed
            if refills_land:
                fleet.background()


def _retry_exactly(fleet: Fleet, limit: Limit) -> Verdict:
    assert fleet.acquire(limit).allowed
    denied = fleet.acquire(limit)
    assert not denied.allowed and denied.retry_after_s > 0
    fleet.clock.advance(denied.retry_after_s)
    return fleet.acquire(limit)


def test_retry_after_exactly_is_admitted() -> None:
    assert _retry_exactly(make_fleet(), Limit("key", "k", 1.5, 1, 1)).allowed


def test_a_verdict_never_reports_negative_remaining() -> None:
    fleet = make_fleet()
    verdict = _retry_exactly(fleet, Limit("key", "k", 1.5, 1, 1))
    assert verdict.allowed
    assert verdict.remaining >= 0  # observed: -1
    assert fleet.store.buckets["k"].tokens >= 0  # observed: -5.7e-14


def test_retry_after_exactly_is_admitted_with_an_epoch_clock() -> None:
    fleet = make_fleet()
    fleet.clock.now = EPOCH
    verdict = _retry_exactly(fleet, Limit("key", "k", 1.2, 1, 1))
    assert verdict.allowed, verdict


# --- leases -------------------------------------------------------------------------------


def test_batch_is_lease_s_of_rate_within_one_and_max_batch_and_a_quarter_of_the_burst() -> None:
    limiter = make_fleet(lease_s=0.2, max_batch=100).limiters[0]
    assert limiter.batch(Limit("k", "k", 50.0, 100, 2)) == 10  # 50/s * 0.2 s
    assert limiter.batch(Limit("k", "k", 10_000.0, 100_000, 10)) == 100  # max_batch
    assert limiter.batch(Limit("k", "k", 1_000.0, 8, 1)) == 2  # burst // 4
    assert limiter.batch(Limit("k", "k", 0.5, 1, 2)) == 1  # at least one
    assert limiter.batch(Limit("q", "q", 0.0, 1_000, 86_400)) == 10  # quota: burst / 100


def test_first_verdict_reports_the_lease_plus_the_shared_remainder() -> None:
    fleet = make_fleet()
    verdict = fleet.acquire(Limit("key", "k", 50.0, 100, 2))  # leases 10 of 100
    assert verdict.allowed and verdict.remaining == 99 and verdict.retry_after_s == 0
    assert fleet.store.calls == 1


def test_leases_older_than_lease_ttl_are_dropped() -> None:
    fleet = make_fleet(lease_ttl_s=2.0)
    limit = Limit("key", "k", 100.0, 100, 1)  # batch 20
    assert fleet.acquire(limit).allowed  # leases 20 at START
    fleet.store.unavailable = True
    fleet.clock.advance(1.9)
    assert fleet.acquire(limit).allowed  # spent from the lease, no store needed
    assert fleet.store.calls == 1
    fleet.clock.advance(0.1)  # the lease is now lease_ttl_s old
    with pytest.raises(DependencyUnavailableError):
        fleet.acquire(limit)
    fleet.store.unavailable = False
    verdict = fleet.acquire(limit)  # a fresh lease of 20 from the refilled bucket
    assert verdict.allowed
    assert verdict.remaining == 19 + 80  # the 18 dropped tokens are not spent any more


def test_a_failed_background_refill_is_swallowed_and_the_lease_keeps_serving() -> None:
    fleet = make_fleet()
    limit = Limit("key", "k", 100.0, 100, 1)  # batch 20, refill below 11
    for _ in range(9):
        assert fleet.acquire(limit).allowed
    fleet.store.unavailable = True
    assert fleet.acquire(limit).allowed  # 10 left: refill queued
    fleet.background()  # ... and fails quietly
    assert fleet.store.calls == 2
    for _ in range(10):
        assert fleet.acquire(limit).allowed
        fleet.background()
    with pytest.raises(DependencyUnavailableError):
        fleet.acquire(limit)


def test_a_slow_spender_never_meets_an_expired_lease_on_the_request_path() -> None:
    # 2 requests/s against a 1,000/s limit (batch 100): a lease lasts longer than its 2 s
    # life. Before it expires it is topped up in the background, so no request waits on
    # the store after the first.
    fleet = make_fleet()
    limit = Limit("key", "k", 1000.0, 1000, 1)
    assert fleet.acquire(limit).allowed
    fleet.background()
    first = fleet.store.calls
    synchronous = 0
    for _ in range(40):  # 20 s
        fleet.clock.advance(0.5)
        before = fleet.store.calls
        assert fleet.acquire(limit).allowed
        synchronous += fleet.store.calls - before  # a lease inside acquire
        fleet.background()
    assert synchronous == 0
    assert fleet.store.calls > first  # the top-ups happened, off the request path
    held = fleet.limiters[0]._local[limit.key].tokens
    assert held <= 100  # topped up to a batch, never hoarding beyond it


def test_answers_locally_while_a_lease_lasts_or_a_denial_holds() -> None:
    clock, store = FakeClock(EPOCH), InMemoryLimitStore()
    limiter = LeasedLimiter(store, clock=clock, lease_ttl_s=2.0, executor=DeferredExecutor())
    limit = Limit("key", "rate#key#k1", rate=10.0, burst=40, window_s=4)
    assert not limiter.answers_locally(limit, 0.05)  # nothing leased yet: acquire reads the store
    assert limiter.acquire(limit).allowed
    calls = store.calls
    assert limiter.answers_locally(limit, 0.05)
    assert limiter.acquire(limit).allowed and store.calls == calls  # it did answer locally
    clock.advance(2.0)  # the lease has expired: the next acquire leases again
    assert not limiter.answers_locally(limit, 0.05)

    dry = Limit("key", "rate#key#k2", rate=0.5, burst=1, window_s=2)
    assert limiter.acquire(dry).allowed  # the bucket's one token
    denied = limiter.acquire(dry)
    assert not denied.allowed
    calls = store.calls
    assert limiter.answers_locally(dry, 0.05)  # the denial stands until the bucket refills
    assert not limiter.acquire(dry).allowed and store.calls == calls
