"""Wiring, once per process (Lambda cold start). Tests build the same objects with fakes
and install them with :func:`use`.

Each part is built when something first needs it, then shared: the API function's first
invocation builds the gateway (not the authenticator: the authorizer function checks
credentials), the authorizer builds the key store and authenticator (and never imports the
core's request path, nor pydantic), and the job service with its S3 client, which only async
jobs use, waits for the first job. Building is a cold start's cost, so what a function never
uses is never built."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from functions import tracing
from gateway.adapters import aws
from gateway.auth import ApiKeyAuthenticator
from gateway.authn import CredentialAuthenticator
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.adapters.dynamodb import DynamoDBKeyStore
    from gateway.admin import KeyAdmin, PolicyAdmin
    from gateway.admission import Admission
    from gateway.jobs import JobService
    from gateway.jwt_auth import JwtAuthenticator
    from gateway.models import EndpointTarget
    from gateway.ports import AsyncEndpointInvoker, EndpointInvoker
    from gateway.service import CachedPolicyStore, Gateway
    from gateway.values import BackendReply


@dataclass
class Services:
    """Everything the handlers call, built once."""

    gateway: Gateway | None = None
    authenticator: CredentialAuthenticator | None = None
    policy_admin: PolicyAdmin | None = None
    key_admin: KeyAdmin | None = None
    admission: Admission | None = None
    revocation_listeners: list[Callable[[str], None]] = field(default_factory=list)


T = TypeVar("T")


class _Part(Generic[T]):
    """A part of :class:`_Wiring`: built on first use, under the wiring's (reentrant) lock
    so that racing first requests (the local front end's threads) share one; afterwards
    read from the instance's ``__dict__``, without the lock (a non-data descriptor)."""

    def __init__(self, build: Callable[[_Wiring], T]) -> None:
        self._build = build
        self._name = build.__name__

    def __get__(self, wiring: _Wiring, owner: type[_Wiring] | None = None) -> T:
        with wiring.lock:
            if self._name not in wiring.__dict__:
                wiring.__dict__[self._name] = self._build(wiring)
            return cast(T, wiring.__dict__[self._name])


class _Lazy:
    """Stands for an object built on its first use: a botocore client (creating one costs
    tens of ms, S3's is the largest service model) or the job service (whose modules an
    invocation never needs), a cold start's cost only if the request needs it."""

    def __init__(self, create: Callable[[], Any]) -> None:
        self._create = create
        self._client: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._create()
        return getattr(self._client, name)


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


def _quietly(future: Future[None]) -> None:
    # Best effort: a failed "last used" write must never reach a caller.
    future.add_done_callback(lambda f: f.exception())


class _Wiring:
    """The services of a deployed function, from its settings. Modules are imported where
    a part is built, for the same reason parts are built late."""

    def __init__(self, config: Settings) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.revocation_listeners: list[Callable[[str], None]] = []

    @_Part
    def dynamodb(self) -> Any:
        return aws.client(
            "dynamodb", read_timeout=3, retries={"mode": "standard", "max_attempts": 2}
        )

    @_Part
    def keys(self) -> DynamoDBKeyStore:
        from gateway.adapters.dynamodb import DynamoDBKeyStore

        return DynamoDBKeyStore(self.dynamodb, self.config.keys_table)

    @_Part
    def policy_store(self) -> CachedPolicyStore:
        from gateway.adapters.dynamodb_policies import DynamoDBPolicyStore
        from gateway.service import CachedPolicyStore

        return CachedPolicyStore(
            DynamoDBPolicyStore(self.dynamodb, self.config.policies_table),
            ttl_s=self.config.policy_cache_ttl_s,
            refresh_ahead=ThreadPoolExecutor(1, thread_name_prefix="policies"),
        )

    @_Part
    def authenticator(self) -> CredentialAuthenticator:
        keys = self.keys
        background = ThreadPoolExecutor(1, thread_name_prefix="touch")
        api_keys = ApiKeyAuthenticator(
            keys,
            cache_ttl_s=self.config.key_cache_ttl_s,
            touch=lambda key_id, when: _quietly(background.submit(keys.touch, key_id, when)),
        )
        authenticator = CredentialAuthenticator(api_keys, _tokens(self.config))
        # A key revoked through this process stops working here at once.
        self.revocation_listeners.insert(0, authenticator.forget)
        return authenticator

    @_Part
    def admission(self) -> Admission | None:
        if not self.config.limits_table:
            return None
        from gateway.adapters.dynamodb_limits import DynamoDBLimitStore
        from gateway.admission import Admission
        from gateway.ratelimit import LeasedLimiter

        return Admission(LeasedLimiter(DynamoDBLimitStore(self.dynamodb, self.config.limits_table)))

    @_Part
    def gateway(self) -> Gateway:
        from gateway.adapters.dynamodb import DynamoDBUsageStore
        from gateway.adapters.sagemaker import SageMakerRuntimeInvoker
        from gateway.dispatch import InvokerByProtocol
        from gateway.service import Gateway
        from gateway.usage import UsageRecorder

        config = self.config
        usage_store = (
            DynamoDBUsageStore(self.dynamodb, config.usage_table) if config.usage_table else None
        )
        invoker = InvokerByProtocol(
            {
                "sagemaker": SageMakerRuntimeInvoker(
                    # One attempt: botocore's retry would wait the whole timeout again.
                    lambda timeout_s: aws.client(
                        "sagemaker-runtime",
                        read_timeout=timeout_s,
                        retries={"total_max_attempts": 1},
                    )
                ),
                "container": _LazyHttpInvoker("container"),
                "oip-v2": _LazyHttpInvoker("oip-v2"),
            }
        )
        # The job service (and its modules) waits for the first job: an invocation's cold
        # start only needs to know that jobs are configured.
        jobs = (
            cast("JobService", _Lazy(lambda: self.jobs))
            if config.jobs_table and config.bucket
            else None
        )
        return Gateway(
            self.policy_store,
            invoker,
            admission=self.admission,
            usage=UsageRecorder(usage_store) if usage_store else None,
            usage_store=usage_store,
            jobs=jobs,
            spans=tracing.spans(),
        )

    @_Part
    def jobs(self) -> JobService:
        from gateway.adapters.dynamodb_jobs import DynamoDBJobStore
        from gateway.adapters.s3 import S3PayloadStore
        from gateway.jobs import JobService

        return JobService(
            DynamoDBJobStore(self.dynamodb, self.config.jobs_table),
            S3PayloadStore(
                _Lazy(
                    lambda: aws.client(
                        "s3", read_timeout=5, retries={"mode": "standard", "max_attempts": 2}
                    )
                ),
                self.config.bucket,
            ),
        )

    @_Part
    def policy_admin(self) -> PolicyAdmin:
        from gateway.admin import PolicyAdmin

        return PolicyAdmin(self.policy_store)

    @_Part
    def key_admin(self) -> KeyAdmin:
        from gateway.admin import KeyAdmin

        listeners = self.revocation_listeners

        def revoked(digest: str) -> None:
            for listener in listeners:
                listener(digest)

        return KeyAdmin(self.keys, on_revoke=revoked)

    def services(self) -> Services:
        return Services(
            gateway=self.gateway,
            authenticator=self.authenticator,
            policy_admin=self.policy_admin,
            key_admin=self.key_admin,
            admission=self.admission,
            revocation_listeners=self.revocation_listeners,
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


_services: Services | None = None  # installed by use(), or every part once services() ran
_wiring: _Wiring | None = None
_wiring_lock = threading.Lock()


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
    global _services, _wiring
    if isinstance(authenticator, ApiKeyAuthenticator):
        authenticator = CredentialAuthenticator(authenticator, None)
    if services is None and (gateway is not None or authenticator is not None):
        services = Services(gateway=gateway, authenticator=authenticator)
    _services = services
    _wiring = None


def _wired() -> _Wiring:
    global _wiring
    if _wiring is None:
        with _wiring_lock:
            if _wiring is None:
                _wiring = _Wiring(settings())
    return _wiring


def build(config: Settings) -> Services:
    """Every part, from ``config``."""
    return _Wiring(config).services()


def services() -> Services:
    """Every part, built (the local front end, the admin routes)."""
    global _services
    if _services is None:
        _services = _wired().services()
    return _services


def gateway() -> Gateway:
    if _services is None:
        return _wired().gateway
    return _present(_services.gateway, "gateway")


def authenticator() -> CredentialAuthenticator:
    if _services is None:
        return _wired().authenticator
    return _present(_services.authenticator, "authenticator")


def policy_admin() -> PolicyAdmin:
    if _services is None:
        return _wired().policy_admin
    return _present(_services.policy_admin, "policy_admin")


def key_admin() -> KeyAdmin:
    if _services is None:
        return _wired().key_admin
    return _present(_services.key_admin, "key_admin")


def _present(value: T | None, name: str) -> T:
    if value is None:
        raise RuntimeError(f"bootstrap: no {name} installed")
    return value


def on_revoke(listener: Callable[[str], None]) -> None:
    """Be told the digest of every key revoked through this process (e.g. to drop a
    front end's cached authorizer verdicts at once)."""
    services().revocation_listeners.append(listener)


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
    from gateway.errors import BackendUnavailableError

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
