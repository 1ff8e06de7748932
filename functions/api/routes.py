"""Every route of the HTTP API but the hot one, on powertools' resolver with request
validation, and the OpenAPI document of them all.

Imported by :mod:`functions.api.app` on the first request that is not an invocation: the
resolver and its OpenAPI models are most of the API function's import time."""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query

from functions import bootstrap
from functions.api import openapi
from functions.api.admin_routes import router as admin_router
from functions.api.app import invoke_event, logger
from functions.api.context import principal
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

app = APIGatewayHttpResolver(enable_validation=True)
app.enable_swagger(path="/docs", title="infergw", version="1")
app.include_router(admin_router)
app.include_router(job_router)


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
# `functions.api.app.handler`). No return annotation: powertools would validate, and
# decode binary output.
def invoke(model: str):  # type: ignore[no-untyped-def]
    return Response(**invoke_event(app.current_event.raw_event, model))


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
