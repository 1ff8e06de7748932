"""functions.api.native.NativeInvocations behind infergw.local.http_api.LocalHttpApi: the
container front end's event-loop route for ``POST /v1/models/{model}/invocations`` must
answer exactly as the Lambda path (LocalHttpApi without ``invocations=``, which builds an
API Gateway event for functions.api.app.handler).

Each comparison builds two identical stacks from scratch (policies, rate limiter on a fake
clock, job store) so that limits and job ids evolve the same way in both: one served by
the Lambda handler with a blocking fake invoker, one by the native route with an async
fake invoker that behaves the same. The same requests, in the same order, must get the same
status, body and headers (Server-Timing aside: it carries durations)."""

from __future__ import annotations

import asyncio
import calendar
import itertools
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

import gateway.jobs
from functions import bootstrap
from functions.api import app as api
from functions.api.native import NativeInvocations
from gateway.admission import Admission
from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    SchemaMismatchError,
)
from gateway.jobs import JobService
from gateway.live import LiveState
from gateway.models import EndpointTarget, InputSchema, ModelPolicy
from gateway.ratelimit import Grant, LeasedLimiter, Limit
from gateway.service import CachedPolicyStore, Gateway
from gateway.values import BackendReply
from infergw.local.http_api import LocalHttpApi
from tests.fakes import (
    AsyncRecordingInvoker,
    DeferredExecutor,
    FakeClock,
    FakePolicyStore,
    InMemoryJobStore,
    InMemoryLimitStore,
    InMemoryPayloadStore,
    InvokeCall,
    RecordingInvoker,
)

T = TypeVar("T")
NOW = float(calendar.timegm((2026, 3, 14, 15, 9, 26)))
PROBLEM_JSON = "application/problem+json"
ROW = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
PREDICTION = BackendReply(b'{"predictions": [2]}', "application/json")

IRIS = ModelPolicy(
    model="iris",
    version="7",
    realtime=EndpointTarget(endpoint_name="iris-realtime"),
    input=InputSchema(features=4),
)
ASYNCY = ModelPolicy(
    model="asyncy",
    version="2",
    realtime=EndpointTarget(endpoint_name="asyncy-realtime"),
    async_enabled=True,
)
ONE_AT_A_TIME = ModelPolicy(
    model="single", realtime=EndpointTarget(endpoint_name="single-rt"), max_concurrency=1
)
OTHERS = ModelPolicy(
    model="others", realtime=EndpointTarget(endpoint_name="o"), allowed_tenants=["tenant-z"]
)
POLICIES = [IRIS, ASYNCY, ONE_AT_A_TIME, OTHERS]

# The authorizer's verdicts, by Authorization header.
CONTEXTS: dict[str, dict[str, Any]] = {
    "Bearer alice": {
        "tenant": "tenant-a",
        "key_id": "key_alice",
        "scopes": "invoke,jobs",
        "tier": "standard",
        "models": "*",
    },
    "Bearer free": {
        "tenant": "tenant-f",
        "key_id": "key_free",
        "scopes": "invoke,jobs",
        "tier": "free",
        "models": "*",
    },
    "Bearer reader": {"tenant": "tenant-a", "key_id": "key_reader", "scopes": "jobs"},
}


def authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    granted = CONTEXTS.get(event["identitySource"][0])
    if granted is None:
        return {"isAuthorized": False, "context": {"reason": "Unknown key.", "status": 401}}
    return {"isAuthorized": True, "context": dict(granted)}


def run(scenario: Coroutine[Any, Any, T], limit_s: float = 30.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await scenario

    return asyncio.run(bounded())


@dataclass
class Stack:
    app: LocalHttpApi
    gateway: Gateway
    sync_calls: list[InvokeCall]
    async_calls: list[InvokeCall]


def build_gateway(invoker: RecordingInvoker) -> Gateway:
    clock = FakeClock(NOW)
    limiter = LeasedLimiter(InMemoryLimitStore(), clock=clock, executor=DeferredExecutor())
    return Gateway(
        FakePolicyStore(POLICIES),
        invoker,
        admission=Admission(limiter, clock=clock),
        jobs=JobService(InMemoryJobStore(), InMemoryPayloadStore(), clock=clock),
        live=LiveState(clock=FakeClock(1_000.0)),
    )


def stack(native: bool, reply: BackendReply, error: BaseException | None) -> Stack:
    """A fresh gateway behind the front end; the Lambda path's gateway is installed in
    bootstrap (the handler reads it there), the native route is handed its own."""
    sync = RecordingInvoker(reply=reply, error=error)
    on_loop = AsyncRecordingInvoker(reply=reply, error=error)
    gw = build_gateway(sync)
    if native:
        route = NativeInvocations(invoker=on_loop, gateway=lambda: gw)
        app = LocalHttpApi(api.handler, authorizer, api.PUBLIC_PATHS, invocations=route)
    else:
        bootstrap.use(gateway=gw)
        app = LocalHttpApi(api.handler, authorizer, api.PUBLIC_PATHS)
    return Stack(app, gw, sync.calls, on_loop.calls)


@pytest.fixture(autouse=True)
def clean_bootstrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    yield
    bootstrap.use()


# --- requests and what a client sees of the answers -----------------------------------------


@dataclass(frozen=True)
class Call:
    path: str = "/v1/models/iris/invocations"
    body: bytes = ROW
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    auth: str | None = "Bearer alice"
    method: str = "POST"


@dataclass(frozen=True)
class Seen:
    status: int
    body: bytes
    headers: list[tuple[str, str]]  # all of them, in order, Server-Timing aside
    server_timing: str | None

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def problem(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


async def send(app: LocalHttpApi, calls: list[Call]) -> list[Seen]:
    seen: list[Seen] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.local") as client:
        for call in calls:
            headers = list(call.headers)
            if call.auth is not None:
                headers.append(("authorization", call.auth))
            response = await client.request(
                call.method, call.path, content=call.body, headers=headers
            )
            items = [(k.lower(), v) for k, v in response.headers.multi_items()]
            seen.append(
                Seen(
                    response.status_code,
                    response.content,
                    [(k, v) for k, v in items if k != "server-timing"],
                    response.headers.get("server-timing"),
                )
            )
    return seen


def answers(
    native: bool,
    calls: list[Call],
    monkeypatch: pytest.MonkeyPatch,
    reply: BackendReply = PREDICTION,
    error: BaseException | None = None,
) -> tuple[list[Seen], Stack]:
    counter = itertools.count(1)
    monkeypatch.setattr(gateway.jobs, "new_job_id", lambda: f"job_{next(counter):024d}")
    built = stack(native, reply, error)
    try:
        return run(send(built.app, calls)), built
    finally:
        bootstrap.use()


def both(
    calls: list[Call],
    monkeypatch: pytest.MonkeyPatch,
    reply: BackendReply = PREDICTION,
    error: BaseException | None = None,
) -> tuple[list[Seen], list[Seen], Stack, Stack]:
    lambda_seen, lambda_stack = answers(False, calls, monkeypatch, reply, error)
    native_seen, native_stack = answers(True, calls, monkeypatch, reply, error)
    # Each path really took its own way to the backend.
    assert lambda_stack.async_calls == []
    assert native_stack.sync_calls == []
    assert len(native_stack.async_calls) == len(lambda_stack.sync_calls)
    for ours, theirs in zip(native_stack.async_calls, lambda_stack.sync_calls, strict=True):
        assert (ours.target, ours.body, ours.content_type, ours.accept) == (
            theirs.target,
            theirs.body,
            theirs.content_type,
            theirs.accept,
        )
    return lambda_seen, native_seen, lambda_stack, native_stack


def assert_same(lambda_seen: list[Seen], native_seen: list[Seen]) -> None:
    assert len(native_seen) == len(lambda_seen)
    for index, (ours, theirs) in enumerate(zip(native_seen, lambda_seen, strict=True)):
        assert ours.status == theirs.status, index
        assert ours.body == theirs.body, index
        assert sorted(ours.headers) == sorted(theirs.headers), index
        assert timing_names(ours) == timing_names(theirs), index


def timing_names(seen: Seen) -> list[str] | None:
    """Server-Timing's metric names (their durations differ from run to run)."""
    if seen.server_timing is None:
        return None
    return [part.split(";")[0].strip() for part in seen.server_timing.split(",")]


# --- success --------------------------------------------------------------------------------


ASYNC_PATH = "/v1/models/asyncy/invocations"
PREFER_ASYNC = ("prefer", "respond-async")
SUCCESSES = {
    "json": [Call()],
    "csv-in-csv-out": [
        Call(
            body=b"5.1,3.5,1.4,0.2\n",
            headers=(("content-type", "text/csv"), ("accept", "text/csv")),
        )
    ],
    "several-in-a-row": [Call(), Call(), Call()],
    "hints": [
        Call(
            headers=(
                ("content-type", "application/json; charset=utf-8"),
                ("x-latency-budget-ms", "800"),
                ("x-session-id", "user-42"),
            )
        )
    ],
    "prefer-async-accepted": [
        Call(path=ASYNC_PATH, headers=(PREFER_ASYNC,)),
        Call(path=ASYNC_PATH, headers=(("idempotency-key", "k-1"), PREFER_ASYNC)),
        Call(path=ASYNC_PATH, headers=(("idempotency-key", "k-1"), PREFER_ASYNC)),
    ],
    "free-tier-runs-out": [Call(auth="Bearer free")] * 7,
}


@pytest.mark.parametrize("case", list(SUCCESSES))
def test_the_native_route_answers_as_the_lambda_path(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lambda_seen, native_seen, _, _ = both(SUCCESSES[case], monkeypatch)
    assert_same(lambda_seen, native_seen)


@pytest.mark.parametrize(
    "reply",
    [
        BackendReply(b"2\n0\n", "text/csv"),
        BackendReply(b"\x93NUMPY\x01\x00v\x00\xff\xfe\x00", "application/x-npy"),
        BackendReply(b'{"predictions": [1]}', "application/json", cold_start_ms=812.0),
    ],
    ids=["csv", "binary", "cold-start"],
)
def test_model_output_reaches_the_client_the_same_way(
    reply: BackendReply, monkeypatch: pytest.MonkeyPatch
) -> None:
    lambda_seen, native_seen, _, _ = both([Call()], monkeypatch, reply=reply)
    assert_same(lambda_seen, native_seen)
    [ours] = native_seen
    assert (ours.status, ours.body, ours.header("content-type")) == (
        200,
        reply.body,
        reply.content_type,
    )
    if reply.cold_start_ms is not None:
        assert "cold-start;dur=812.00" in (ours.server_timing or "")


def test_success_carries_route_version_and_rate_limit_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An anchor for the comparisons: what the equal answers actually contain."""
    lambda_seen, native_seen, _, native = both([Call(), Call()], monkeypatch)
    assert_same(lambda_seen, native_seen)
    first, second = native_seen
    assert first.status == 200
    assert json.loads(first.body) == {"predictions": [2]}
    assert first.header("content-type") == "application/json"
    assert first.header("x-inference-route") == "realtime; reason=within-slo"
    assert first.header("x-model-version") == "7"
    assert first.header("x-model-variant") == "primary"
    policy = first.header("ratelimit-policy") or ""
    assert '"key";q=100;w=2' in policy and '"daily";q=1000000;w=86400' in policy
    assert first.header("ratelimit") != second.header("ratelimit")  # one token less
    assert first.server_timing is not None and "auth;dur=" in first.server_timing
    [call, _] = native.async_calls
    assert call.target.endpoint_name == "iris-realtime"
    assert call.body == ROW
    assert native.gateway.live.stats(call.target).in_flight == 0


def test_async_answers_are_202_with_a_location(monkeypatch: pytest.MonkeyPatch) -> None:
    _, native_seen, _, native = both(SUCCESSES["prefer-async-accepted"], monkeypatch)
    first, second, again = native_seen
    assert first.status == 202
    assert first.header("location") == "/v1/jobs/job_000000000000000000000001"
    assert first.header("preference-applied") == "respond-async"
    assert json.loads(second.body)["job_id"] == json.loads(again.body)["job_id"]
    assert native.async_calls == []  # the async backend is a job, not an endpoint call


def test_a_tenant_over_its_limit_gets_the_same_429(monkeypatch: pytest.MonkeyPatch) -> None:
    lambda_seen, native_seen, _, _ = both(SUCCESSES["free-tier-runs-out"], monkeypatch)
    assert_same(lambda_seen, native_seen)
    statuses = [s.status for s in native_seen]
    assert statuses == [200] * 5 + [429] * 2
    limited = native_seen[-1]
    assert limited.problem()["type"] == "/problems/rate-limited"
    assert limited.header("retry-after") is not None
    assert limited.header("ratelimit") is not None


# --- problems -------------------------------------------------------------------------------


JSON = ("content-type", "application/json")
PROBLEMS = {
    "unknown-model": ([Call(path="/v1/models/nope/invocations")], 404, "model-not-found"),
    "another-tenants-model": ([Call(path="/v1/models/others/invocations")], 404, "model-not-found"),
    "malformed-json": ([Call(body=b'{"inputs": [[1, 2')], 400, "malformed-request"),
    "empty-body": ([Call(body=b"")], 400, "malformed-request"),
    "schema-mismatch": ([Call(body=b'{"inputs": [[1, 2, 3]]}')], 422, "schema-mismatch"),
    "gzip": (
        [Call(headers=(JSON, ("content-encoding", "gzip")))],
        415,
        "unsupported-media-type",
    ),
    "unsupported-type": (
        [Call(headers=(("content-type", "application/xml"),))],
        415,
        "unsupported-media-type",
    ),
    "bad-hint": ([Call(headers=(("x-latency-budget-ms", "soon"),))], 400, "malformed-request"),
    "no-invoke-scope": ([Call(auth="Bearer reader")], 403, "forbidden"),
    "no-credentials": ([Call(auth=None)], 401, "unauthenticated"),
    "unknown-key": ([Call(auth="Bearer nobody")], 401, "unauthenticated"),
}


@pytest.mark.parametrize("case", list(PROBLEMS))
def test_problems_are_the_same_on_both_paths(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls, _, _ = PROBLEMS[case]
    lambda_seen, native_seen, _, _ = both(calls, monkeypatch)
    assert_same(lambda_seen, native_seen)


@pytest.mark.parametrize("case", list(PROBLEMS))
def test_problems_are_what_the_documentation_says(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anchor for the comparison above: the problem itself, one Content-Type."""
    calls, status, slug = PROBLEMS[case]
    _, [ours], _, native = both(calls, monkeypatch)
    assert ours.status == status
    assert ours.problem()["type"] == f"/problems/{slug}"
    assert ours.problem()["status"] == status
    assert ours.problem()["instance"] == calls[0].path
    assert [v for k, v in ours.headers if k == "content-type"] == [PROBLEM_JSON]
    assert native.async_calls == []


BACKEND_FAILURES = {
    "unavailable": (BackendUnavailableError("iris-realtime is scaling", retry_after_s=7), 503, "7"),
    "unavailable-fraction": (BackendUnavailableError("busy", retry_after_s=0.2), 503, "1"),
    "backend-error": (BackendError("The model failed: segfault"), 502, None),
    "timeout": (BackendTimeoutError("'iris-realtime' did not answer within 1.00 s."), 504, None),
    "model-rejects": (SchemaMismatchError("bad shape", backend_status=400), 422, None),
    "unexpected": (RuntimeError("a bug in an adapter"), 502, None),
}


@pytest.mark.parametrize("case", list(BACKEND_FAILURES))
def test_backend_failures_are_the_same_problem_with_retry_after(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    error, status, retry_after = BACKEND_FAILURES[case]
    lambda_seen, native_seen, _, native = both([Call()], monkeypatch, error=error)
    assert_same(lambda_seen, native_seen)
    [ours] = native_seen
    assert ours.status == status
    assert ours.header("retry-after") == retry_after
    assert ours.header("ratelimit") is not None
    assert ours.header("ratelimit-policy") is not None
    assert [v for k, v in ours.headers if k == "content-type"] == [PROBLEM_JSON]
    if case == "unexpected":
        assert "a bug" not in ours.body.decode()  # nothing internal leaks
    [call] = native.async_calls
    assert native.gateway.live.stats(call.target).in_flight == 0


# --- what only the native route can meet: a caller that goes away ---------------------------


def test_a_cancelled_native_call_releases_its_slot_and_in_flight_count() -> None:
    """The client disconnects while the backend call is awaited: the invocation is
    abandoned (its concurrency ticket released), the backend is not blamed."""
    started = asyncio.Event()

    class Stuck:
        async def invoke(
            self,
            target: EndpointTarget,
            body: bytes,
            content_type: str,
            accept: str,
            timeout_s: float,
        ) -> BackendReply:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("not reached")

    gw = build_gateway(RecordingInvoker())
    route = NativeInvocations(invoker=Stuck(), gateway=lambda: gw)
    context = dict(CONTEXTS["Bearer alice"])
    path = "/v1/models/single/invocations"
    target = ONE_AT_A_TIME.realtime
    assert target is not None

    async def scenario() -> None:
        task = asyncio.create_task(route("single", {}, ROW, context, "req-1", path))
        await started.wait()
        assert gw.live.stats(target).in_flight == 1
        # The model's one slot is taken: a second call is limited meanwhile.
        busy = await route("single", {}, ROW, context, "req-2", path)
        assert busy.status == 429
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gw.live.stats(target).in_flight == 0
        assert gw.live.stats(target).failures == 0

    run(scenario())

    # The slot is free again: the next call is served.
    served = NativeInvocations(
        invoker=AsyncRecordingInvoker(BackendReply(b"{}", "application/json")),
        gateway=lambda: gw,
    )
    assert run(served("single", {}, ROW, context, "req-3", path)).status == 200


# --- what only the native route can meet: a store round trip must not stall the loop -------


class ThreadRecordingPolicies(FakePolicyStore):
    """Records the thread of every read; ``gate``, when set, holds reads until it opens."""

    def __init__(self, policies: list[ModelPolicy]) -> None:
        super().__init__(policies)
        self.read_in: list[threading.Thread] = []
        self.gate: threading.Event | None = None

    def get(self, model: str) -> ModelPolicy | None:
        self.read_in.append(threading.current_thread())
        if self.gate is not None:
            self.gate.wait(10)
        return super().get(model)


class ThreadRecordingLimits(InMemoryLimitStore):
    def __init__(self) -> None:
        super().__init__()
        self.leased_in: list[threading.Thread] = []

    def lease(self, limit: Limit, want: int, now: float) -> Grant:
        self.leased_in.append(threading.current_thread())
        return super().lease(limit, want, now)


def cached_gateway(
    policies: FakePolicyStore, limits: InMemoryLimitStore
) -> tuple[Gateway, Admission]:
    clock = FakeClock(NOW)
    admission = Admission(
        LeasedLimiter(limits, clock=clock, executor=DeferredExecutor()), clock=clock
    )
    gateway = Gateway(
        CachedPolicyStore(policies, ttl_s=10.0, clock=clock),
        RecordingInvoker(),  # the blocking invoker: never called on the native route
        admission=admission,
        live=LiveState(clock=FakeClock(1_000.0)),
    )
    return gateway, admission


def test_store_reads_run_off_the_event_loop_and_warm_requests_stay_on_it() -> None:
    policies, limits = ThreadRecordingPolicies(POLICIES), ThreadRecordingLimits()
    gw, _ = cached_gateway(policies, limits)
    route = NativeInvocations(invoker=AsyncRecordingInvoker(PREDICTION), gateway=lambda: gw)
    context = dict(CONTEXTS["Bearer alice"])

    async def scenario() -> list[int]:
        loop_thread = threading.current_thread()
        path = "/v1/models/iris/invocations"
        first = await route("iris", {}, ROW, context, "req-0", path)
        # The first request read the policy and leased the limits, in another thread.
        assert len(policies.read_in) == 1 and policies.read_in[0] is not loop_thread
        assert limits.leased_in and loop_thread not in limits.leased_in
        leases = len(limits.leased_in)
        warm = [await route("iris", {}, ROW, context, f"req-{i}", path) for i in (1, 2)]
        # The warm requests read nothing: the cache and the leases answered them.
        assert len(policies.read_in) == 1 and len(limits.leased_in) == leases
        return [first.status, *(answer.status for answer in warm)]

    assert run(scenario()) == [200, 200, 200]


def test_the_event_loop_serves_others_while_a_policy_is_read() -> None:
    policies, limits = ThreadRecordingPolicies(POLICIES), ThreadRecordingLimits()
    gw, _ = cached_gateway(policies, limits)
    route = NativeInvocations(invoker=AsyncRecordingInvoker(PREDICTION), gateway=lambda: gw)
    context = dict(CONTEXTS["Bearer alice"])

    async def scenario() -> None:
        warm = await route("iris", {}, ROW, context, "warm", "/v1/models/iris/invocations")
        assert warm.status == 200
        policies.gate = threading.Event()  # the next policy read hangs until released
        cold = asyncio.create_task(
            route("single", {}, ROW, context, "cold", "/v1/models/single/invocations")
        )
        while len(policies.read_in) < 2:  # the cold read has started, in its thread
            await asyncio.sleep(0)
        # Meanwhile the loop answers a warm request in full.
        again = await route("iris", {}, ROW, context, "again", "/v1/models/iris/invocations")
        assert again.status == 200 and not cold.done()
        policies.gate.set()
        assert (await cold).status == 200

    run(scenario())


def test_a_caller_gone_while_its_call_begins_in_a_thread_frees_its_slot() -> None:
    policies, limits = ThreadRecordingPolicies(POLICIES), ThreadRecordingLimits()
    gw, admission = cached_gateway(policies, limits)
    route = NativeInvocations(invoker=AsyncRecordingInvoker(PREDICTION), gateway=lambda: gw)
    context = dict(CONTEXTS["Bearer alice"])
    path = "/v1/models/single/invocations"  # one request in flight at most

    async def scenario() -> None:
        policies.gate = threading.Event()
        task = asyncio.create_task(route("single", {}, ROW, context, "gone", path))
        while not policies.read_in:
            await asyncio.sleep(0)
        task.cancel()
        policies.gate.set()  # begin completes in its thread, after the caller left
        with pytest.raises(asyncio.CancelledError):
            await task
        policies.gate = None
        # Its begin goes on in the thread: admitted (a slot taken), then abandoned once it
        # returns. The caller's CancelledError comes first, so wait for both to be seen.
        while admission.stats.allowed < 1 or admission.in_flight("single"):
            await asyncio.sleep(0)
        # The slot the abandoned call took is free: the next call is served, not limited.
        nxt = await route("single", {}, ROW, context, "next", path)
        assert nxt.status == 200, nxt.body

    run(scenario())
