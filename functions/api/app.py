"""The gateway's HTTP API as a Lambda handler (API Gateway HTTP API, payload 2.0).

Parse, call the core, return: decisions live in ``gateway``, HTTP mapping of errors in
``functions.problems``, wiring in ``functions.bootstrap``."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from typing import Annotated, Any
from urllib.parse import unquote

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from functions import bootstrap
from functions.api import invocation, openapi
from functions.api.admin_routes import router as admin_router
from functions.api.context import headers as request_headers
from functions.api.context import principal, raw_body
from functions.api.job_routes import router as job_router
from functions.problems import PROBLEM_JSON, problem_body, problem_headers
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MalformedRequestError,
    MethodNotAllowedError,
    NotFoundError,
    all_problem_types,
)
from gateway.models import ModelSummary

logger = Logger(service="infergw-api")

app = APIGatewayHttpResolver(enable_validation=True)
app.enable_swagger(path="/docs", title="infergw", version="1")
app.include_router(admin_router)
app.include_router(job_router)

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/problems/{slug}"})


@app.get("/healthz", summary="Liveness of the API function")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/openapi.json", summary="This API's OpenAPI document", include_in_schema=False)
def openapi_json() -> Response[Any]:
    return Response(200, "application/json", json.dumps(openapi.document(app)))


@app.get("/problems/<slug>", summary="What a problem type means", include_in_schema=False)
def problem_type(slug: str) -> dict[str, Any]:
    for cls in all_problem_types():
        if cls.slug == slug:
            return {"type": "/problems/" + slug, "title": cls.title, "status": cls.status}
    raise NotFoundError(f"There is no problem type '{slug}'.")


@app.get("/v1/models", summary="Models the caller may use")
def list_models() -> list[ModelSummary]:
    return bootstrap.gateway().list_models(principal(app.current_event))


@app.get("/v1/models/<model>", summary="One model and its policy summary")
def get_model(model: str) -> ModelSummary:
    return bootstrap.gateway().get_model(principal(app.current_event), model)


@app.post(
    "/v1/models/<model>/invocations",
    summary="Invoke a model",
    description=(
        "Runs the model on the body (JSON `inputs`/`instances`, OIP v2 tensors, CSV, NDJSON "
        "or .npy) on the backend the router picks; `X-Inference-Route` says which and why."
    ),
)
# Documents the operation; requests are answered by `invoke_event` before routing (see
# `handler`). No return annotation: powertools would validate, and decode binary output.
def invoke(model: str):  # type: ignore[no-untyped-def]
    return Response(**invoke_event(app.current_event, model))


def invoke_event(event: APIGatewayProxyEventV2, model: str) -> dict[str, Any]:
    """The hot path, free of powertools' per-request state (kept on the resolver class),
    so that one process may serve many invocations at once."""
    started = time.perf_counter()
    try:
        request = invocation.parse_request(
            model, request_headers(event), raw_body(event), event.request_context.request_id
        )
        outcome = bootstrap.gateway().invoke(principal(event), request)
    except GatewayError as error:
        answer = invocation.problem(model, error, event.path, started)
    else:
        answer = invocation.answer(model, outcome, started)
    text = answer.content_type.endswith("json")
    return {
        "status_code": answer.status,
        "content_type": answer.content_type,
        "body": answer.body.decode() if text else answer.body,
        "headers": answer.headers,
    }


@app.get("/v1/usage", summary="The caller's usage per day and model")
def usage(
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
) -> list[dict[str, Any]]:
    return bootstrap.gateway().usage(principal(app.current_event), None, since)


def _problem(error: GatewayError) -> Response[str]:
    return Response(
        status_code=error.status,
        content_type=PROBLEM_JSON,
        body=problem_body(error, instance=app.current_event.path),
        headers=problem_headers(error),
    )


@app.exception_handler(GatewayError)  # type: ignore[untyped-decorator]
def on_gateway_error(error: GatewayError) -> Response[str]:
    return _problem(error)


@app.exception_handler(RequestValidationError)  # type: ignore[untyped-decorator]
def on_validation_error(error: RequestValidationError) -> Response[str]:
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
        for e in error.errors()
    ]
    fields = ", ".join(e["field"] for e in errors)
    if any(e.get("type") == "json_invalid" for e in error.errors()):
        return _problem(MalformedRequestError("The body is not valid JSON.", errors=errors))
    return _problem(InvalidRequestError(f"Invalid request field(s): {fields}.", errors=errors))


@app.not_found
def on_not_found(_: Exception) -> Response[str]:
    event = app.current_event
    allowed = sorted(
        {
            route.method
            for route in app._static_routes + app._dynamic_routes
            if route.rule.match(event.path)
        }
    )
    if allowed:
        response = _problem(
            MethodNotAllowedError(
                f"{event.http_method} is not allowed on {event.path}.", allowed=allowed
            )
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response
    return _problem(NotFoundError(f"No route for {event.http_method} {event.path}."))


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def on_unexpected(error: Exception) -> Response[str]:
    # A bug, never the client's doing: log it whole, tell the client nothing internal.
    logger.exception("unhandled error")
    return _problem(GatewayError("The gateway failed unexpectedly; the error was logged."))


_INVOCATION = re.compile(r"^/v1/models/([^/]+)/invocations$")
# powertools keeps the event being resolved in class-level state: one resolve at a time.
_resolving = threading.Lock()


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    proxy = APIGatewayProxyEventV2(event)
    path = proxy.path
    stage = proxy.request_context.stage
    if stage and stage != "$default" and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1 :]  # as powertools strips a named stage
    match = _INVOCATION.match(path)
    if match and proxy.request_context.http.method == "POST":
        answer = invoke_event(proxy, unquote(match.group(1)))
        body = answer["body"]
        binary = isinstance(body, bytes)
        return {
            "statusCode": answer["status_code"],
            "headers": {"Content-Type": answer["content_type"], **answer["headers"]},
            "body": base64.b64encode(body).decode() if binary else body,
            "isBase64Encoded": binary,
        }
    with _resolving:
        return app.resolve(event, context)
