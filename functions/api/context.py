"""What a route needs from the API Gateway event, read the same way by every router."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from gateway.auth import principal_from_context, require_scope
from gateway.errors import MalformedRequestError
from gateway.values import Principal, Scope


def principal(event: APIGatewayProxyEventV2, scope: Scope | None = None) -> Principal:
    authorizer = event.request_context.authorizer
    caller = principal_from_context(authorizer.get_lambda if authorizer else None)
    if scope is not None:
        require_scope(caller, scope)
    return caller


def raw_body(event: APIGatewayProxyEventV2) -> bytes:
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode()


def json_body(event: APIGatewayProxyEventV2) -> Any:
    raw = raw_body(event)
    if not raw:
        raise MalformedRequestError("A JSON body is required.")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedRequestError("The body is not valid JSON.") from None


def headers(event: APIGatewayProxyEventV2) -> dict[str, str]:
    return {k.lower(): v for k, v in (event.headers or {}).items()}
