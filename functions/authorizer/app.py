"""API Gateway HTTP API REQUEST authorizer (payload 2.0, simple responses).

The decision is cached by API Gateway per Authorization header for the stack's
``AuthorizerCacheTtlSeconds``; the principal travels to the API function as context."""

from __future__ import annotations

from typing import Any

from functions.coldstart import paused_gc

with paused_gc():  # a cold start's imports: functions/coldstart.py
    from functions import bootstrap, tracing
    from gateway.auth import principal_to_context
    from gateway.errors import GatewayError


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    headers = event.get("headers") or {}
    try:
        with tracing.spans().span("auth"):
            principal = bootstrap.authenticator().authenticate(headers.get("authorization"))
    except GatewayError as exc:
        # Only the verdict leaves the authorizer; the reason is for the local front end,
        # which renders it as problem+json (API Gateway itself answers a fixed 403).
        context = {"reason": exc.detail, "status": exc.status}
        if exc.retry_after_s is not None:
            context["retry_after_s"] = exc.retry_after_s
        return {"isAuthorized": False, "context": context}
    return {"isAuthorized": True, "context": principal_to_context(principal)}
