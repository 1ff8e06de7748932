"""Wiring, once per process (Lambda cold start). Tests build the same objects with fakes."""

from __future__ import annotations

from functools import cache

from gateway.adapters import aws
from gateway.adapters.dynamodb import DynamoDBKeyStore, DynamoDBPolicyStore
from gateway.adapters.sagemaker import SageMakerRuntimeInvoker
from gateway.auth import ApiKeyAuthenticator
from gateway.service import CachedPolicyStore, Gateway
from gateway.settings import Settings


@cache
def settings() -> Settings:
    return Settings.from_environ()


_gateway: Gateway | None = None
_authenticator: ApiKeyAuthenticator | None = None


def use(gateway: Gateway | None = None, authenticator: ApiKeyAuthenticator | None = None) -> None:
    """Install ready-made objects (tests with fakes, embedding); ``None`` resets to lazy."""
    global _gateway, _authenticator
    _gateway, _authenticator = gateway, authenticator


def gateway() -> Gateway:
    global _gateway
    if _gateway is None:
        _gateway = build_gateway(settings())
    return _gateway


def authenticator() -> ApiKeyAuthenticator:
    global _authenticator
    if _authenticator is None:
        _authenticator = build_authenticator(settings())
    return _authenticator


def build_gateway(config: Settings) -> Gateway:
    dynamodb = aws.client("dynamodb", read_timeout=3)
    policies = CachedPolicyStore(
        DynamoDBPolicyStore(dynamodb, config.policies_table), ttl_s=config.policy_cache_ttl_s
    )
    invoker = SageMakerRuntimeInvoker(
        lambda timeout_s: aws.client(
            "sagemaker-runtime", read_timeout=timeout_s, retries={"max_attempts": 1}
        )
    )
    return Gateway(policies, invoker)


def build_authenticator(config: Settings) -> ApiKeyAuthenticator:
    keys = DynamoDBKeyStore(aws.client("dynamodb", read_timeout=3), config.keys_table)
    return ApiKeyAuthenticator(keys, cache_ttl_s=config.key_cache_ttl_s)
