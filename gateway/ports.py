"""What the core needs from the outside world. Adapters implement these; tests fake them."""

from __future__ import annotations

from typing import Protocol

from gateway.models import ApiKeyRecord, BackendReply, EndpointTarget, ModelPolicy


class PolicyStore(Protocol):
    def get(self, model: str) -> ModelPolicy | None: ...

    def list(self) -> list[ModelPolicy]: ...

    def put(self, policy: ModelPolicy) -> ModelPolicy: ...


class KeyStore(Protocol):
    def get(self, key_digest: str) -> ApiKeyRecord | None: ...

    def put(self, record: ApiKeyRecord) -> None: ...


class EndpointInvoker(Protocol):
    """Invokes a synchronous model endpoint. Raises ``BackendError``,
    ``BackendUnavailableError``, ``BackendTimeoutError`` or ``SchemaMismatchError``."""

    def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply: ...
