"""Policies: what the gateway knows about each model, validated (pydantic). The plain value
objects (principals, requests, decisions) are in :mod:`gateway.values`.

No ``from __future__ import annotations`` here: pydantic would evaluate every field's
annotation from its string, some 1 ms of the cold start that builds these models."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.values import Backend, Scope

MiB = 1024 * 1024
# Hard ceilings of the managed services; a policy may only set lower limits.
REALTIME_MAX_BYTES = 6 * MiB
SERVERLESS_MAX_BYTES = 4 * MiB
API_GATEWAY_MAX_BYTES = 10 * MiB

ModelName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class EndpointTarget(BaseModel):
    """A synchronous model endpoint: a SageMaker endpoint (by name, through the SageMaker
    runtime API), a SageMaker-compatible model container reached directly at ``url``
    (``POST {url}/invocations``, e.g. the same image on ECS or Kubernetes), or an OIP v2
    model server at ``url``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_name: Annotated[str, Field(min_length=1, max_length=63)]
    protocol: Literal["sagemaker", "container", "oip-v2"] = "sagemaker"
    url: str | None = None  # base URL of the model server (protocols container, oip-v2)
    oip_model: str | None = None  # the model's name on that server (default: endpoint_name)
    capacity: Annotated[int, Field(ge=1, le=10_000)] = 8  # in flight before it is saturated
    expected_latency_ms: Annotated[float, Field(gt=0)] = 50.0  # until measured
    # Serverless: idle longer than this and the next call pays cold_start_ms.
    idle_timeout_s: Annotated[float, Field(gt=0)] | None = None
    cold_start_ms: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _oip_needs_url(self) -> "EndpointTarget":
        if self.protocol != "sagemaker" and not self.url:
            raise ValueError(f"a {self.protocol} endpoint needs a url")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be http(s)")
        return self


class RateLimitSpec(BaseModel):
    """A token bucket: ``rate_per_s`` sustained, ``burst`` at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: Annotated[float, Field(gt=0, le=1_000_000)]
    burst: Annotated[int, Field(ge=1, le=10_000_000)]


class Tier(BaseModel):
    """What a key's rate-limit tier grants: per key, per tenant, per day."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: RateLimitSpec
    tenant: RateLimitSpec
    daily_quota: Annotated[int, Field(ge=1)] | None = None


DEFAULT_TIERS: dict[str, Tier] = {
    "free": Tier(
        key=RateLimitSpec(rate_per_s=2, burst=5),
        tenant=RateLimitSpec(rate_per_s=5, burst=10),
        daily_quota=1_000,
    ),
    "standard": Tier(
        key=RateLimitSpec(rate_per_s=50, burst=100),
        tenant=RateLimitSpec(rate_per_s=100, burst=200),
        daily_quota=1_000_000,
    ),
    "premium": Tier(
        key=RateLimitSpec(rate_per_s=100_000, burst=200_000),
        tenant=RateLimitSpec(rate_per_s=100_000, burst=200_000),
    ),
}


class Variant(BaseModel):
    """A model version served by its own endpoints, taking ``weight`` of the traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,63}$")]
    version: Annotated[str, Field(min_length=1, max_length=32)]
    weight: Annotated[float, Field(ge=0, le=100)] = 0
    realtime: EndpointTarget | None = None
    serverless: EndpointTarget | None = None


class InputSchema(BaseModel):
    """What a model accepts: rows of ``features`` numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: Annotated[int, Field(ge=1, le=1_000_000)]
    dtype: Literal["float32"] = "float32"


class ModelPolicy(BaseModel):
    """Everything the gateway needs to know to serve one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelName
    version: Annotated[str, Field(min_length=1, max_length=32)] = "1"
    description: str = ""
    slo_ms: Annotated[int, Field(ge=1, le=3_600_000)] = 1000
    timeout_ms: Annotated[int, Field(ge=1, le=900_000)] = 30_000
    sync_max_bytes: Annotated[int, Field(ge=1, le=API_GATEWAY_MAX_BYTES)] = REALTIME_MAX_BYTES
    realtime: EndpointTarget | None = None
    serverless: EndpointTarget | None = None
    async_enabled: bool = False
    max_async_bytes: Annotated[int, Field(ge=1, le=1024 * MiB)] = 1024 * MiB
    allowed_tenants: list[str] = Field(default_factory=lambda: ["*"])
    input: InputSchema | None = None
    rate_limit: RateLimitSpec | None = None  # per tenant, on this model
    max_concurrency: Annotated[int, Field(ge=1)] | None = None  # in flight, per gateway instance
    limiter_failure_mode: Literal["open", "closed"] = "open"
    # Not default_factory=list: pydantic reads a factory's signature, and a builtin's costs
    # the cold start that first validates a policy some 3 ms (compiling tokenize's regex).
    variants: list[Variant] = Field(default_factory=lambda: [])
    shadow: Variant | None = None
    allow_variant_override: bool = False
    aliases: dict[str, str] = Field(default_factory=dict)  # e.g. champion -> "3"
    revision: Annotated[int, Field(ge=0)] = 0

    def visible_to(self, tenant: str) -> bool:
        return "*" in self.allowed_tenants or tenant in self.allowed_tenants


class NewKey(BaseModel):
    """An operator's request for an API key."""

    # Built at its first use, not at import: an invocation's cold start never needs it.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    tenant: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    scopes: Annotated[list[Scope], Field(min_length=1)] = Field(
        default_factory=lambda: [Scope.INVOKE]
    )
    tier: Literal["free", "standard", "premium"] = "standard"
    allowed_models: list[str] | None = None
    environment: Literal["test", "live"] = "test"


class ModelSummary(BaseModel):
    """The part of a policy a caller may see."""

    model_config = ConfigDict(defer_build=True)  # as NewKey's

    model: str
    version: str
    description: str
    slo_ms: int
    sync_max_bytes: int
    backends: list[Backend]
    input: InputSchema | None

    @classmethod
    def of(cls, policy: ModelPolicy) -> "ModelSummary":
        backends = [
            b
            for b, present in (
                (Backend.REALTIME, policy.realtime is not None),
                (Backend.SERVERLESS, policy.serverless is not None),
                (Backend.ASYNC, policy.async_enabled),
            )
            if present
        ]
        return cls(
            model=policy.model,
            version=policy.version,
            description=policy.description,
            slo_ms=policy.slo_ms,
            sync_max_bytes=policy.sync_max_bytes,
            backends=backends,
            input=policy.input,
        )
