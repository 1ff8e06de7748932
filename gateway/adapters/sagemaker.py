"""SageMaker runtime ``InvokeEndpoint`` as the core's ``EndpointInvoker``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    SchemaMismatchError,
)
from gateway.models import EndpointTarget
from gateway.values import BackendReply

ClientFactory = Callable[[float], Any]


class SageMakerRuntimeInvoker:
    """Calls ``sagemaker-runtime`` with one pooled client per timeout bucket (and no
    retries: the dispatcher decides what to try next), so a request never waits on the
    socket much longer than its budget."""

    def __init__(self, client_for_timeout: ClientFactory) -> None:
        self._factory = client_for_timeout
        self._clients: dict[float, Any] = {}

    def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply:
        client = self._client(timeout_s)
        try:
            response = client.invoke_endpoint(
                EndpointName=target.endpoint_name,
                Body=body,
                ContentType=content_type,
                Accept=accept,
            )
            data = response["Body"].read()
        except ReadTimeoutError as exc:
            raise BackendTimeoutError(
                f"Endpoint '{target.endpoint_name}' did not answer within {timeout_s:.1f} s."
            ) from exc
        except (EndpointConnectionError, ConnectionClosedError) as exc:
            raise BackendUnavailableError(
                f"Endpoint '{target.endpoint_name}' is unreachable.", retry_after_s=5
            ) from exc
        except ClientError as exc:
            raise _translate(target.endpoint_name, exc) from exc
        except BotoCoreError as exc:
            raise BackendUnavailableError(
                f"Endpoint '{target.endpoint_name}' failed: {type(exc).__name__}.",
                retry_after_s=5,
            ) from exc
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        cold = headers.get("x-infergw-cold-start-ms")  # the local serverless emulator's
        return BackendReply(
            body=data,
            content_type=response.get("ContentType", "application/json"),
            variant=response.get("InvokedProductionVariant"),
            cold_start_ms=float(cold) if cold else None,
        )

    def _client(self, timeout_s: float) -> Any:
        # Quarter seconds up to 5 s, whole seconds beyond: a request's budget is kept
        # within 250 ms without a client per distinct timeout.
        if timeout_s <= 5:
            bucket = max(0.25, math.ceil(timeout_s * 4) / 4)
        else:
            bucket = float(math.ceil(timeout_s))
        client = self._clients.get(bucket)
        if client is None:
            client = self._clients[bucket] = self._factory(bucket)
        return client


def _translate(endpoint: str, exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    return translate_error(
        endpoint,
        error.get("Code", ""),
        error.get("Message", ""),
        exc.response.get("OriginalStatusCode"),
        exc.response.get("OriginalMessage"),
    )


def translate_error(
    endpoint: str,
    code: str,
    message: str,
    original_status: object = None,
    original_message: str | None = None,
) -> Exception:
    """A SageMaker runtime error (code, message and ModelError's members) as the core's."""
    if code == "ModelError":
        original_message = original_message or message
        if isinstance(original_status, int) and 400 <= original_status < 500:
            return SchemaMismatchError(
                model_message(original_message), backend_status=original_status
            )
        return BackendError(f"The model failed on endpoint '{endpoint}': {original_message}")
    if code == "ThrottlingException":
        return BackendUnavailableError(f"Endpoint '{endpoint}' is at capacity.", retry_after_s=1)
    if code == "ServiceUnavailable":
        return BackendUnavailableError(f"Endpoint '{endpoint}' is unavailable.", retry_after_s=1)
    if code == "ModelNotReadyException":
        return BackendUnavailableError(f"Endpoint '{endpoint}' is not ready.", retry_after_s=5)
    if code == "ValidationError" and "not found" in message.lower():
        return BackendUnavailableError(f"Endpoint '{endpoint}' does not exist.", retry_after_s=30)
    return BackendError(f"Endpoint '{endpoint}' failed with {code or 'an error'}: {message}")


def model_message(raw: str) -> str:
    """The model server's own error text, when it sent a problem document."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("error") or doc.get("message") or raw)
    return raw
