"""functions.api.app.handler, called as Lambda calls it with API Gateway HTTP API 2.0 events."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from functions import bootstrap
from functions.api import app as api
from gateway.auth import principal_to_context
from gateway.errors import BackendUnavailableError
from gateway.models import EndpointTarget, InputSchema, ModelPolicy
from gateway.service import Gateway
from gateway.values import BackendReply, Principal
from tests.fakes import InMemoryPolicyStore, RecordingInvoker

STAGE = "dev"
PROBLEM_JSON = "application/problem+json"

IRIS = ModelPolicy(
    model="iris",
    version="7",
    realtime=EndpointTarget(endpoint_name="iris-realtime"),
    input=InputSchema(features=4),
)
TINY = ModelPolicy(
    model="tiny", serverless=EndpointTarget(endpoint_name="tiny-sls"), sync_max_bytes=32
)
OTHERS = ModelPolicy(
    model="others", realtime=EndpointTarget(endpoint_name="o"), allowed_tenants=["tenant-z"]
)
ALICE = Principal(tenant="tenant-a", key_id="key_alice", scopes=frozenset({"invoke"}))
ROW = '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'


@dataclass
class LambdaContext:
    function_name: str = "infergw-dev-api"
    aws_request_id: str = "8f5f3b0e-6b1c-4c43-9a57-0c8e7d1a2b3c"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:infergw-dev-api"
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/infergw-dev-api"
    log_stream_name: str = "2026/11/21/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def http_event(
    method: str,
    path: str,
    *,
    body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    principal: Principal | None = ALICE,
    authorizer_context: dict[str, Any] | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """A payload format 2.0 event as API Gateway sends it for the ``ANY /{proxy+}`` route of a
    named stage, with the Lambda authorizer's context (if any)."""
    raw_path = f"/{STAGE}{path}"
    all_headers = {
        "accept": "application/json",
        "content-type": "application/json",
        "host": "abc123.execute-api.eu-west-1.amazonaws.com",
        "user-agent": "pytest",
        "x-forwarded-for": "192.0.2.10",
        "x-forwarded-proto": "https",
        "authorization": "Bearer igw_test_redacted",
    }
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    if isinstance(body, bytes) or base64_body:
        raw = body.encode() if isinstance(body, str) else (body or b"")
        encoded_body: str | None = base64.b64encode(raw).decode()
        base64_body = True
    else:
        encoded_body = body
    request_context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "abc123",
        "domainName": "abc123.execute-api.eu-west-1.amazonaws.com",
        "domainPrefix": "abc123",
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": "192.0.2.10",
            "userAgent": "pytest",
        },
        "requestId": "JKJaXmPLvHcESHA=",
        "routeKey": "ANY /{proxy+}",
        "stage": STAGE,
        "time": "21/Nov/2026:23:59:59 +0000",
        "timeEpoch": 1_795_391_999_000,
    }
    if authorizer_context is not None:
        request_context["authorizer"] = {"lambda": authorizer_context}
    elif principal is not None:
        request_context["authorizer"] = {"lambda": principal_to_context(principal)}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": raw_path,
        "rawQueryString": "",
        "headers": all_headers,
        "pathParameters": {"proxy": path.lstrip("/")},
        "requestContext": request_context,
        "isBase64Encoded": base64_body,
    }
    if encoded_body is not None:
        event["body"] = encoded_body
    return event


def call(event: dict[str, Any]) -> dict[str, Any]:
    return api.handler(event, LambdaContext())


def header(response: dict[str, Any], name: str) -> str | None:
    for key, value in response.get("headers", {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def problem(response: dict[str, Any], status: int) -> dict[str, Any]:
    assert response["statusCode"] == status, response
    assert header(response, "content-type") == PROBLEM_JSON
    doc = json.loads(response["body"])
    assert {"type", "title", "status", "detail"} <= doc.keys()
    assert doc["status"] == status
    assert doc["type"].startswith("/problems/")
    return doc


def invocation(model: str = "iris", body: str | bytes = ROW, **kwargs: Any) -> dict[str, Any]:
    return http_event("POST", f"/v1/models/{model}/invocations", body=body, **kwargs)


@pytest.fixture()
def invoker() -> RecordingInvoker:
    return RecordingInvoker(reply=BackendReply(b'{"predictions": [2]}', "application/json"))


@pytest.fixture(autouse=True)
def installed(invoker: RecordingInvoker) -> Iterator[Gateway]:
    gateway = Gateway(InMemoryPolicyStore([IRIS, TINY, OTHERS]), invoker)
    bootstrap.use(gateway=gateway)
    yield gateway
    bootstrap.use()


# --- invoke ------------------------------------------------------------------------------


def test_invoke_returns_the_model_output_and_route(invoker: RecordingInvoker) -> None:
    response = call(invocation())
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"predictions": [2]}
    assert header(response, "content-type") == "application/json"
    assert header(response, "x-inference-route") == "realtime; reason=within-slo"
    assert header(response, "x-model-version") == "7"
    assert "route;dur=" in (header(response, "server-timing") or "")
    [call_] = invoker.calls
    assert call_.target.endpoint_name == "iris-realtime"
    assert call_.body == ROW.encode()


def test_base64_encoded_body_is_decoded(invoker: RecordingInvoker) -> None:
    response = call(invocation(body=ROW, base64_body=True))
    assert response["statusCode"] == 200
    assert invoker.calls[0].body == ROW.encode()


def test_binary_npy_body_reaches_the_backend_untouched(invoker: RecordingInvoker) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 4), dtype=np.float32))
    response = call(
        invocation(body=buffer.getvalue(), headers={"content-type": "application/x-npy"})
    )
    assert response["statusCode"] == 200
    assert invoker.calls[0].body == buffer.getvalue()
    assert invoker.calls[0].content_type == "application/x-npy"


def response_bytes(response: dict[str, Any]) -> bytes:
    body = response["body"]
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()


def test_text_model_output_is_returned_as_is(invoker: RecordingInvoker) -> None:
    invoker.reply = BackendReply(b"2\n0\n", "text/csv")
    response = call(invocation())
    assert response["statusCode"] == 200
    assert response_bytes(response) == b"2\n0\n"
    assert header(response, "content-type") == "text/csv"


def test_binary_model_output_is_returned_base64_encoded(invoker: RecordingInvoker) -> None:
    output = b"\x93NUMPY\x01\x00\xff\xfe"
    invoker.reply = BackendReply(output, "application/x-npy")
    # Regression: powertools' response validation UTF-8-decoded the bytes body (a 500).
    response = call(invocation())
    assert response["statusCode"] == 200
    assert response["isBase64Encoded"] is True
    assert base64.b64decode(response["body"]) == output


def test_client_headers_reach_the_backend(invoker: RecordingInvoker) -> None:
    response = call(
        invocation(
            body="5.1,3.5,1.4,0.2\n",
            headers={"Content-Type": "text/csv; charset=utf-8", "Accept": "text/csv"},
        )
    )
    assert response["statusCode"] == 200
    assert invoker.calls[0].content_type == "text/csv"
    assert invoker.calls[0].accept == "text/csv"


# --- problems ----------------------------------------------------------------------------


def test_unknown_model_is_a_404_problem(invoker: RecordingInvoker) -> None:
    doc = problem(call(invocation("nope")), 404)
    assert doc["type"] == "/problems/model-not-found"
    assert doc["title"] == "Unknown model"
    assert "nope" in doc["detail"]
    assert doc["instance"] == "/v1/models/nope/invocations"
    assert invoker.calls == []


def test_another_tenants_model_is_a_404_problem() -> None:
    assert problem(call(invocation("others")), 404)["type"] == "/problems/model-not-found"


def test_schema_mismatch_is_a_422_problem_naming_the_row(invoker: RecordingInvoker) -> None:
    doc = problem(call(invocation(body='{"inputs": [[1, 2, 3, 4], [1, 2]]}')), 422)
    assert doc["type"] == "/problems/schema-mismatch"
    assert doc["row"] == 2
    assert doc["expected_features"] == 4
    assert invoker.calls == []


@pytest.mark.parametrize("body", ['{"inputs": [[1, 2', "", "[" * 50_000])
def test_malformed_body_is_a_400_problem(body: str, invoker: RecordingInvoker) -> None:
    doc = problem(call(invocation(body=body)), 400)
    assert doc["type"] == "/problems/malformed-request"
    assert invoker.calls == []


def test_unsupported_content_type_is_a_415_problem_listing_the_supported_ones() -> None:
    doc = problem(call(invocation(headers={"content-type": "application/xml"})), 415)
    assert "text/csv" in doc["supported"]


def test_too_large_body_is_a_413_problem_with_the_limit() -> None:
    doc = problem(call(invocation("tiny", body="[" + "1," * 40 + "1]")), 413)
    assert doc["limit_bytes"] == 32


def test_bad_hint_header_is_a_400_problem_naming_the_header() -> None:
    doc = problem(call(invocation(headers={"x-latency-budget-ms": "soon"})), 400)
    assert doc["header"] == "X-Latency-Budget-Ms"


def test_backend_unavailable_is_a_503_problem_with_retry_after(
    invoker: RecordingInvoker,
) -> None:
    invoker.error = BackendUnavailableError("iris-realtime is scaling", retry_after_s=7)
    response = call(invocation())
    doc = problem(response, 503)
    assert doc["type"] == "/problems/backend-unavailable"
    assert header(response, "retry-after") == "7"


@pytest.mark.parametrize(
    "context",
    [None, {}, {"tenant": ""}, {"scopes": "invoke", "key_id": "key_x"}],
    ids=["no-authorizer", "empty-context", "empty-tenant", "no-tenant"],
)
def test_missing_identity_is_a_401_problem(
    context: dict[str, Any] | None, invoker: RecordingInvoker
) -> None:
    event = invocation(principal=None, authorizer_context=context)
    doc = problem(call(event), 401)
    assert doc["type"] == "/problems/unauthenticated"
    assert invoker.calls == []


def test_missing_invoke_scope_is_a_403_problem() -> None:
    reader = Principal(tenant="tenant-a", key_id="key_r", scopes=frozenset({"jobs"}))
    assert problem(call(invocation(principal=reader)), 403)["type"] == "/problems/forbidden"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/v1/models/iris/invocations/extra"), ("POST", "/v2/models")],
)
def test_unknown_route_is_a_404_problem(method: str, path: str) -> None:
    doc = problem(call(http_event(method, path)), 404)
    assert path in doc["detail"]
    assert doc["instance"] == path


def test_an_adapters_unexpected_error_is_a_502_problem_without_internals(
    invoker: RecordingInvoker,
) -> None:
    # Not a 500: an untranslated backend failure is still the backend's, and it must not
    # leave the backend's live state (in flight, breaker) wedged.
    invoker.error = RuntimeError("db password is hunter2")
    response = call(invocation())
    doc = problem(response, 502)
    assert doc["type"] == "/problems/backend-error"
    for leak in ("hunter2", "RuntimeError", "Traceback", 'File "'):
        assert leak not in response["body"]


# --- public routes and model listing --------------------------------------------------------


def test_healthz() -> None:
    response = call(http_event("GET", "/healthz", principal=None))
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {"status": "ok"}


def test_openapi_document_describes_the_invocation_route() -> None:
    response = call(http_event("GET", "/openapi.json", principal=None))
    assert response["statusCode"] == 200
    doc = json.loads(response["body"])
    assert doc["openapi"].startswith("3.")
    operation = doc["paths"]["/v1/models/{model}/invocations"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert {"application/json", "text/csv", "application/x-npy"} <= body["content"].keys()
    assert operation["security"] == [{"bearer": []}]
    assert "application/problem+json" in operation["responses"]["404"]["content"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_problem_type_documentation() -> None:
    response = call(http_event("GET", "/problems/schema-mismatch", principal=None))
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["status"] == 422
    problem(call(http_event("GET", "/problems/no-such-problem", principal=None)), 404)


def test_list_models_shows_only_the_callers_models() -> None:
    response = call(http_event("GET", "/v1/models"))
    assert response["statusCode"] == 200
    models = json.loads(response["body"])
    assert [m["model"] for m in models] == ["iris", "tiny"]
    assert models[0]["backends"] == ["realtime"]
    assert "iris-realtime" not in response["body"]


def test_get_model() -> None:
    response = call(http_event("GET", "/v1/models/iris"))
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["input"] == {"features": 4, "dtype": "float32"}
    problem(call(http_event("GET", "/v1/models/others")), 404)
