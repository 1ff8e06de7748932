"""The fakes keep the contracts of the real adapters that the other unit tests rely on."""

from __future__ import annotations

import pytest

from gateway.errors import ConflictError
from gateway.models import EndpointTarget, ModelPolicy
from gateway.values import BackendReply
from tests.fakes import FakeClock, InMemoryPolicyStore, RecordingInvoker

IRIS = ModelPolicy(model="iris")


def test_policy_store_creates_at_revision_zero_only_once() -> None:
    store = InMemoryPolicyStore()
    stored = store.put(IRIS)
    assert stored.revision == 1
    assert store.get("iris") == stored
    with pytest.raises(ConflictError):
        store.put(IRIS)


def test_policy_store_updates_need_the_stored_revision() -> None:
    store = InMemoryPolicyStore([IRIS])
    current = store.get("iris")
    assert current is not None
    updated = store.put(current.model_copy(update={"slo_ms": 250}))
    assert (updated.revision, updated.slo_ms) == (2, 250)
    with pytest.raises(ConflictError):
        store.put(current.model_copy(update={"slo_ms": 999}))  # stale revision 1
    with pytest.raises(ConflictError):
        store.put(ModelPolicy(model="ghost", revision=3))  # update of a missing policy
    assert store.get("iris") == updated
    assert [p.model for p in store.list()] == ["iris"]


def test_recording_invoker_records_then_replies_or_raises() -> None:
    target = EndpointTarget(endpoint_name="e")
    invoker = RecordingInvoker(reply=BackendReply(b"ok", "text/plain"))
    assert invoker.invoke(target, b"x", "text/csv", "*/*", 1.5).body == b"ok"
    invoker.error = TimeoutError("slow")
    with pytest.raises(TimeoutError):
        invoker.invoke(target, b"y", "text/csv", "*/*", 1.5)
    assert [c.body for c in invoker.calls] == [b"x", b"y"]
    assert invoker.calls[0].timeout_s == 1.5


def test_fake_clock_only_moves_when_advanced() -> None:
    clock = FakeClock(5.0)
    assert clock() == clock() == 5.0
    clock.advance(2.5)
    assert clock() == 7.5
