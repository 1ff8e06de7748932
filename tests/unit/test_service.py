"""gateway.service: the Gateway use cases and the policy cache, with in-memory fakes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.errors import (
    BackendTimeoutError,
    ConflictError,
    ForbiddenError,
    MalformedRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    SchemaMismatchError,
    UnsupportedMediaTypeError,
)
from gateway.models import EndpointTarget, InputSchema, ModelPolicy
from gateway.service import CachedPolicyStore, Gateway
from gateway.values import Backend, BackendReply, InvocationRequest, Principal, RouteDecision
from tests.fakes import FakeClock, InMemoryPolicyStore, RecordingInvoker

REALTIME = EndpointTarget(endpoint_name="iris-realtime")
SERVERLESS = EndpointTarget(endpoint_name="iris-serverless", capacity=2)

IRIS = ModelPolicy(
    model="iris",
    version="3",
    description="Iris classifier",
    timeout_ms=2500,
    realtime=REALTIME,
    serverless=SERVERLESS,
    input=InputSchema(features=4),
)
DIGITS = ModelPolicy(model="digits", serverless=SERVERLESS, input=InputSchema(features=64))
PRIVATE = ModelPolicy(model="b-private", realtime=REALTIME, allowed_tenants=["tenant-b"])
SHARED = ModelPolicy(model="a-shared", realtime=REALTIME, allowed_tenants=["tenant-a", "tenant-b"])

ALICE = Principal(tenant="tenant-a", key_id="key_a", scopes=frozenset({"invoke"}))
BOB = Principal(tenant="tenant-b", key_id="key_b", scopes=frozenset({"invoke"}))

ROW = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'


@pytest.fixture()
def store() -> InMemoryPolicyStore:
    return InMemoryPolicyStore([IRIS, DIGITS, PRIVATE, SHARED])


@pytest.fixture()
def invoker() -> RecordingInvoker:
    return RecordingInvoker(reply=BackendReply(b'{"predictions": [0]}', "application/json"))


@pytest.fixture()
def gateway(store: InMemoryPolicyStore, invoker: RecordingInvoker) -> Gateway:
    return Gateway(store, invoker)


def request(model: str = "iris", body: bytes = ROW, **fields: object) -> InvocationRequest:
    return InvocationRequest(model=model, body=body, content_type="application/json", **fields)


# --- invoke ----------------------------------------------------------------------------


def test_invoke_happy_path(gateway: Gateway, invoker: RecordingInvoker) -> None:
    outcome = gateway.invoke(
        ALICE,
        InvocationRequest(
            model="iris",
            body=b"5.1,3.5,1.4,0.2\n",
            content_type="Application/CSV; charset=utf-8",
            accept="text/csv",
        ),
    )
    assert outcome.status == 200
    assert outcome.body == b'{"predictions": [0]}'
    assert outcome.content_type == "application/json"
    assert outcome.decision == RouteDecision(Backend.REALTIME, "within-slo")
    assert outcome.decision.header() == "realtime; reason=within-slo"
    assert outcome.model_version == "3"

    [call] = invoker.calls
    assert call.target == REALTIME
    assert call.body == b"5.1,3.5,1.4,0.2\n"  # forwarded unchanged
    assert call.content_type == "text/csv"  # canonical media type, parameters dropped
    assert call.accept == "text/csv"
    assert call.timeout_s == pytest.approx(2.5, abs=0.05)  # what is left of the timeout


def test_invoke_uses_serverless_when_there_is_no_realtime_endpoint(
    gateway: Gateway, invoker: RecordingInvoker
) -> None:
    outcome = gateway.invoke(ALICE, request("digits", b"[" + b"0," * 63 + b"1]"))
    assert outcome.decision.header() == "serverless; reason=realtime-absent"
    assert invoker.calls[0].target == SERVERLESS
    assert invoker.calls[0].timeout_s == pytest.approx(30.0, abs=0.05)  # the default timeout_ms


def test_invoke_reports_route_and_backend_timings(store: InMemoryPolicyStore) -> None:
    clock = FakeClock()
    invoker = RecordingInvoker(side_effect=lambda: clock.advance(0.040))
    outcome = Gateway(store, invoker, clock=clock).invoke(ALICE, request())
    assert outcome.timings_ms["route"] == pytest.approx(0.0)
    assert outcome.timings_ms["backend"] == pytest.approx(40.0)


def test_invoke_passes_the_backend_reply_through(store: InMemoryPolicyStore) -> None:
    reply = BackendReply(b"0\n1\n", "text/csv", variant="blue")
    outcome = Gateway(store, RecordingInvoker(reply=reply)).invoke(ALICE, request())
    assert (outcome.body, outcome.content_type) == (b"0\n1\n", "text/csv")


@pytest.mark.parametrize("model", ["nope", "IRIS", "iris "])
def test_unknown_model_is_404(gateway: Gateway, invoker: RecordingInvoker, model: str) -> None:
    with pytest.raises(ModelNotFoundError) as raised:
        gateway.invoke(ALICE, request(model))
    assert raised.value.status == 404
    assert raised.value.extensions == {"model": model}
    assert invoker.calls == []


def test_another_tenants_model_is_404_not_403(gateway: Gateway, invoker: RecordingInvoker) -> None:
    with pytest.raises(ModelNotFoundError) as raised:
        gateway.invoke(ALICE, request("b-private"))
    assert raised.value.status == 404
    assert invoker.calls == []
    # and the owner may use it
    assert gateway.invoke(BOB, request("b-private")).status == 200


def test_a_key_limited_to_other_models_gets_404(
    gateway: Gateway, invoker: RecordingInvoker
) -> None:
    limited = dataclasses.replace(ALICE, allowed_models=frozenset({"digits"}))
    with pytest.raises(ModelNotFoundError):
        gateway.invoke(limited, request("iris"))
    with pytest.raises(ModelNotFoundError):
        gateway.get_model(limited, "iris")
    assert invoker.calls == []


@pytest.mark.parametrize("scopes", [frozenset(), frozenset({"jobs"}), frozenset({"admin"})])
def test_invoke_needs_the_invoke_scope(
    gateway: Gateway, invoker: RecordingInvoker, scopes: frozenset[str]
) -> None:
    with pytest.raises(ForbiddenError, match="'invoke'"):
        gateway.invoke(dataclasses.replace(ALICE, scopes=scopes), request())
    assert invoker.calls == []


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b'{"inputs": [[1, 2, 3]]}', "application/json", SchemaMismatchError),
        (b"1,2,3,4\n1,2,3\n", "text/csv", SchemaMismatchError),
        (b'{"inputs": [[1, 2, 3, "x"]]}', "application/json", SchemaMismatchError),
        (b"{", "application/json", MalformedRequestError),
        (b"", "application/json", MalformedRequestError),
        (b"[1, 2, 3, 4]", "application/xml", UnsupportedMediaTypeError),
    ],
)
def test_bad_input_is_rejected_before_the_backend_is_called(
    gateway: Gateway,
    invoker: RecordingInvoker,
    body: bytes,
    content_type: str,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        gateway.invoke(ALICE, InvocationRequest(model="iris", body=body, content_type=content_type))
    assert invoker.calls == []


def test_wrong_feature_count_names_the_row(gateway: Gateway) -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        gateway.invoke(ALICE, request(body=b"[[1, 2, 3, 4], [1, 2, 3]]"))
    assert raised.value.extensions["row"] == 2
    assert raised.value.extensions["expected_features"] == 4


def test_too_large_body_is_413_before_decoding(
    store: InMemoryPolicyStore, invoker: RecordingInvoker
) -> None:
    small = store.put(IRIS.model_copy(update={"sync_max_bytes": 16, "revision": 1}))
    assert small.sync_max_bytes == 16
    with pytest.raises(PayloadTooLargeError) as raised:
        Gateway(store, invoker).invoke(ALICE, request(body=b"not even json, but too large"))
    assert raised.value.extensions["limit_bytes"] == 16
    assert invoker.calls == []


def test_backend_errors_reach_the_caller_unchanged(store: InMemoryPolicyStore) -> None:
    error = BackendTimeoutError("iris-realtime took too long", retry_after_s=2)
    with pytest.raises(BackendTimeoutError) as raised:
        Gateway(store, RecordingInvoker(error=error)).invoke(ALICE, request())
    assert raised.value is error


# --- list / get ------------------------------------------------------------------------


def test_list_models_filters_by_tenant_and_sorts(gateway: Gateway) -> None:
    assert [m.model for m in gateway.list_models(ALICE)] == ["a-shared", "digits", "iris"]
    assert [m.model for m in gateway.list_models(BOB)] == [
        "a-shared",
        "b-private",
        "digits",
        "iris",
    ]


def test_list_models_respects_the_keys_model_allowlist(gateway: Gateway) -> None:
    limited = dataclasses.replace(BOB, allowed_models=frozenset({"iris", "b-private", "ghost"}))
    assert [m.model for m in gateway.list_models(limited)] == ["b-private", "iris"]
    nothing = dataclasses.replace(BOB, allowed_models=frozenset())
    assert gateway.list_models(nothing) == []


def test_model_summary_shows_backends_but_not_endpoint_names(gateway: Gateway) -> None:
    summary = gateway.get_model(ALICE, "iris")
    assert summary.backends == [Backend.REALTIME, Backend.SERVERLESS]
    assert summary.version == "3"
    assert summary.input == InputSchema(features=4)
    assert "iris-realtime" not in summary.model_dump_json()
    assert gateway.get_model(ALICE, "digits").backends == [Backend.SERVERLESS]


def test_get_model_of_another_tenant_is_404(gateway: Gateway) -> None:
    with pytest.raises(ModelNotFoundError):
        gateway.get_model(ALICE, "b-private")


# --- CachedPolicyStore -------------------------------------------------------------------


def test_cached_policy_is_served_until_the_ttl_passes(store: InMemoryPolicyStore) -> None:
    clock = FakeClock()
    cached = CachedPolicyStore(store, ttl_s=10.0, clock=clock)
    assert cached.get("iris").version == "3"

    current = store.get("iris")
    store.put(current.model_copy(update={"version": "4"}))  # another instance's change
    store.get_calls.clear()

    clock.advance(9.999)
    assert cached.get("iris").version == "3"
    assert store.get_calls == []

    clock.advance(0.001)
    assert cached.get("iris").version == "4"
    assert store.get_calls == ["iris"]


class _Deferred:
    """An executor that runs what it was given when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, tuple[Any, ...]]] = []

    def submit(self, fn: Any, *args: Any) -> None:
        self.pending.append((fn, args))

    def run(self) -> None:
        while self.pending:
            fn, args = self.pending.pop(0)
            fn(*args)


def test_refresh_ahead_rereads_a_busy_policy_before_it_expires(
    store: InMemoryPolicyStore,
) -> None:
    clock, background = FakeClock(), _Deferred()
    cached = CachedPolicyStore(store, ttl_s=10.0, clock=clock, refresh_ahead=background)  # type: ignore[arg-type]
    assert cached.get("iris").version == "3"
    store.put(store.get("iris").model_copy(update={"version": "4"}))
    store.get_calls.clear()

    clock.advance(7.0)  # not yet in its last quarter
    assert cached.get("iris").version == "3"
    assert background.pending == []
    clock.advance(1.0)
    assert cached.get("iris").version == "3"  # served at once; the re-read is queued once
    assert cached.get("iris").version == "3"
    assert len(background.pending) == 1
    background.run()
    assert store.get_calls == ["iris"]
    clock.advance(5.0)  # past the first entry's expiry: the refreshed one serves
    assert cached.get("iris").version == "4"
    assert store.get_calls == ["iris"]


def test_refresh_ahead_never_replaces_a_newer_put(store: InMemoryPolicyStore) -> None:
    clock, background = FakeClock(), _Deferred()
    cached = CachedPolicyStore(store, ttl_s=10.0, clock=clock, refresh_ahead=background)  # type: ignore[arg-type]
    cached.get("iris")
    clock.advance(8.0)
    cached.get("iris")  # queues a re-read
    older = store.get("iris")
    newer = cached.put(older.model_copy(update={"slo_ms": 123}))
    store.put = lambda policy: policy  # type: ignore[method-assign]
    store.get = lambda model: older  # type: ignore[method-assign]  # a read from before the put
    background.run()
    assert cached.get("iris") == newer


def test_unknown_models_are_cached_too(store: InMemoryPolicyStore) -> None:
    clock = FakeClock()
    cached = CachedPolicyStore(store, ttl_s=10.0, clock=clock)
    assert cached.get("ghost") is None
    assert cached.get("ghost") is None
    assert store.get_calls == ["ghost"]


def test_cached_list_is_reloaded_after_the_ttl(store: InMemoryPolicyStore) -> None:
    clock = FakeClock()
    cached = CachedPolicyStore(store, ttl_s=5.0, clock=clock)
    assert len(cached.list()) == 4
    store.put(ModelPolicy(model="new-one", realtime=REALTIME))
    assert len(cached.list()) == 4
    assert store.list_calls == 1
    clock.advance(5.0)
    assert len(cached.list()) == 5
    assert store.list_calls == 2


def test_put_through_the_cache_is_visible_at_once(store: InMemoryPolicyStore) -> None:
    clock = FakeClock()
    cached = CachedPolicyStore(store, ttl_s=60.0, clock=clock)
    current = cached.get("iris")
    assert len(cached.list()) == 4

    stored = cached.put(current.model_copy(update={"slo_ms": 200}))
    assert stored.revision == current.revision + 1
    assert cached.get("iris").slo_ms == 200
    cached.put(ModelPolicy(model="new-one", realtime=REALTIME))
    assert {p.model for p in cached.list()} >= {"new-one", "iris"}


def test_put_through_the_cache_keeps_optimistic_concurrency(store: InMemoryPolicyStore) -> None:
    cached = CachedPolicyStore(store, ttl_s=60.0, clock=FakeClock())
    stale = cached.get("iris")
    cached.put(stale.model_copy(update={"slo_ms": 200}))
    with pytest.raises(ConflictError):
        cached.put(stale.model_copy(update={"slo_ms": 300}))
    assert cached.get("iris").slo_ms == 200


def test_gateway_over_a_cached_store_sees_policy_changes_after_the_ttl(
    store: InMemoryPolicyStore, invoker: RecordingInvoker
) -> None:
    clock = FakeClock()
    gateway = Gateway(CachedPolicyStore(store, ttl_s=10.0, clock=clock), invoker)
    gateway.invoke(ALICE, request())
    current = store.get("iris")
    store.put(current.model_copy(update={"allowed_tenants": ["tenant-b"]}))
    gateway.invoke(ALICE, request())  # still cached
    clock.advance(10.0)
    with pytest.raises(ModelNotFoundError):
        gateway.invoke(ALICE, request())
