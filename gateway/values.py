"""Plain value objects of the core: principals, key records, requests, decisions, replies.

No pydantic here: the authorizer, which handles only principals and key records, never pays
for importing it (policies, which are validated, are in :mod:`gateway.models`).

What is built for every request (requests, decisions, replies, outcomes, and most such
objects elsewhere on the request path) is not frozen: a frozen dataclass's ``__init__``
sets each field through ``object.__setattr__``, three times the cost of a plain one, and a
request builds a dozen of them. What is cached and shared between requests (principals,
the no-hints default) stays frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Backend(StrEnum):
    REALTIME = "realtime"
    SERVERLESS = "serverless"
    ASYNC = "async"


class Scope(StrEnum):
    INVOKE = "invoke"
    JOBS = "jobs"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, as the authorizer hands it to the API."""

    tenant: str
    key_id: str
    scopes: frozenset[str]
    tier: str = "standard"
    allowed_models: frozenset[str] | None = None  # None: every model the tenant may see

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What is stored for an API key: never the key, only its SHA-256 digest."""

    key_digest: str
    key_id: str
    tenant: str
    scopes: frozenset[str]
    tier: str = "standard"
    allowed_models: frozenset[str] | None = None
    created_at: str = ""
    revoked_at: str | None = None
    last_used_at: str | None = None

    def principal(self) -> Principal:
        return Principal(
            tenant=self.tenant,
            key_id=self.key_id,
            scopes=self.scopes,
            tier=self.tier,
            allowed_models=self.allowed_models,
        )


@dataclass(frozen=True, slots=True)
class RequestHints:
    """What the client asked for beyond the payload."""

    prefer_async: bool = False
    latency_budget_ms: int | None = None
    idempotency_key: str | None = None
    target_variant: str | None = None
    sticky_key: str | None = None  # X-Session-Id: keeps a caller on one variant


@dataclass(slots=True)
class InvocationRequest:
    model: str
    body: bytes
    content_type: str
    accept: str = "application/json"
    hints: RequestHints = field(default_factory=RequestHints)
    correlation_id: str | None = None  # the API request id, carried into async jobs


@dataclass(slots=True)
class RouteDecision:
    backend: Backend
    reason: str
    variant: str = "primary"

    def header(self) -> str:
        return f"{self.backend.value}; reason={self.reason}"


@dataclass(slots=True)
class BackendReply:
    """What a synchronous backend returned."""

    body: bytes
    content_type: str
    variant: str | None = None
    cold_start_ms: float | None = None  # the backend started an instance for this call


@dataclass(slots=True)
class InvocationOutcome:
    status: int
    body: bytes
    content_type: str
    decision: RouteDecision
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
