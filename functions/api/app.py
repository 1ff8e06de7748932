"""The gateway's HTTP API as a Lambda handler (API Gateway HTTP API, payload 2.0).

Parse, call the core, return: decisions live in ``gateway``, HTTP mapping of errors in
``functions.problems``, wiring in ``functions.bootstrap``."""

from __future__ import annotations

import json
import warnings
from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from functions import bootstrap
from functions.api import openapi
from functions.api.admin_routes import router as admin_router
from functions.api.context import headers as request_headers
from functions.api.context import principal, raw_body
from functions.api.job_routes import router as job_router
from functions.problems import PROBLEM_JSON, problem_body, problem_headers
from gateway import payload
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    MalformedRequestError,
    MethodNotAllowedError,
    NotFoundError,
    all_problem_types,
)
from gateway.hints import parse_hints
from gateway.models import InvocationRequest, ModelSummary

logger = Logger(service="infergw-api")
metrics = Metrics(namespace="infergw", service="gateway")
# Most routes emit no metric; that is expected, not worth a warning per request.
warnings.filterwarnings("ignore", message="No application metrics to publish")
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
# No return annotation on purpose: powertools validates annotated responses, and its
# encoder would decode a binary model output as text.
def invoke(model: str):  # type: ignore[no-untyped-def]
    event = app.current_event
    headers = request_headers(event)
    payload.check_encoding(headers.get("content-encoding"))
    request = InvocationRequest(
        model=model,
        body=raw_body(event),
        content_type=headers.get("content-type", "application/json"),
        accept=headers.get("accept") or "application/json",
        hints=parse_hints(headers),
        correlation_id=event.request_context.request_id,
    )
    outcome = bootstrap.gateway().invoke(principal(event), request)
    route = outcome.decision.backend.value
    _golden_signals(model, route, outcome.status, sum(outcome.timings_ms.values()))
    reason = outcome.decision.reason
    metrics.add_metric(
        "Spillover",
        MetricUnit.Count,
        int(
            route == "serverless"
            and reason in ("realtime-saturated", "realtime-unhealthy", "realtime-too-slow")
        ),
    )
    metrics.add_metric("Fallback", MetricUnit.Count, int(reason.startswith("fallback")))
    metrics.add_metric(
        "BackendColdStart", MetricUnit.Count, int("cold-start" in outcome.timings_ms)
    )
    timing = ", ".join(f"{name};dur={ms:.2f}" for name, ms in outcome.timings_ms.items())
    return Response(
        status_code=outcome.status,
        content_type=outcome.content_type,
        body=outcome.body.decode() if outcome.content_type.endswith("json") else outcome.body,
        headers={
            **outcome.headers,
            "X-Inference-Route": outcome.decision.header(),
            "X-Model-Variant": outcome.decision.variant,
            "X-Model-Version": outcome.model_version,
            "Server-Timing": timing,
        },
    )


@app.get("/v1/usage", summary="The caller's usage per day and model")
def usage(
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
) -> list[dict[str, Any]]:
    return bootstrap.gateway().usage(principal(app.current_event), None, since)


def _golden_signals(model: str, route: str, status: int, latency_ms: float) -> None:
    """EMF: traffic, errors and latency per model and route (saturation is the limiter's
    and the breakers' business, in their own metrics)."""
    metrics.add_dimension("model", model)
    metrics.add_dimension("route", route)
    metrics.add_metric("Requests", MetricUnit.Count, 1)
    metrics.add_metric("Errors", MetricUnit.Count, int(status >= 500))
    metrics.add_metric("Latency", MetricUnit.Milliseconds, latency_ms)


def _problem(error: GatewayError) -> Response[str]:
    return Response(
        status_code=error.status,
        content_type=PROBLEM_JSON,
        body=problem_body(error, instance=app.current_event.path),
        headers=problem_headers(error),
    )


@app.exception_handler(GatewayError)  # type: ignore[untyped-decorator]
def on_gateway_error(error: GatewayError) -> Response[str]:
    path = app.current_event.path
    if path.startswith("/v1/models/") and path.endswith("/invocations"):
        outcome = (
            "limited" if error.status == 429 else "rejected" if error.status < 500 else "failed"
        )
        _golden_signals(path.split("/")[3], outcome, error.status, 0.0)
        metrics.add_metric("Limited", MetricUnit.Count, int(error.status == 429))
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


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
