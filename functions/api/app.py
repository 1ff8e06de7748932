"""The gateway's HTTP API as a Lambda handler (API Gateway HTTP API, payload 2.0).

Parse, call the core, return: decisions live in ``gateway``, HTTP mapping of errors in
``functions.problems``, wiring in ``functions.bootstrap``.

This module is the Lambda entry and is kept lean for cold starts: it answers the hot route,
``POST /v1/models/{model}/invocations``, itself, and imports powertools' resolver (every
other route, and the OpenAPI models behind its validation: well over 100 ms of imports)
only when the first other request arrives (:mod:`functions.api.routes`)."""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from functions.coldstart import paused_gc

with paused_gc():  # a cold start's imports: functions/coldstart.py
    from aws_lambda_powertools import Logger
    from aws_lambda_powertools.logging import correlation_paths

    from functions import bootstrap
    from functions.api import http_event, invocation
    from gateway.auth import principal_from_context
    from gateway.errors import GatewayError

logger = Logger(service="infergw-api")

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/problems/{slug}"})


def invoke_event(event: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The hot path, free of powertools' per-request state (kept on the resolver class),
    so that one process may serve many invocations at once. ``event`` is the raw API
    Gateway event; the answer is in the shape of powertools' ``Response`` arguments."""
    started = time.perf_counter()
    try:
        request = invocation.parse_request(
            model,
            http_event.headers(event),
            http_event.raw_body(event),
            http_event.request_id(event),
        )
        principal = principal_from_context(http_event.authorizer_context(event))
        outcome = bootstrap.gateway().invoke(principal, request)
    except GatewayError as error:
        answer = invocation.problem(model, error, http_event.path(event), started)
    else:
        answer = invocation.answer(model, outcome, started)
    text = answer.content_type.endswith("json")
    return {
        "status_code": answer.status,
        "content_type": answer.content_type,
        "body": answer.body.decode() if text else answer.body,
        "headers": answer.headers,
    }


_INVOCATION = re.compile(r"^/v1/models/([^/]+)/invocations$")
# powertools keeps the event being resolved in class-level state: one resolve at a time.
_resolving = threading.Lock()


def _resolve(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Imported on the first request that is not an invocation (Python's import lock makes
    # concurrent first requests wait for the one import).
    from functions.api import routes

    with _resolving:
        return routes.app.resolve(event, context)


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    path = http_event.path(event)
    stage = http_event.stage(event)
    if stage and stage != "$default" and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1 :]  # as powertools strips a named stage
    match = _INVOCATION.match(path)
    if match and http_event.method(event) == "POST":
        answer = invoke_event(event, unquote(match.group(1)))
        body = answer["body"]
        binary = isinstance(body, bytes)
        return {
            "statusCode": answer["status_code"],
            "headers": {"Content-Type": answer["content_type"], **answer["headers"]},
            "body": base64.b64encode(body).decode() if binary else body,
            "isBase64Encoded": binary,
        }
    return _resolve(event, context)
