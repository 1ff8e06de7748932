"""SageMaker-compatible model containers reached directly (``POST {url}/invocations``): the
same image as a SageMaker endpoint, run on ECS or Kubernetes behind a service URL. Bodies
pass through unchanged, as the SageMaker runtime passes them."""

from __future__ import annotations

import httpx

from gateway.adapters.oip import pooled_client
from gateway.adapters.sagemaker import model_message
from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    SchemaMismatchError,
)
from gateway.models import EndpointTarget
from gateway.values import BackendReply


def invocations_url(target: EndpointTarget) -> str:
    return f"{str(target.url).rstrip('/')}/invocations"


def reply_or_raise(name: str, status: int, content_type: str | None, body: bytes) -> BackendReply:
    """The container's answer as the core's: its 4xx are the client's input problems (the
    model's own words passed on), 429/503 mean full, any other failure is the backend's."""
    if status < 300:
        return BackendReply(body, content_type or "application/json")
    text = model_message(body[:2000].decode("utf-8", "replace"))
    if status in (429, 503):
        raise BackendUnavailableError(f"'{name}' is at capacity ({status}).", retry_after_s=1)
    if 400 <= status < 500:
        raise SchemaMismatchError(text, backend_status=status)
    raise BackendError(f"'{name}' failed with {status}: {text}")


class HttpContainerInvoker:
    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client or pooled_client()

    def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        name = target.endpoint_name
        try:
            response = self._client.post(
                invocations_url(target),
                content=body,
                headers={"content-type": content_type, "accept": accept},
                timeout=max(0.001, timeout_s),
            )
        except httpx.TimeoutException as exc:
            raise BackendTimeoutError(f"'{name}' did not answer within {timeout_s:.2f} s.") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailableError(f"'{name}' is unreachable.", retry_after_s=5) from exc
        return reply_or_raise(
            name, response.status_code, response.headers.get("content-type"), response.content
        )
