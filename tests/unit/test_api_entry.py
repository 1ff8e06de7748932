"""functions.api.app as the Lambda entry: lean to import (no powertools resolver, OpenAPI
models or X-Ray until a request needs them), and answering exactly as the resolver would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from functions import bootstrap
from functions.api import app as api
from functions.api import context, http_event
from gateway.auth import principal_from_context
from gateway.errors import GatewayError
from gateway.service import Gateway
from gateway.values import BackendReply
from tests.fakes import InMemoryPolicyStore, RecordingInvoker
from tests.fresh_python import run_fresh
from tests.unit.test_api_handler import IRIS, LambdaContext, invocation
from tests.unit.test_api_handler import http_event as api_event

# What the entry must not import: the resolver and the OpenAPI models its validation needs,
# the X-Ray SDK, powertools' event data classes (a few dictionary look-ups do).
HEAVY = (
    "aws_lambda_powertools.event_handler",
    "aws_xray_sdk",
    "aws_lambda_powertools.utilities.data_classes",
    "functions.api.routes",
)


def loaded_after(script: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; it prints one JSON line, to which the heavy
    modules then loaded are added."""
    probe = (
        "import json, sys\n"
        + script
        + f"\nresult['heavy'] = sorted(m for m in sys.modules if m.startswith({HEAVY!r}))"
        + "\nprint(json.dumps(result))"
    )
    result: dict[str, Any] = run_fresh(
        probe, {"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_METRICS_DISABLED": "true"}
    )
    return result


def test_importing_the_entry_loads_no_resolver_openapi_or_xray() -> None:
    assert loaded_after("import functions.api.app\nresult = {}")["heavy"] == []


def test_the_resolver_is_imported_by_the_first_other_request_only() -> None:
    result = loaded_after(
        """
from functions import bootstrap
from functions.api import app
from gateway.service import Gateway
from tests.fakes import InMemoryPolicyStore, RecordingInvoker
from tests.fresh_python import run_fresh
from tests.unit.test_api_handler import IRIS, LambdaContext, http_event, invocation

bootstrap.use(gateway=Gateway(InMemoryPolicyStore([IRIS]), RecordingInvoker()))
invoked = app.handler(invocation(), LambdaContext())
before = sorted(m for m in sys.modules if m.startswith("aws_lambda_powertools.event_handler"))
health = app.handler(http_event("GET", "/healthz", principal=None), LambdaContext())
result = {"invoked": invoked["statusCode"], "before": before, "health": health}
"""
    )
    assert result["invoked"] == 200
    assert result["before"] == []
    assert result["health"]["statusCode"] == 200
    assert json.loads(result["health"]["body"]) == {"status": "ok"}
    assert "functions.api.routes" in result["heavy"]


@pytest.fixture()
def installed() -> Iterator[None]:
    reply = BackendReply(b'{"predictions": [2]}', "application/json")
    bootstrap.use(gateway=Gateway(InMemoryPolicyStore([IRIS]), RecordingInvoker(reply=reply)))
    yield
    bootstrap.use()


@pytest.mark.parametrize(
    "event",
    [
        invocation(),
        invocation("nope"),
        invocation(headers={"content-type": "application/xml"}),
        invocation(body='{"inputs": [[1, 2]]}'),
        invocation(principal=None),
    ],
    ids=["ok", "unknown-model", "unsupported-type", "schema-mismatch", "anonymous"],
)
@pytest.mark.usefixtures("installed")
def test_the_fast_path_answers_as_the_resolvers_documented_route(event: dict[str, Any]) -> None:
    from functions.api import routes

    fast = api.handler(event, LambdaContext())
    resolved = routes.app.resolve(event, LambdaContext())
    for answer in (fast, resolved):
        answer["headers"].pop("Server-Timing", None)  # durations
    assert fast["statusCode"] == resolved["statusCode"]
    assert fast["body"] == resolved["body"]
    assert fast["isBase64Encoded"] == resolved["isBase64Encoded"]
    assert fast["headers"] == resolved["headers"]


def event_variants() -> list[dict[str, Any]]:
    named = api_event("POST", "/v1/models/iris/invocations", body='{"inputs": [[1]]}')
    default = json.loads(json.dumps(named))
    default["requestContext"]["stage"] = "$default"
    default["rawPath"] = "/v1/models/iris/invocations"
    binary = api_event("POST", "/v1/models/iris/invocations", body=b"\x93NUMPY")
    bare = json.loads(json.dumps(named))
    del bare["headers"], bare["body"], bare["isBase64Encoded"]
    mixed_case = api_event("POST", "/x", headers={"X-Latency-Budget-Ms": "20"})
    no_lambda = json.loads(json.dumps(named))
    no_lambda["requestContext"]["authorizer"] = {"jwt": {"claims": {}}}
    null_lambda = json.loads(json.dumps(named))
    null_lambda["requestContext"]["authorizer"] = {"lambda": None}
    anonymous = api_event("GET", "/healthz", principal=None)
    empty = api_event("GET", "/healthz", authorizer_context={})
    return [named, default, binary, bare, mixed_case, no_lambda, null_lambda, anonymous, empty]


def principal_or_error(read: Any) -> Any:
    try:
        return read()
    except GatewayError as error:
        return type(error), error.detail


@pytest.mark.parametrize("event", event_variants())
def test_the_entry_reads_an_event_as_powertools_data_classes_do(event: dict[str, Any]) -> None:
    proxy = APIGatewayProxyEventV2(event)
    assert http_event.path(event) == proxy.path
    assert http_event.stage(event) == proxy.request_context.stage
    assert http_event.method(event) == proxy.request_context.http.method
    assert http_event.request_id(event) == proxy.request_context.request_id
    assert http_event.headers(event) == context.headers(proxy)
    assert http_event.raw_body(event) == context.raw_body(proxy)
    assert principal_or_error(
        lambda: principal_from_context(http_event.authorizer_context(event))
    ) == principal_or_error(lambda: context.principal(proxy))
