"""What the invocation route reads from an API Gateway HTTP API event (payload 2.0), read
from the event's dict exactly as powertools' ``APIGatewayProxyEventV2`` reads it: importing
powertools' data classes (every event source's) would cost the API function's cold start
tens of ms for a few dictionary look-ups."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

Event = Mapping[str, Any]


def path(event: Event) -> str:
    """The path without the stage's prefix (``APIGatewayProxyEventV2.path``)."""
    stage = event["requestContext"]["stage"]
    raw_path: str = event["rawPath"]
    return raw_path[len("/" + stage) :] if stage != "$default" else raw_path


def stage(event: Event) -> str:
    return str(event["requestContext"]["stage"])


def method(event: Event) -> str:
    return str(event["requestContext"]["http"]["method"])


def request_id(event: Event) -> str:
    return str(event["requestContext"]["requestId"])


def headers(event: Event) -> dict[str, str]:
    """Names in lower case, as ``functions.api.context.headers``."""
    return {k.lower(): v for k, v in (event.get("headers") or {}).items()}


def raw_body(event: Event) -> bytes:
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def authorizer_context(event: Event) -> Mapping[str, Any] | None:
    """The Lambda authorizer's context: None without an authorizer, ``{}`` with one that
    passed none (as ``functions.api.context.principal`` reads it)."""
    authorizer = event["requestContext"].get("authorizer") or {}
    return (authorizer.get("lambda") or {}) if authorizer else None
