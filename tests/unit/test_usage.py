"""gateway.usage: counted in memory, written in batches every ``flush_every_s``."""

from __future__ import annotations

import calendar

import pytest

from gateway.usage import UsageRecorder
from tests.fakes import FakeClock, InlineExecutor, InMemoryUsageStore

NOW = float(calendar.timegm((2026, 3, 14, 12, 0, 0)))
DAY = "2026-03-14"
MIDNIGHT = float(calendar.timegm((2026, 3, 15, 0, 0, 0)))
EVERY = 5.0


class Usage:
    def __init__(self, start: float = NOW) -> None:
        self.clock = FakeClock(start)
        self.store = InMemoryUsageStore()
        self.executor = InlineExecutor()
        self.recorder = UsageRecorder(
            self.store, flush_every_s=EVERY, clock=self.clock, executor=self.executor
        )


def test_counts_per_tenant_day_and_model_with_errors_split_out() -> None:
    usage = Usage()
    for tenant, model, ok in [
        ("a", "iris", True),
        ("a", "iris", True),
        ("a", "iris", False),
        ("a", "wine", True),
        ("b", "iris", False),
        ("b", "iris", False),
    ]:
        usage.recorder.record(tenant, model, ok)
    usage.recorder.flush()
    assert usage.store.counts == {
        ("a", DAY, "iris"): (3, 1),
        ("a", DAY, "wine"): (1, 0),
        ("b", DAY, "iris"): (2, 2),
    }
    assert usage.store.add_calls == 1
    assert usage.store.query("a") == [
        {"tenant": "a", "day": DAY, "model": "iris", "requests": 3, "errors": 1},
        {"tenant": "a", "day": DAY, "model": "wine", "requests": 1, "errors": 0},
    ]


def test_days_are_utc_days_of_the_injected_clock() -> None:
    usage = Usage(MIDNIGHT - 1)
    usage.recorder.record("a", "iris", True)
    usage.clock.advance(1)
    usage.recorder.record("a", "iris", False)  # a new day
    usage.recorder.flush()
    assert usage.store.counts == {
        ("a", DAY, "iris"): (1, 0),
        ("a", "2026-03-15", "iris"): (1, 1),
    }
    assert [row["day"] for row in usage.store.query("a", since_day="2026-03-15")] == ["2026-03-15"]


def test_nothing_reaches_the_store_before_flush_every_s() -> None:
    usage = Usage()
    for _ in range(100):
        usage.recorder.record("a", "iris", True)
        usage.clock.advance((EVERY - 0.001) / 100)
    assert usage.store.add_calls == 0 and usage.executor.submitted == 0
    usage.clock.now = NOW + EVERY
    usage.recorder.record("a", "iris", True)
    assert usage.executor.submitted == 1
    assert usage.store.counts == {("a", DAY, "iris"): (101, 0)}
    # and the next interval starts at that flush
    usage.clock.advance(EVERY - 0.001)
    usage.recorder.record("a", "iris", False)
    assert usage.store.add_calls == 1
    usage.clock.advance(0.001)
    usage.recorder.record("a", "iris", True)
    assert usage.store.counts == {("a", DAY, "iris"): (103, 1)}


def test_a_flush_with_nothing_pending_does_not_call_the_store() -> None:
    usage = Usage()
    usage.recorder.flush()
    assert usage.store.add_calls == 0


@pytest.mark.parametrize("outage", [1, 3])
def test_a_failing_store_keeps_the_counts_for_the_next_flush(outage: int) -> None:
    usage = Usage()
    usage.store.unavailable = True
    recorded = 0
    for _ in range(outage):
        for ok in (True, False, True):
            usage.recorder.record("a", "iris", ok)
            recorded += 1
        usage.clock.advance(EVERY)
        usage.recorder.record("b", "wine", True)  # due: the flush fails
        recorded += 1
    assert usage.store.add_calls == outage and usage.store.counts == {}
    usage.store.unavailable = False
    usage.clock.advance(EVERY)
    usage.recorder.record("a", "iris", True)
    recorded += 1
    assert usage.store.counts == {
        ("a", DAY, "iris"): (3 * outage + 1, outage),
        ("b", DAY, "wine"): (outage, 0),
    }
    assert sum(r for r, _ in usage.store.counts.values()) == recorded


def test_a_store_failing_mid_batch_counts_nothing_twice() -> None:
    usage = Usage()
    usage.recorder.record("a", "iris", True)
    usage.recorder.record("a", "wine", True)
    usage.store.fail_after = 1  # writes ("a", "iris") and then fails, like update_item #2
    usage.recorder.flush()
    usage.recorder.flush()
    assert usage.store.counts == {("a", DAY, "iris"): (1, 0), ("a", DAY, "wine"): (1, 0)}
