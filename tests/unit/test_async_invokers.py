"""gateway.adapters.async_invokers against real origins on loopback, and
gateway.dispatch.Dispatcher.call_async.

The origins are ``tests.unit.test_http1``'s raw servers: each answers the bytes a test
scripts and records what arrived. Where a blocking invoker speaks the same protocol
(botocore's SageMaker runtime client, httpx for containers and OIP), it is the oracle: the
same origin answer must come out of both as the same reply or the same GatewayError."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import botocore.session
import numpy as np
import pytest
from botocore.config import Config

from gateway.adapters.async_invokers import (
    AsyncContainerInvoker,
    AsyncOipInvoker,
    AsyncSageMakerRuntimeInvoker,
)
from gateway.adapters.container import HttpContainerInvoker
from gateway.adapters.oip import HttpOipInvoker
from gateway.adapters.sagemaker import SageMakerRuntimeInvoker
from gateway.adapters.sigv4 import Credentials, SigV4Signer
from gateway.dispatch import AsyncInvokerByProtocol, Attempt, Dispatcher, InvokerByProtocol
from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    SchemaMismatchError,
)
from gateway.live import BreakerState, LiveState
from gateway.models import EndpointTarget
from gateway.ports import EndpointInvoker
from gateway.routing import Targets
from gateway.values import Backend, BackendReply, RouteDecision
from tests.fakes import FakeClock, InlineExecutor, ScriptedInvoker
from tests.unit.test_http1 import Origin, Reply, Seen, origin, refusing_port, response, run
from tests.unit.test_sigv4 import botocore_headers

REGION = "eu-west-1"
NOW = calendar.timegm((2026, 3, 14, 15, 9, 26))
CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
ROWS = b'{"inputs": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]}'

Outcome = BackendReply | BaseException


def signer() -> SigV4Signer:
    return SigV4Signer(lambda: CREDS, REGION, "sagemaker", clock=lambda: NOW)


def sm_target(name: str = "iris-realtime") -> EndpointTarget:
    return EndpointTarget(endpoint_name=name)


def url_target(protocol: str, url: str, name: str = "iris-box", **more: Any) -> EndpointTarget:
    return EndpointTarget(endpoint_name=name, protocol=protocol, url=url, **more)  # type: ignore[arg-type]


async def outcome_of(call: Awaitable[BackendReply]) -> Outcome:
    try:
        return await call
    except Exception as exc:
        return exc


def summary(result: Outcome) -> tuple[Any, ...]:
    """What a client would see of an outcome: the reply, or the error's type, words,
    Retry-After and problem extensions (backend_status)."""
    if isinstance(result, BackendReply):
        return ("reply", result)
    if isinstance(result, GatewayError):
        return (type(result), result.detail, result.retry_after_s, result.extensions)
    return (type(result),)


def fixed(answer: bytes) -> Callable[[Seen], Awaitable[Reply]]:
    async def script(request: Seen) -> Reply:
        return Reply(answer)

    return script


def held(release: asyncio.Event) -> Callable[[Seen], Awaitable[Reply]]:
    """An origin that never answers until the test is over."""

    async def script(request: Seen) -> Reply:
        await release.wait()
        return Reply(response(200, b"{}"))

    return script


def botocore_factory(url: str) -> Callable[[float], Any]:
    """The blocking invoker's client, as bootstrap builds it but without retries (each
    origin answer must be seen once) and pointed at the origin."""
    session = botocore.session.Session()

    def factory(timeout_s: float) -> Any:
        return session.create_client(
            "sagemaker-runtime",
            region_name=REGION,
            endpoint_url=url,
            aws_access_key_id=CREDS.access_key,
            aws_secret_access_key=CREDS.secret_key,
            aws_session_token=CREDS.token,
            config=Config(
                read_timeout=timeout_s, connect_timeout=2, retries={"total_max_attempts": 1}
            ),
        )

    return factory


# --- SageMaker runtime ----------------------------------------------------------------------


def sagemaker_answer(
    status: int, doc: dict[str, Any] | None, error_type: str | None = None, raw: bytes = b""
) -> bytes:
    headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", "abc-123")]
    if error_type is not None:
        headers.append(("x-amzn-ErrorType", error_type))
    body = json.dumps(doc).encode() if doc is not None else raw
    return response(status, body, headers)


MODEL_ERROR = {
    "ErrorCode": "CLIENT_ERROR_FROM_MODEL",
    "LogStreamArn": "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/sagemaker/Endpoints/x",
    "message": 'Received client error (400) from primary with message "{"detail": "bad shape"}".',
    "OriginalStatusCode": 400,
    "OriginalMessage": '{"detail": "bad shape"}',
}
CORAL = ":http://internal.amazon.com/coral/com.amazon.sagemaker/"

SAGEMAKER_ERRORS = {
    "model-4xx": (
        sagemaker_answer(424, MODEL_ERROR, "ModelError" + CORAL),
        SchemaMismatchError,
    ),
    "model-4xx-bare-type": (sagemaker_answer(424, MODEL_ERROR, "ModelError"), SchemaMismatchError),
    "model-5xx": (
        sagemaker_answer(
            424,
            {**MODEL_ERROR, "OriginalStatusCode": 500, "OriginalMessage": "segfault"},
            "ModelError",
        ),
        BackendError,
    ),
    "throttled": (
        sagemaker_answer(400, {"message": "Rate exceeded"}, "ThrottlingException" + CORAL),
        BackendUnavailableError,
    ),
    "service-unavailable": (
        sagemaker_answer(503, {"message": "busy"}, "ServiceUnavailable"),
        BackendUnavailableError,
    ),
    "model-not-ready": (
        sagemaker_answer(429, {"message": "warming"}, "ModelNotReadyException"),
        BackendUnavailableError,
    ),
    "endpoint-not-found": (
        sagemaker_answer(
            400,
            {"message": "Endpoint iris-realtime of account 123456789012 not found."},
            "ValidationError" + CORAL,
        ),
        BackendUnavailableError,
    ),
    "other-validation-error": (
        sagemaker_answer(400, {"message": "Body too long"}, "ValidationError"),
        BackendError,
    ),
    "code-in-body": (
        sagemaker_answer(400, {"__type": "com.amazon.coral#ThrottlingException", "message": "x"}),
        BackendUnavailableError,
    ),
    "html-502": (
        response(502, b"<html><body>Bad Gateway</body></html>", [("Content-Type", "text/html")]),
        BackendError,
    ),
}


def test_sagemaker_success_carries_variant_and_cold_start_and_a_botocore_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = response(
        200,
        b'{"predictions": [0, 1]}',
        [
            ("Content-Type", "application/json"),
            ("x-Amzn-Invoked-Production-Variant", "AllTraffic"),
            ("X-Infergw-Cold-Start-Ms", "812.5"),
        ],
    )

    async def scenario() -> tuple[Outcome, Seen, int]:
        async with origin(fixed(answer)) as server:
            invoker = AsyncSageMakerRuntimeInvoker(server.url, signer())
            try:
                got = await outcome_of(
                    invoker.invoke(sm_target(), ROWS, "application/json", "text/csv", 5.0)
                )
            finally:
                invoker.close()
            [seen] = server.seen
            return got, seen, server.port

    got, seen, port = run(scenario())
    assert got == BackendReply(b'{"predictions": [0, 1]}', "application/json", "AllTraffic", 812.5)
    assert (seen.method, seen.path, seen.body) == (
        "POST",
        "/endpoints/iris-realtime/invocations",
        ROWS,
    )
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["accept"] == "text/csv"
    assert seen.headers["host"] == f"127.0.0.1:{port}"
    assert seen.headers["x-amz-date"] == "20260314T150926Z"
    assert seen.headers["x-amz-security-token"] == "session-token"
    # The signature covers exactly what went over the wire.
    expected = botocore_headers(
        monkeypatch,
        CREDS,
        "POST",
        f"http://127.0.0.1:{port}{seen.path}",
        {"content-type": "application/json", "accept": "text/csv"},
        ROWS,
        epoch=NOW,
        service="sagemaker",
    )
    assert seen.headers["authorization"] == expected["authorization"]
    assert (
        "SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token"
        in (seen.headers["authorization"])
    )


def test_sagemaker_reply_defaults_without_optional_headers() -> None:
    async def scenario() -> Outcome:
        async with origin(fixed(response(200, b"0\n1\n"))) as server:
            invoker = AsyncSageMakerRuntimeInvoker(server.url + "/", signer())
            return await outcome_of(
                invoker.invoke(sm_target(), b"{}", "application/json", "text/csv", 5.0)
            )

    assert run(scenario()) == BackendReply(b"0\n1\n", "application/json", None, None)


@pytest.mark.parametrize("name", ["iris-realtime", "my model", "a/b", "x%2Fy", "ünï"])
def test_sagemaker_request_is_the_one_botocore_sends(name: str) -> None:
    """Path (with the endpoint name percent-encoded as botocore encodes it), media types and
    body, compared with botocore's own request to the same origin; and both are answered
    with the same reply."""
    answer = response(
        200,
        b'{"predictions": [1]}',
        [("Content-Type", "application/json"), ("X-Amzn-Invoked-Production-Variant", "v1")],
    )

    async def scenario() -> tuple[list[Seen], Outcome, Outcome]:
        async with origin(fixed(answer)) as server:
            sync = SageMakerRuntimeInvoker(botocore_factory(server.url))
            target = sm_target(name)
            expected = await asyncio.to_thread(
                lambda: _sync_outcome(sync, target, ROWS, "application/json", "text/csv", 5.0)
            )
            invoker = AsyncSageMakerRuntimeInvoker(server.url, signer())
            got = await outcome_of(invoker.invoke(target, ROWS, "application/json", "text/csv", 5))
            return server.seen, expected, got

    (boto, ours), expected, got = run(scenario())
    assert got == expected
    assert ours.path == boto.path
    for header in ("content-type", "accept"):
        assert ours.headers[header] == boto.headers[header]
    assert ours.body == boto.body == ROWS


def test_sagemaker_base_path_of_the_endpoint_url_is_kept() -> None:
    async def scenario() -> Seen:
        async with origin(fixed(response(200, b"{}"))) as server:
            invoker = AsyncSageMakerRuntimeInvoker(server.url + "/emulator/", signer())
            await invoker.invoke(sm_target(), b"{}", "application/json", "application/json", 5)
            return server.seen[0]

    assert run(scenario()).path == "/emulator/endpoints/iris-realtime/invocations"


def _sync_outcome(invoker: EndpointInvoker, *args: Any) -> Outcome:
    try:
        return invoker.invoke(*args)
    except Exception as exc:
        return exc


@pytest.mark.parametrize("case", list(SAGEMAKER_ERRORS))
def test_sagemaker_errors_map_as_the_botocore_invoker_maps_them(case: str) -> None:
    answer, kind = SAGEMAKER_ERRORS[case]

    async def scenario() -> tuple[Outcome, Outcome]:
        async with origin(fixed(answer)) as server:
            sync = SageMakerRuntimeInvoker(botocore_factory(server.url))
            args = (sm_target(), ROWS, "application/json", "application/json", 5.0)
            expected = await asyncio.to_thread(_sync_outcome, sync, *args)
            invoker = AsyncSageMakerRuntimeInvoker(server.url, signer())
            return expected, await outcome_of(invoker.invoke(*args))

    expected, got = run(scenario())
    assert isinstance(got, kind), got
    assert isinstance(expected, kind), expected
    if case != "html-502":  # botocore names the HTTP status as the code: other words
        assert summary(got) == summary(expected)


def test_a_model_error_from_the_model_is_its_own_words_and_status() -> None:
    async def scenario() -> Outcome:
        async with origin(fixed(SAGEMAKER_ERRORS["model-4xx"][0])) as server:
            invoker = AsyncSageMakerRuntimeInvoker(server.url, signer())
            return await outcome_of(invoker.invoke(sm_target(), ROWS, "a/b", "a/b", 5.0))

    got = run(scenario())
    assert isinstance(got, SchemaMismatchError)
    assert got.detail == "bad shape"
    assert got.extensions == {"backend_status": 400}


@pytest.mark.parametrize(
    ("status", "kind", "retry_after"),
    [
        (503, BackendUnavailableError, 1),
        (429, BackendUnavailableError, 1),
        (502, BackendError, None),
    ],
)
def test_sagemaker_errors_without_a_code_go_by_status(
    status: int, kind: type[GatewayError], retry_after: float | None
) -> None:
    async def scenario() -> Outcome:
        async with origin(fixed(response(status, b"<html>no</html>"))) as server:
            invoker = AsyncSageMakerRuntimeInvoker(server.url, signer())
            return await outcome_of(invoker.invoke(sm_target(), ROWS, "a/b", "a/b", 5.0))

    got = run(scenario())
    assert type(got) is kind
    assert isinstance(got, GatewayError) and got.retry_after_s == retry_after


# --- failures of the connection, the same for every invoker ---------------------------------


@dataclass(frozen=True)
class Kind:
    """One async invoker and its blocking counterpart, for one target."""

    name: str
    make: Callable[[str], Any]  # base url -> async invoker
    make_sync: Callable[[str], EndpointInvoker]
    target: Callable[[str], EndpointTarget]


KINDS = [
    Kind(
        "sagemaker",
        lambda url: AsyncSageMakerRuntimeInvoker(url, signer()),
        lambda url: SageMakerRuntimeInvoker(botocore_factory(url)),
        lambda url: sm_target(),
    ),
    Kind(
        "container",
        lambda url: AsyncContainerInvoker(),
        lambda url: HttpContainerInvoker(),
        lambda url: url_target("container", url),
    ),
    Kind(
        "oip",
        lambda url: AsyncOipInvoker(),
        lambda url: HttpOipInvoker(),
        lambda url: url_target("oip-v2", url),
    ),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    result: Kind = request.param
    return result


def test_no_answer_in_time_is_a_backend_timeout(kind: Kind) -> None:
    release = asyncio.Event()

    async def scenario() -> tuple[Outcome, float]:
        async with origin(held(release)) as server:
            invoker = kind.make(server.url)
            loop = asyncio.get_running_loop()
            started = loop.time()
            got = await outcome_of(
                invoker.invoke(kind.target(server.url), ROWS, "application/json", "a/b", 0.4)
            )
            elapsed = loop.time() - started
            release.set()
            return got, elapsed

    got, elapsed = run(scenario())
    assert isinstance(got, BackendTimeoutError), got
    assert "0.40 s" in got.detail
    assert 0.35 <= elapsed < 2.0


def test_a_refused_connection_is_backend_unavailable(kind: Kind) -> None:
    async def scenario(url: str) -> Outcome:
        invoker = kind.make(url)
        return await outcome_of(
            invoker.invoke(kind.target(url), ROWS, "application/json", "*/*", 5)
        )

    with refusing_port() as port:
        got = run(scenario(f"http://127.0.0.1:{port}"))
    assert isinstance(got, BackendUnavailableError), got
    assert got.retry_after_s == 5
    assert "unreachable" in got.detail


@pytest.mark.parametrize(
    "garbage", [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n"], ids=["ssh", "status"]
)
def test_a_garbage_answer_is_what_the_blocking_invoker_says(kind: Kind, garbage: bytes) -> None:
    async def script(request: Seen) -> Reply:
        return Reply(garbage, close=True)

    async def scenario() -> tuple[Outcome, Outcome]:
        async with origin(script) as server:
            args = (kind.target(server.url), ROWS, "application/json", "application/json", 5.0)
            expected = await asyncio.to_thread(_sync_outcome, kind.make_sync(server.url), *args)
            got = await outcome_of(kind.make(server.url).invoke(*args))
            return expected, got

    expected, got = run(scenario())
    assert isinstance(expected, BackendUnavailableError), expected
    assert isinstance(got, BackendUnavailableError), got


def test_an_answer_cut_short_is_an_error_as_for_the_blocking_invoker(kind: Kind) -> None:
    cut = response(200, b'{"predictions": [', [("Connection", "close")], length=500)

    async def script(request: Seen) -> Reply:
        return Reply(cut, close=True)

    async def scenario() -> tuple[Outcome, Outcome]:
        async with origin(script) as server:
            args = (kind.target(server.url), ROWS, "application/json", "application/json", 5.0)
            expected = await asyncio.to_thread(_sync_outcome, kind.make_sync(server.url), *args)
            got = await outcome_of(kind.make(server.url).invoke(*args))
            return expected, got

    expected, got = run(scenario())
    assert isinstance(expected, BackendUnavailableError), expected
    assert isinstance(got, BackendUnavailableError), got


# --- containers -----------------------------------------------------------------------------


CONTAINER_CASES = {
    "ok-json": response(200, b'{"predictions": [2]}', [("Content-Type", "application/json")]),
    "ok-binary": response(200, b"\x93NUMPY\x00\xff", [("Content-Type", "application/x-npy")]),
    "ok-no-type": response(200, b"2\n"),
    "400-detail": response(400, b'{"detail": "expected 4 features, got 3"}'),
    "422-error": response(422, b'{"error": "not a number at row 2"}'),
    "404-text": response(404, b"no such model"),
    "503": response(503, b'{"detail": "queue full"}'),
    "429": response(429, b""),
    "500": response(500, b'{"detail": "CUDA out of memory"}'),
}
CONTAINER_KIND = {
    "400-detail": SchemaMismatchError,
    "422-error": SchemaMismatchError,
    "404-text": SchemaMismatchError,
    "503": BackendUnavailableError,
    "429": BackendUnavailableError,
    "500": BackendError,
}


@pytest.mark.parametrize("case", list(CONTAINER_CASES))
def test_container_answers_as_the_httpx_invoker(case: str) -> None:
    body = b"\x93NUMPY\x01\x00 binary \x00\xff input"

    async def scenario() -> tuple[Outcome, Outcome, list[Seen]]:
        async with origin(fixed(CONTAINER_CASES[case])) as server:
            target = url_target("container", server.url + "/base/")
            args = (target, body, "application/x-npy", "application/json", 5.0)
            expected = await asyncio.to_thread(_sync_outcome, HttpContainerInvoker(), *args)
            invoker = AsyncContainerInvoker()
            got = await outcome_of(invoker.invoke(*args))
            invoker.close()
            return expected, got, server.seen

    expected, got, (theirs, ours) = run(scenario())
    assert summary(got) == summary(expected)
    if case.startswith("ok"):
        assert isinstance(got, BackendReply)
    else:
        assert type(got) is CONTAINER_KIND[case]
    assert (ours.method, ours.path, ours.body) == ("POST", "/base/invocations", body)
    assert ours.headers["content-type"] == "application/x-npy"
    assert ours.headers["accept"] == "application/json"
    assert theirs.path == ours.path


def test_container_client_errors_carry_the_models_words() -> None:
    async def scenario() -> Outcome:
        async with origin(fixed(CONTAINER_CASES["400-detail"])) as server:
            target = url_target("container", server.url)
            return await outcome_of(AsyncContainerInvoker().invoke(target, b"{}", "a/b", "c/d", 5))

    got = run(scenario())
    assert isinstance(got, SchemaMismatchError)
    assert got.detail == "expected 4 features, got 3"
    assert got.extensions == {"backend_status": 400}


def test_container_invoker_pools_per_origin() -> None:
    """Two model servers: each gets its own keep-alive connection, reused."""

    async def echo(request: Seen) -> Reply:
        return Reply(response(200, request.path.encode()))

    async def scenario() -> tuple[Origin, Origin, list[bytes]]:
        async with origin(echo) as one, origin(echo) as two:
            invoker = AsyncContainerInvoker()
            bodies = []
            for url in [one.url + "/a", two.url + "/b", one.url + "/a", two.url + "/c"]:
                reply = await invoker.invoke(url_target("container", url), b"{}", "x/y", "x/y", 5)
                bodies.append(reply.body)
            invoker.close()
            return one, two, bodies

    one, two, bodies = run(scenario())
    assert bodies == [b"/a/invocations", b"/b/invocations", b"/a/invocations", b"/c/invocations"]
    assert (one.connections, two.connections) == (1, 1)


# --- OIP v2 ---------------------------------------------------------------------------------


OIP_ANSWER = {
    "model_name": "iris-onnx",
    "model_version": "3",
    "outputs": [
        {"name": "label", "shape": [2], "datatype": "INT64", "data": [0, 2]},
        {
            "name": "probabilities",
            "shape": [2, 3],
            "datatype": "FP32",
            "data": [0.9, 0.05, 0.05, 0.1, 0.2, 0.7],
        },
    ],
}


def test_oip_request_is_translated_to_tensors_and_the_answer_to_predictions() -> None:
    answer = response(200, json.dumps(OIP_ANSWER).encode(), [("Content-Type", "application/json")])

    async def scenario() -> tuple[Outcome, Seen]:
        async with origin(fixed(answer)) as server:
            target = url_target("oip-v2", server.url + "/", name="iris-box", oip_model="iris-onnx")
            got = await outcome_of(
                AsyncOipInvoker().invoke(target, ROWS, "application/json", "*/*", 5)
            )
            return got, server.seen[0]

    got, seen = run(scenario())
    assert (seen.method, seen.path) == ("POST", "/v2/models/iris-onnx/infer")
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [5.1, 3.5, 1.4, 0.2, 6.2, 2.9, 4.3, 1.3],
            }
        ]
    }
    assert isinstance(got, BackendReply)
    assert got.content_type == "application/json"
    assert json.loads(got.body) == {
        "model": "iris-onnx",
        "version": "3",
        "predictions": [
            {"label": 0, "probabilities": [0.9, 0.05, 0.05]},
            {"label": 2, "probabilities": [0.1, 0.2, 0.7]},
        ],
    }


def test_oip_csv_rows_become_the_same_tensor() -> None:
    answer = response(200, json.dumps(OIP_ANSWER).encode())

    async def scenario() -> Seen:
        async with origin(fixed(answer)) as server:
            target = url_target("oip-v2", server.url, name="iris")
            await AsyncOipInvoker().invoke(target, b"1,2,3,4\n5,6,7,8\n", "text/csv", "*/*", 5)
            return server.seen[0]

    seen = run(scenario())
    assert seen.path == "/v2/models/iris/infer"
    assert json.loads(seen.body)["inputs"][0]["shape"] == [2, 4]
    assert json.loads(seen.body)["inputs"][0]["data"] == [1, 2, 3, 4, 5, 6, 7, 8]


OIP_CASES = {
    "ok": response(200, json.dumps(OIP_ANSWER).encode()),
    "400": response(400, b'{"error": "unexpected shape [2, 4], expected [-1, 5]"}'),
    "404": response(404, b'{"error": "model not found"}'),
    "500": response(500, b'{"error": "inference failed"}'),
    "503": response(503, b"busy"),
    "not-oip": response(200, b"[1, 2]"),
    "not-json": response(200, b"<html></html>"),
}


@pytest.mark.parametrize("case", list(OIP_CASES))
def test_oip_answers_as_the_httpx_invoker(case: str) -> None:
    async def scenario() -> tuple[Outcome, Outcome]:
        async with origin(fixed(OIP_CASES[case])) as server:
            args = (url_target("oip-v2", server.url), ROWS, "application/json", "*/*", 5.0)
            expected = await asyncio.to_thread(_sync_outcome, HttpOipInvoker(), *args)
            return expected, await outcome_of(AsyncOipInvoker().invoke(*args))

    expected, got = run(scenario())
    assert summary(got) == summary(expected)
    kinds = {"400": SchemaMismatchError, "404": SchemaMismatchError, "ok": BackendReply}
    assert isinstance(got, kinds.get(case, BackendError)), got
    if case == "400":
        assert isinstance(got, SchemaMismatchError)
        assert got.detail == "unexpected shape [2, 4], expected [-1, 5]"


def npy_rows() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 4), dtype=np.float32))
    return buffer.getvalue()


def test_oip_refuses_npy_before_calling() -> None:
    async def scenario() -> tuple[Outcome, int]:
        async with origin(fixed(response(200, b"{}"))) as server:
            target = url_target("oip-v2", server.url)
            got = await outcome_of(
                AsyncOipInvoker().invoke(target, npy_rows(), "application/x-npy", "*/*", 5)
            )
            return got, len(server.seen)

    got, calls = run(scenario())
    assert isinstance(got, SchemaMismatchError)
    assert calls == 0


# --- Dispatcher.call_async ------------------------------------------------------------------


T0 = 1_000.0
RT = EndpointTarget(
    endpoint_name="m-realtime",
    protocol="container",
    url="http://rt.invalid",
    expected_latency_ms=50,
)
SL = EndpointTarget(endpoint_name="m-serverless", expected_latency_ms=80.0)
TARGETS = Targets("primary", "1", RT, SL)
OK_RT = BackendReply(b'{"predictions": [{"label": 1}]}', "application/json", variant="rt")
OK_SL = BackendReply(b'{"predictions": [{"label": 1}]}', "application/json", cold_start_ms=30.0)
FIRST_RT = RouteDecision(Backend.REALTIME, "within-slo")
FALLBACK_SL = RouteDecision(Backend.SERVERLESS, "fallback")
FALLBACK_ASYNC = RouteDecision(Backend.ASYNC, "fallback")
WITH_ASYNC = [FIRST_RT, FALLBACK_SL, FALLBACK_ASYNC]
SYNC_ONLY = [FIRST_RT, FALLBACK_SL]

Script = Callable[[], dict[str, list[Outcome]]]
OUTCOMES: dict[str, Script] = {
    "realtime-ok": lambda: {"m-realtime": [OK_RT]},
    "unavailable-then-serverless": lambda: {
        "m-realtime": [BackendUnavailableError("full", retry_after_s=1)],
        "m-serverless": [OK_SL],
    },
    "timeout-then-serverless-fails": lambda: {
        "m-realtime": [BackendTimeoutError("slow")],
        "m-serverless": [BackendError("boom")],
    },
    "client-error-stops": lambda: {
        "m-realtime": [SchemaMismatchError("bad shape", backend_status=400)],
    },
    "unexpected-then-serverless": lambda: {
        "m-realtime": [RuntimeError("a bug in an adapter")],
        "m-serverless": [OK_SL],
    },
    "backend-error-then-client-error": lambda: {
        "m-realtime": [BackendError("502")],
        "m-serverless": [SchemaMismatchError("bad", backend_status=422)],
    },
    "both-unexpected": lambda: {
        "m-realtime": [KeyError("x")],
        "m-serverless": [ValueError("y")],
    },
}


class AsyncScripted:
    """ScriptedInvoker on an event loop: suspends once, then answers as scripted."""

    def __init__(self, inner: ScriptedInvoker) -> None:
        self.inner = inner

    async def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        await asyncio.sleep(0)
        return self.inner.invoke(target, body, content_type, accept, timeout_s)


def attempt_summary(attempt: Attempt) -> tuple[Any, ...]:
    error = None if attempt.error is None else summary(attempt.error)
    return (attempt.decision, attempt.reply, error, attempt.fallbacks, attempt.tried)


@dataclass
class Run:
    attempt: Attempt
    dispatcher: Dispatcher
    live: LiveState
    calls: list[tuple[str, float]]
    protocols: list[str]


def sync_run(script: Script, plan: list[RouteDecision]) -> Run:
    clock = FakeClock(T0)
    live = LiveState(clock=clock)
    invoker = ScriptedInvoker(
        script(), clock=clock, latency_s={"m-realtime": 0.04, "m-serverless": 0.06}
    )
    routed = InvokerByProtocol({"container": invoker, "sagemaker": invoker})
    d = Dispatcher(routed, live, shadow_executor=InlineExecutor())
    attempt = d.call_sync(plan, TARGETS, b"{}", "application/json", "*/*", T0 + 30, T0 + 1)
    calls = [(c.target.endpoint_name, c.timeout_s) for c in invoker.calls]
    return Run(attempt, d, live, calls, [c.target.protocol for c in invoker.calls])


def async_run(script: Script, plan: list[RouteDecision]) -> Run:
    clock = FakeClock(T0)
    live = LiveState(clock=clock)
    scripted = ScriptedInvoker(
        script(), clock=clock, latency_s={"m-realtime": 0.04, "m-serverless": 0.06}
    )
    by_protocol = {"container": AsyncScripted(scripted), "sagemaker": AsyncScripted(scripted)}
    # The sync invoker must not be used by call_async.
    d = Dispatcher(ScriptedInvoker(default=AssertionError("sync")), live, InlineExecutor())
    invoker = AsyncInvokerByProtocol(dict(by_protocol))
    attempt = run(
        d.call_async(invoker, plan, TARGETS, b"{}", "application/json", "*/*", T0 + 30, T0 + 1)
    )
    calls = [(c.target.endpoint_name, c.timeout_s) for c in scripted.calls]
    return Run(attempt, d, live, calls, [c.target.protocol for c in scripted.calls])


@pytest.mark.parametrize("plan", [WITH_ASYNC, SYNC_ONLY], ids=["with-async", "sync-only"])
@pytest.mark.parametrize("case", list(OUTCOMES))
def test_call_async_walks_the_plan_as_call_sync(case: str, plan: list[RouteDecision]) -> None:
    sync, on_loop = sync_run(OUTCOMES[case], plan), async_run(OUTCOMES[case], plan)
    assert attempt_summary(on_loop.attempt) == attempt_summary(sync.attempt)
    assert on_loop.calls == sync.calls
    assert on_loop.protocols == sync.protocols
    assert on_loop.live.snapshot() == sync.live.snapshot()
    assert on_loop.dispatcher.fallbacks == sync.dispatcher.fallbacks
    for target in (RT, SL):
        assert on_loop.live.stats(target).in_flight == 0


def test_call_async_routes_by_protocol_and_falls_back() -> None:
    """A sanity anchor for the comparison above: the fallback case, spelled out."""
    result = async_run(OUTCOMES["unavailable-then-serverless"], WITH_ASYNC)
    assert result.attempt.reply == OK_SL
    assert result.attempt.error is None
    assert result.attempt.decision == RouteDecision(
        Backend.SERVERLESS, "fallback-from-realtime", "primary"
    )
    assert result.attempt.tried == ["realtime", "serverless"]
    assert result.protocols == ["container", "sagemaker"]
    assert [name for name, _ in result.calls] == ["m-realtime", "m-serverless"]
    assert [timeout for _, timeout in result.calls] == pytest.approx([30.0, 29.96])
    assert result.live.stats(RT).failures == 1
    assert result.live.stats(SL).cold_start_ms == 30.0


class Blocking:
    """An async invoker that answers scripted outcomes for some endpoints and, for the
    ``blocks`` one, waits until cancelled."""

    def __init__(self, blocks: str, script: dict[str, Outcome]) -> None:
        self.blocks = blocks
        self.script = script
        self.started = asyncio.Event()
        self.cancelled = False

    async def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        if target.endpoint_name != self.blocks:
            outcome = self.script[target.endpoint_name]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("not reached")


@pytest.mark.parametrize(
    ("blocks", "script", "failed"),
    [
        ("m-realtime", {}, {"m-realtime": 0, "m-serverless": 0}),
        (
            "m-serverless",
            {"m-realtime": BackendUnavailableError("full", retry_after_s=1)},
            {"m-realtime": 1, "m-serverless": 0},
        ),
    ],
    ids=["first-step", "fallback-step"],
)
def test_a_cancelled_call_async_leaves_nothing_in_flight(
    blocks: str, script: dict[str, Outcome], failed: dict[str, int]
) -> None:
    live = LiveState(clock=FakeClock(T0))
    d = Dispatcher(ScriptedInvoker(), live, InlineExecutor())
    invoker = Blocking(blocks, script)

    async def scenario() -> None:
        task = asyncio.create_task(
            d.call_async(invoker, WITH_ASYNC, TARGETS, b"{}", "a/b", "a/b", T0 + 30, T0 + 1)
        )
        await invoker.started.wait()
        blocked = RT if blocks == "m-realtime" else SL
        assert live.stats(blocked).in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert invoker.cancelled
    for target in (RT, SL):
        stats = live.stats(target)
        assert stats.in_flight == 0
        assert stats.failures == failed[target.endpoint_name]
        assert stats.breaker.state(T0) is BreakerState.CLOSED
    # The cancelled call was not the backend's failure.
    assert live.stats(RT if blocks == "m-realtime" else SL).outcomes[-1] is True


def test_call_async_over_the_network_falls_back_as_call_sync() -> None:
    """The real invokers: a container realtime endpoint that is full (503) and a SageMaker
    serverless endpoint that answers. call_async with AsyncInvokerByProtocol and call_sync
    with the blocking invokers come to the same attempt."""
    answers = {
        "/invocations": response(503, b'{"detail": "queue full"}'),
        "/endpoints/m-serverless/invocations": response(
            200,
            b'{"predictions": [1]}',
            [("Content-Type", "application/json"), ("X-Amzn-Invoked-Production-Variant", "sl")],
        ),
    }

    async def script(request: Seen) -> Reply:
        return Reply(answers[request.path])

    async def scenario() -> tuple[Attempt, Attempt, list[str]]:
        async with origin(script) as server:
            rt = EndpointTarget(endpoint_name="m-realtime", protocol="container", url=server.url)
            targets = Targets("primary", "1", rt, SL)
            sync_invoker = InvokerByProtocol(
                {
                    "container": HttpContainerInvoker(),
                    "sagemaker": SageMakerRuntimeInvoker(botocore_factory(server.url)),
                }
            )
            sync_d = Dispatcher(sync_invoker, LiveState(), InlineExecutor())
            args = (WITH_ASYNC, targets, ROWS, "application/json", "application/json")
            now = sync_d.live.now()
            expected = await asyncio.to_thread(sync_d.call_sync, *args, now + 30, now + 5)
            async_invoker = AsyncInvokerByProtocol(
                {
                    "container": AsyncContainerInvoker(),
                    "sagemaker": AsyncSageMakerRuntimeInvoker(server.url, signer()),
                }
            )
            live = LiveState()
            d = Dispatcher(ScriptedInvoker(default=AssertionError("sync")), live, InlineExecutor())
            now = live.now()
            got = await d.call_async(async_invoker, *args, now + 30, now + 5)
            assert live.stats(rt).in_flight == live.stats(SL).in_flight == 0
            return expected, got, [s.path for s in server.seen]

    expected, got, paths = run(scenario())
    assert attempt_summary(got) == attempt_summary(expected)
    assert got.reply == BackendReply(b'{"predictions": [1]}', "application/json", "sl")
    assert got.tried == ["realtime", "serverless"]
    assert paths == ["/invocations", "/endpoints/m-serverless/invocations"] * 2
