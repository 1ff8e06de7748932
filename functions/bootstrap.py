"""Wiring, once per process (Lambda cold start). Tests build the same objects with fakes
and install them with :func:`use`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, TypeVar

from functions import tracing
from gateway.adapters import aws
from gateway.adapters.dynamodb import DynamoDBKeyStore, DynamoDBPolicyStore, DynamoDBUsageStore
from gateway.adapters.dynamodb_jobs import DynamoDBJobStore
from gateway.adapters.dynamodb_limits import DynamoDBLimitStore
from gateway.adapters.s3 import S3PayloadStore
from gateway.adapters.sagemaker import SageMakerRuntimeInvoker
from gateway.admin import KeyAdmin, PolicyAdmin
from gateway.admission import Admission
from gateway.auth import ApiKeyAuthenticator
from gateway.authn import CredentialAuthenticator
from gateway.dispatch import InvokerByProtocol
from gateway.errors import BackendUnavailableError
from gateway.jobs import JobService
from gateway.models import BackendReply, EndpointTarget
from gateway.ports import AsyncEndpointInvoker, EndpointInvoker
from gateway.ratelimit import LeasedLimiter
from gateway.service import CachedPolicyStore, Gateway
from gateway.settings import Settings
from gateway.usage import UsageRecorder

if TYPE_CHECKING:
    from gateway.jwt_auth import JwtAuthenticator


@dataclass
class Services:
    """Everything the handlers call, built once."""

    gateway: Gateway | None = None
    authenticator: CredentialAuthenticator | None = None
    policy_admin: PolicyAdmin | None = None
    key_admin: KeyAdmin | None = None
    admission: Admission | None = None
    revocation_listeners: list[Callable[[str], None]] = field(default_factory=list)


_services: Services | None = None
T = TypeVar("T")


@cache
def settings() -> Settings:
    return Settings.from_environ()


def use(
    services: Services | None = None,
    *,
    gateway: Gateway | None = None,
    authenticator: CredentialAuthenticator | None = None,
) -> None:
    """Install ready-made services (tests with fakes, embedding); no argument resets."""
    global _services
    if isinstance(authenticator, ApiKeyAuthenticator):
        authenticator = CredentialAuthenticator(authenticator, None)
    if services is None and (gateway is not None or authenticator is not None):
        services = Services(gateway=gateway, authenticator=authenticator)
    _services = services


def services() -> Services:
    global _services
    if _services is None:
        _services = build(settings())
    return _services


def gateway() -> Gateway:
    return _present(services().gateway, "gateway")


def authenticator() -> CredentialAuthenticator:
    return _present(services().authenticator, "authenticator")


def policy_admin() -> PolicyAdmin:
    return _present(services().policy_admin, "policy_admin")


def key_admin() -> KeyAdmin:
    return _present(services().key_admin, "key_admin")


def _present(value: T | None, name: str) -> T:
    if value is None:
        raise RuntimeError(f"bootstrap: no {name} installed")
    return value


def on_revoke(listener: Callable[[str], None]) -> None:
    """Be told the digest of every key revoked through this process (e.g. to drop a
    front end's cached authorizer verdicts at once)."""
    services().revocation_listeners.append(listener)


class _LazyHttpInvoker:
    """httpx is imported on the first call to a model server by URL, not at cold start."""

    def __init__(self, protocol: str) -> None:
        self._protocol = protocol
        self._inner: EndpointInvoker | None = None

    def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        if self._inner is None:
            from gateway.adapters.container import HttpContainerInvoker
            from gateway.adapters.oip import HttpOipInvoker

            self._inner = HttpOipInvoker() if self._protocol == "oip-v2" else HttpContainerInvoker()
        return self._inner.invoke(target, body, content_type, accept, timeout_s)


@cache
def async_invoker() -> AsyncEndpointInvoker:
    """The event loop's invokers (the container front end): SageMaker runtime requests
    signed with the process's AWS credentials, at the endpoint botocore would use."""
    from gateway.adapters.async_invokers import (
        AsyncContainerInvoker,
        AsyncOipInvoker,
        AsyncSageMakerRuntimeInvoker,
    )
    from gateway.adapters.sigv4 import Credentials, SigV4Signer
    from gateway.dispatch import AsyncInvokerByProtocol

    runtime = aws.client("sagemaker-runtime")
    provider = aws.session().get_credentials()

    def credentials() -> Credentials:
        if provider is None:
            raise BackendUnavailableError("No AWS credentials to sign with.", retry_after_s=30)
        frozen = provider.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    signer = SigV4Signer(
        credentials, runtime.meta.region_name, runtime.meta.service_model.signing_name
    )
    return AsyncInvokerByProtocol(
        {
            "sagemaker": AsyncSageMakerRuntimeInvoker(runtime.meta.endpoint_url, signer),
            "container": AsyncContainerInvoker(),
            "oip-v2": AsyncOipInvoker(),
        }
    )


def _tokens(config: Settings) -> JwtAuthenticator | None:
    if not config.jwks_url:
        return None
    from gateway.adapters.jwks import HttpJwksSource  # httpx, only when tokens are on
    from gateway.jwt_auth import JwksCache, JwtAuthenticator, JwtSettings

    settings = JwtSettings(
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        jwks_url=config.jwks_url,
        algorithms=config.jwt_algorithms,
        tenant_claim=config.jwt_tenant_claim,
    )
    return JwtAuthenticator(settings, JwksCache(HttpJwksSource(config.jwks_url), settings))


def _quietly(future: Future[None]) -> None:
    # Best effort: a failed "last used" write must never reach a caller.
    future.add_done_callback(lambda f: f.exception())


def build(config: Settings) -> Services:
    dynamodb = aws.client(
        "dynamodb", read_timeout=3, retries={"mode": "standard", "max_attempts": 2}
    )
    policy_store = CachedPolicyStore(
        DynamoDBPolicyStore(dynamodb, config.policies_table),
        ttl_s=config.policy_cache_ttl_s,
        refresh_ahead=ThreadPoolExecutor(1, thread_name_prefix="policies"),
    )
    keys = DynamoDBKeyStore(dynamodb, config.keys_table)
    background = ThreadPoolExecutor(1, thread_name_prefix="touch")
    api_keys = ApiKeyAuthenticator(
        keys,
        cache_ttl_s=config.key_cache_ttl_s,
        touch=lambda key_id, when: _quietly(background.submit(keys.touch, key_id, when)),
    )
    admission = (
        Admission(LeasedLimiter(DynamoDBLimitStore(dynamodb, config.limits_table)))
        if config.limits_table
        else None
    )
    usage_store = DynamoDBUsageStore(dynamodb, config.usage_table) if config.usage_table else None
    invoker = InvokerByProtocol(
        {
            "sagemaker": SageMakerRuntimeInvoker(
                # One attempt: botocore's retry would wait the whole timeout again.
                lambda timeout_s: aws.client(
                    "sagemaker-runtime", read_timeout=timeout_s, retries={"total_max_attempts": 1}
                )
            ),
            "container": _LazyHttpInvoker("container"),
            "oip-v2": _LazyHttpInvoker("oip-v2"),
        }
    )
    jobs = (
        JobService(
            DynamoDBJobStore(dynamodb, config.jobs_table),
            S3PayloadStore(
                aws.client("s3", read_timeout=5, retries={"mode": "standard", "max_attempts": 2}),
                config.bucket,
            ),
        )
        if config.jobs_table and config.bucket
        else None
    )
    gateway = Gateway(
        policy_store,
        invoker,
        admission=admission,
        usage=UsageRecorder(usage_store) if usage_store else None,
        usage_store=usage_store,
        jobs=jobs,
        spans=tracing.spans(),
    )
    authenticator = CredentialAuthenticator(api_keys, _tokens(config))
    listeners: list[Callable[[str], None]] = [authenticator.forget]

    def revoked(digest: str) -> None:
        for listener in listeners:
            listener(digest)

    return Services(
        gateway=gateway,
        authenticator=authenticator,
        policy_admin=PolicyAdmin(policy_store),
        key_admin=KeyAdmin(keys, on_revoke=revoked),
        admission=admission,
        revocation_listeners=listeners,
    )
