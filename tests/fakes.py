"""In-memory implementations of the core's ports (``gateway.ports``) for fast tests.

They keep the contracts of the real adapters (``gateway.adapters``) that the core relies on,
most importantly the optimistic concurrency of the DynamoDB policy store."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.auth import digest_key, key_id_of, new_api_key
from gateway.errors import ConflictError
from gateway.models import ApiKeyRecord, BackendReply, EndpointTarget, ModelPolicy


class InMemoryPolicyStore:
    """``PolicyStore`` in a dict. ``put`` behaves like ``DynamoDBPolicyStore.put``: a policy
    read at revision 0 may only create, any other revision must match the stored one, and
    the stored copy (which ``put`` returns) carries ``revision + 1``."""

    def __init__(self, policies: Iterable[ModelPolicy] = ()) -> None:
        self._policies: dict[str, ModelPolicy] = {}
        self.get_calls: list[str] = []
        self.list_calls = 0
        for policy in policies:
            self.put(policy)

    def get(self, model: str) -> ModelPolicy | None:
        self.get_calls.append(model)
        return self._policies.get(model)

    def list(self) -> list[ModelPolicy]:
        self.list_calls += 1
        return list(self._policies.values())

    def put(self, policy: ModelPolicy) -> ModelPolicy:
        current = self._policies.get(policy.model)
        if policy.revision == 0:
            if current is not None:
                raise ConflictError(f"Policy '{policy.model}' already exists.", model=policy.model)
        elif current is None or current.revision != policy.revision:
            raise ConflictError(
                f"Policy '{policy.model}' changed since revision {policy.revision} was read.",
                model=policy.model,
            )
        stored = policy.model_copy(update={"revision": policy.revision + 1})
        self._policies[stored.model] = stored
        return stored


class InMemoryKeyStore:
    """``KeyStore`` in a dict keyed by ``key_digest``; counts reads so tests can see caching."""

    def __init__(self, records: Iterable[ApiKeyRecord] = ()) -> None:
        self._records: dict[str, ApiKeyRecord] = {r.key_digest: r for r in records}
        self.get_calls: list[str] = []

    def get(self, key_digest: str) -> ApiKeyRecord | None:
        self.get_calls.append(key_digest)
        return self._records.get(key_digest)

    def put(self, record: ApiKeyRecord) -> None:
        self._records[record.key_digest] = record


def issue_key(
    store: InMemoryKeyStore,
    tenant: str = "tenant-a",
    scopes: Iterable[str] = ("invoke",),
    *,
    tier: str = "standard",
    allowed_models: frozenset[str] | None = None,
    environment: str = "test",
) -> tuple[str, ApiKeyRecord]:
    """A fresh API key stored (as its digest) in ``store``: ``(key, record)``."""
    key = new_api_key(environment)
    digest = digest_key(key)
    record = ApiKeyRecord(
        key_digest=digest,
        key_id=key_id_of(digest),
        tenant=tenant,
        scopes=frozenset(scopes),
        tier=tier,
        allowed_models=allowed_models,
        created_at="2026-01-01T00:00:00Z",
    )
    store.put(record)
    return key, record


@dataclass(frozen=True)
class InvokeCall:
    target: EndpointTarget
    body: bytes
    content_type: str
    accept: str
    timeout_s: float


@dataclass
class RecordingInvoker:
    """``EndpointInvoker`` that records every call, then runs ``side_effect`` (if any),
    then raises ``error`` if set, else returns ``reply``."""

    reply: BackendReply = field(
        default_factory=lambda: BackendReply(b'{"outputs": [[0.5]]}', "application/json")
    )
    error: BaseException | None = None
    side_effect: Callable[[], None] | None = None
    calls: list[InvokeCall] = field(default_factory=list)

    def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply:
        self.calls.append(InvokeCall(target, body, content_type, accept, timeout_s))
        if self.side_effect is not None:
            self.side_effect()
        if self.error is not None:
            raise self.error
        return self.reply


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
