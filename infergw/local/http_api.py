"""API Gateway HTTP API, locally: real HTTP requests become payload-2.0 events for the
same authorizer and API handlers that ``template.yaml`` deploys.

Like API Gateway it caches authorizer verdicts per Authorization header, enforces the
10 MB body limit and skips the authorizer on public routes. Unlike API Gateway, whose
authorizer denials are a fixed ``{"message": "Forbidden"}``, it answers problem+json."""

from __future__ import annotations

import base64
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio.to_thread
from starlette.types import Receive, Scope, Send

from functions.api.invocation import Answer
from functions.problems import problem_body, problem_headers
from gateway.errors import (
    DependencyUnavailableError,
    ForbiddenError,
    GatewayError,
    PayloadTooLargeError,
    UnauthenticatedError,
)
from gateway.models import API_GATEWAY_MAX_BYTES

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
# model, headers, body, authorizer context, request id, path -> the answer
NativeRoute = Callable[
    [str, dict[str, str], bytes, dict[str, Any] | None, str, str], Awaitable[Answer]
]
_INVOCATION = re.compile(r"^/v1/models/([^/]+)/invocations$")
_TEXT_TYPES = re.compile(r"^(text/|application/(json|problem\+json|x-ndjson|jsonl|jsonlines))")


@dataclass
class LambdaContext:
    """The attributes of a Lambda context object that handlers and powertools read."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:local:123456789012:function:local"
    deadline: float = 0.0

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


# Request ids: a random per-process prefix and a counter - unique without a getrandom
# call per request (several microseconds on a VM).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()


def _request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _route_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")


class LocalHttpApi:
    def __init__(
        self,
        api: Handler,
        authorizer: Handler,
        public_paths: frozenset[str],
        authorizer_ttl_s: float = 30.0,
        stage: str = "$default",
        local_routes: dict[str, Callable[[], tuple[int, str, bytes]]] | None = None,
        invocations: NativeRoute | None = None,
    ) -> None:
        self._local = local_routes or {}
        self._invocations = invocations
        self._api = api
        self._authorizer = authorizer
        self._public = [_route_pattern(p) for p in public_paths]
        self._is_public: dict[str, bool] = {}  # by path: one lookup, not five regexes
        self._ttl = authorizer_ttl_s
        self._stage = stage
        self._verdicts: dict[str, tuple[float, dict[str, Any]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = _request_id()
        headers = _headers(scope)
        path = scope["path"]
        local = self._local.get(path)
        if local is not None and scope["method"] == "GET":
            # Served by this front end itself (not API Gateway): operator views on loopback.
            status, content_type, body = await anyio.to_thread.run_sync(local)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", content_type.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        try:
            body = await _read_body(receive)
            authorizer_context: dict[str, Any] | None = None
            auth_ms = 0.0
            public = self._is_public.get(path)
            if public is None:
                public = any(p.match(path) for p in self._public)
                if len(self._is_public) > 10_000:  # paths are the client's to choose
                    self._is_public.clear()
                self._is_public[path] = public
            if not public:
                auth_started = time.perf_counter()
                authorizer_context = await self._authorize(headers, scope, request_id)
                auth_ms = (time.perf_counter() - auth_started) * 1000
            match = _INVOCATION.match(path) if self._invocations is not None else None
            if match is not None and scope["method"] == "POST" and self._invocations is not None:
                # The hot path: answered on this event loop, no Lambda event, no thread.
                answer = await self._invocations(
                    unquote(match.group(1)), headers, body, authorizer_context, request_id, path
                )
                named = {k.lower(): v for k, v in answer.headers.items()}
                named["content-type"] = answer.content_type
                await _send(send, answer.status, list(named.items()), answer.body, auth_ms, started)
                return
            event = _event(scope, headers, body, request_id, self._stage, authorizer_context)
            context = LambdaContext("infergw-api", request_id, deadline=time.monotonic() + 29)
            result = await anyio.to_thread.run_sync(self._api, event, context)
            await _send_result(send, result, auth_ms, started)
        except GatewayError as exc:
            await _send_problem(send, exc, path)

    async def _authorize(
        self, headers: dict[str, str], scope: Scope, request_id: str
    ) -> dict[str, Any]:
        identity = headers.get("authorization")
        if not identity:
            # API Gateway answers 401 itself when the identity source is missing.
            raise UnauthenticatedError("Send an API key as 'Authorization: Bearer <key>'.")
        now = time.monotonic()
        cached = self._verdicts.get(identity)
        if cached is None or cached[0] <= now:
            event = {
                "version": "2.0",
                "type": "REQUEST",
                "routeArn": f"arn:aws:execute-api:local:123456789012:local/{self._stage}/"
                f"{scope['method']}{scope['path']}",
                "identitySource": [identity],
                "routeKey": "$default",
                "rawPath": scope["path"],
                "rawQueryString": scope.get("query_string", b"").decode("latin1"),
                "headers": headers,
                "requestContext": {"requestId": request_id, "http": {"method": scope["method"]}},
            }
            context = LambdaContext("infergw-authorizer", request_id, deadline=now + 5)
            verdict = await anyio.to_thread.run_sync(self._authorizer, event, context)
            if len(self._verdicts) > 50_000:
                self._verdicts.clear()
            cached = self._verdicts[identity] = (now + self._ttl, verdict)
        verdict = cached[1]
        if not verdict.get("isAuthorized"):
            context = verdict.get("context", {})
            reason = str(context.get("reason", "Not authorized."))
            if context.get("status") == 503:
                # The authorizer could not decide (its store is away): not a verdict to
                # cache, and not the caller's fault.
                self._verdicts.pop(identity, None)
                raise DependencyUnavailableError(
                    reason, retry_after_s=float(context.get("retry_after_s", 1))
                )
            if context.get("status") == 401:
                raise UnauthenticatedError(reason)
            raise ForbiddenError(reason)
        # Not copied: the native route recognises a caller by its (cached) context object.
        granted: dict[str, Any] = verdict.setdefault("context", {})
        return granted

    def forget_verdicts(self) -> None:
        self._verdicts.clear()


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin1").lower()
        value = raw_value.decode("latin1")
        # API Gateway joins repeated headers with commas.
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > API_GATEWAY_MAX_BYTES:
            raise PayloadTooLargeError(
                f"The body exceeds the API's {API_GATEWAY_MAX_BYTES} byte limit; upload large "
                "inputs as an async job (POST /v1/models/{model}/jobs).",
                limit_bytes=API_GATEWAY_MAX_BYTES,
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _event(
    scope: Scope,
    headers: dict[str, str],
    body: bytes,
    request_id: str,
    stage: str,
    authorizer_context: dict[str, Any] | None,
) -> dict[str, Any]:
    text = _TEXT_TYPES.match(headers.get("content-type", "application/json")) is not None
    if text:
        try:
            body_text, encoded = body.decode("utf-8"), False
        except UnicodeDecodeError:
            body_text, encoded = base64.b64encode(body).decode(), True
    else:
        body_text, encoded = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    client = scope.get("client") or ("127.0.0.1", 0)
    query = scope.get("query_string", b"").decode("latin1")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": scope["path"],
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": _query(query) or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "http": {
                "method": scope["method"],
                "path": scope["path"],
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "sourceIp": client[0],
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": stage,
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": body_text if body else None,
        "isBase64Encoded": encoded if body else False,
    }
    if authorizer_context is not None:
        event["requestContext"]["authorizer"] = {"lambda": authorizer_context}
    return event


def _query(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


async def _send_result(send: Send, result: dict[str, Any], auth_ms: float, started: float) -> None:
    status = int(result.get("statusCode", 200))
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
    headers = [(k.lower(), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((name.lower(), str(v)) for v in values)
    for cookie in result.get("cookies") or []:
        headers.append(("set-cookie", cookie))
    await _send(send, status, headers, body, auth_ms, started)


async def _send(
    send: Send,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    auth_ms: float,
    started: float,
) -> None:
    total_ms = (time.perf_counter() - started) * 1000
    timing = f"auth;dur={auth_ms:.2f}, total;dur={total_ms:.2f}"
    raw = [(b"content-length", str(len(body)).encode())]
    merged = False
    for name, value in headers:
        if name == "server-timing":
            value, merged = f"{timing}, {value}", True
        raw.append((name.encode(), value.encode()))
    if not merged:
        raw.append((b"server-timing", timing.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_problem(send: Send, error: GatewayError, path: str) -> None:
    body = problem_body(error, instance=path).encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in problem_headers(error).items()]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
