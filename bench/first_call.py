"""A cold start's first request, for bench/cold_start.py: one event per handler, and AWS
answered in-process (a botocore ``before-send`` hook), so that the first call runs exactly
the code a deployed function's first call runs (clients created, requests built, signed and
parsed) without a network.

Imported by the probe before its clock starts: nothing here may import what a handler
imports (botocore is imported by the hook only, once the handler has loaded it)."""

from __future__ import annotations

import io
import json
import marshal
import time
from typing import Any

TENANT = "tenant-bench"
MODEL = "bench-model"
# A policy as the policies table stores it: realtime only, no input schema.
POLICY = json.dumps({"model": MODEL, "realtime": {"endpoint_name": "bench-realtime"}})
API_KEY = "igw_test_" + "b" * 43
PREDICTIONS = b'{"predictions": [1]}'


def reference_ms(times: int) -> float:
    """A fixed workload shaped like an import from bytecode - unmarshal a module's code and
    run its body (150 classes, functions and constants) - run ``times`` times: the same work
    in every probe, so its time tells how fast the machine was during that probe."""
    source = "\n".join(
        f"class C{i}:\n    x = {i}\n    def f(self, a, b={i}):\n        return a + b\n"
        f"def g{i}(*args, **kw):\n    return [args, kw, {i}]\n"
        f"T{i} = {{'k': ({i}, 'v{i}')}}"
        for i in range(150)
    )
    blob = marshal.dumps(compile(source, "reference", "exec"))
    started = time.perf_counter()
    for _ in range(times):
        exec(marshal.loads(blob), {})
    return (time.perf_counter() - started) * 1000


class LambdaContext:
    function_name = "infergw-bench"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:infergw-bench"
    function_version = "$LATEST"
    log_group_name = "/aws/lambda/infergw-bench"
    log_stream_name = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def invocation_event() -> dict[str, Any]:
    """``POST /v1/models/{MODEL}/invocations`` on the ``$default`` stage, authorized."""
    path = f"/v1/models/{MODEL}/invocations"
    return {
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "authorization": "Bearer " + API_KEY},
        "body": '{"inputs": [[1.0, 2.0, 3.0, 4.0]]}',
        "isBase64Encoded": False,
        "requestContext": {
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1"},
            "requestId": "bench-request",
            "routeKey": "ANY /{proxy+}",
            "stage": "$default",
            "authorizer": {
                "lambda": {
                    "tenant": TENANT,
                    "key_id": "key_bench",
                    "scopes": "invoke",
                    "tier": "premium",
                    "models": "*",
                }
            },
        },
    }


def authorizer_event() -> dict[str, Any]:
    return {
        "version": "2.0",
        "type": "REQUEST",
        "rawPath": f"/v1/models/{MODEL}/invocations",
        "headers": {"authorization": "Bearer " + API_KEY},
        "requestContext": {"http": {"method": "POST"}, "stage": "$default"},
    }


def check(response: dict[str, Any], **expected: Any) -> None:
    """A first call that failed measured something else: stop the bench."""
    for key, value in expected.items():
        if response.get(key) != value:
            raise SystemExit(f"first call: {key}={response.get(key)!r}, not {value!r}")


def answer_aws(session: Any) -> None:
    """Every request of every client of ``session`` answered here, never sent."""
    session.register("before-send", _answer)


class _Body(io.BytesIO):
    def stream(self, **_: Any) -> Any:  # what botocore reads a response's raw body with
        while chunk := self.read(64 * 1024):
            yield chunk


def _answer(request: Any, **_: Any) -> Any:
    from botocore.awsrequest import AWSResponse

    target = request.headers.get("X-Amz-Target", b"")
    target = target.decode() if isinstance(target, bytes) else str(target)
    if target.startswith("DynamoDB_"):
        body = json.dumps(_dynamodb(target.partition(".")[2], json.loads(request.body))).encode()
        content_type = "application/x-amz-json-1.0"
    elif "/invocations" in request.url:  # SageMaker runtime InvokeEndpoint
        body, content_type = PREDICTIONS, "application/json"
    else:
        raise RuntimeError(f"first call: unexpected AWS request {request.method} {request.url}")
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    return AWSResponse(request.url, 200, headers, _Body(body))


def _dynamodb(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The policy and the key are found; every other table is empty and takes any write."""
    table, key = params.get("TableName"), params.get("Key") or {}
    if operation == "GetItem" and table == "policies":
        return {"Item": {"model": {"S": MODEL}, "revision": {"N": "1"}, "doc": {"S": POLICY}}}
    if operation == "GetItem" and table == "keys":
        digest = key["key_digest"]["S"]
        doc = {"key_id": "key_bench", "tenant": TENANT, "scopes": ["invoke"], "tier": "premium"}
        return {"Item": {"key_digest": {"S": digest}, "doc": {"S": json.dumps(doc)}}}
    return {}
