"""Model servers speaking the Open Inference Protocol v2 (KServe, Triton, MLServer):
``POST {url}/v2/models/{name}/infer`` over one pooled keep-alive httpx client.

Requests and answers are translated so that a client sees the same body whichever backend
served it: rows in, ``{"predictions": [...]}`` out."""

from __future__ import annotations

import json
from typing import Any

import httpx

from gateway import payload as payloads
from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    SchemaMismatchError,
)
from gateway.models import EndpointTarget
from gateway.values import BackendReply


def pooled_client() -> httpx.Client:
    """One keep-alive pool for every model server a blocking invoker calls by URL."""
    return httpx.Client(
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64), timeout=30.0
    )


class HttpOipInvoker:
    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client or pooled_client()

    def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        name, path = infer_path(target)
        request = infer_request(body, content_type)
        url = f"{str(target.url).rstrip('/')}{path}"
        try:
            response = self._client.post(
                url,
                content=request,
                headers={"content-type": "application/json"},
                timeout=max(0.001, timeout_s),
            )
        except httpx.TimeoutException as exc:
            raise BackendTimeoutError(f"'{name}' did not answer within {timeout_s:.2f} s.") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailableError(f"'{name}' is unreachable.", retry_after_s=5) from exc
        return reply_or_raise(name, response.status_code, response.content)


def infer_path(target: EndpointTarget) -> tuple[str, str]:
    """The model's name on the server, and the path of its infer route."""
    name = target.oip_model or target.endpoint_name
    return name, f"/v2/models/{name}/infer"


def infer_request(body: bytes, content_type: str) -> bytes:
    """The gateway's rows (JSON, CSV, NDJSON) as one OIP v2 FP32 input tensor."""
    decoded = payloads.decode(body, content_type)
    if decoded.rows is None:
        raise SchemaMismatchError("This backend takes rows (JSON, CSV, NDJSON), not .npy.")
    request = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(decoded.rows), len(decoded.rows[0])],
                "datatype": "FP32",
                "data": [v for row in decoded.rows for v in row],
            }
        ]
    }
    return json.dumps(request, separators=(",", ":")).encode()


def reply_or_raise(name: str, status: int, body: bytes) -> BackendReply:
    if 400 <= status < 500:
        raise SchemaMismatchError(_error_text(body), backend_status=status)
    if status >= 300:
        raise BackendError(f"'{name}' failed with {status}: {_error_text(body)}")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise BackendError(f"'{name}' answered something other than an OIP v2 response.")
    return BackendReply(_as_predictions(doc, name), "application/json")


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace")
    return str(doc.get("error") or doc.get("detail") or doc) if isinstance(doc, dict) else str(doc)


def _as_predictions(doc: dict[str, Any], name: str) -> bytes:
    """OIP outputs (column tensors) to row-oriented predictions."""
    columns: dict[str, list[Any]] = {}
    rows = 0
    for output in doc.get("outputs", []):
        shape = output.get("shape") or [len(output.get("data", []))]
        data = output.get("data", [])
        rows = shape[0]
        width = int(len(data) / rows) if rows else 0
        columns[output["name"]] = (
            data if len(shape) == 1 else [data[i * width : (i + 1) * width] for i in range(rows)]
        )
    predictions = [{k: v[i] for k, v in columns.items()} for i in range(rows)]
    return json.dumps(
        {
            "model": doc.get("model_name", name),
            "version": doc.get("model_version", ""),
            "predictions": predictions,
        },
        separators=(",", ":"),
    ).encode()
