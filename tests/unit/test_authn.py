"""gateway.authn: API keys by their prefix, anything else as an OIDC bearer token."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth import ApiKeyAuthenticator
from gateway.authn import CredentialAuthenticator
from gateway.errors import UnauthenticatedError
from gateway.jwt_auth import MAX_TOKEN_LENGTH
from gateway.values import Principal
from tests.fakes import FakeClock, InMemoryKeyStore, issue_key


class FakeAuthenticator:
    """Same surface as ApiKeyAuthenticator / JwtAuthenticator; records what it was given."""

    def __init__(self, tenant: str) -> None:
        self.principal = Principal(tenant=tenant, key_id=tenant, scopes=frozenset({"invoke"}))
        self.seen: list[str | None] = []
        self.forgotten: list[str] = []

    def authenticate(self, authorization: str | None) -> Principal:
        self.seen.append(authorization)
        return self.principal

    def forget(self, key_digest: str) -> None:
        self.forgotten.append(key_digest)


def pair(with_tokens: bool = True) -> tuple[CredentialAuthenticator, Any, Any]:
    keys, tokens = FakeAuthenticator("from-key"), FakeAuthenticator("from-token")
    return CredentialAuthenticator(keys, tokens if with_tokens else None), keys, tokens  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "authorization",
    ["Bearer igw_test_abc", "Bearer igw_live_abc", "bearer igw_test_abc", "Bearer  igw_test_x "],
)
def test_api_keys_go_to_the_api_key_authenticator(authorization: str) -> None:
    authn, keys, tokens = pair()
    assert authn.authenticate(authorization) is keys.principal
    assert keys.seen == [authorization]  # the whole header, as it came
    assert tokens.seen == []


@pytest.mark.parametrize(
    "authorization",
    ["Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", "Bearer opaque-token", "Bearer igw_prod_abc"],
)
def test_other_credentials_go_to_the_jwt_authenticator(authorization: str) -> None:
    authn, keys, tokens = pair()
    assert authn.authenticate(authorization) is tokens.principal
    assert tokens.seen == [authorization]
    assert keys.seen == []


def test_a_long_token_within_the_jwt_limit_is_routed() -> None:
    authn, _, tokens = pair()
    header = "Bearer " + "a" * MAX_TOKEN_LENGTH
    assert authn.authenticate(header) is tokens.principal


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic dXNlcjpwdw==",
        "Bearer",
        "Bearer   ",
        "Bearer " + "a" * (MAX_TOKEN_LENGTH + 64),
    ],
)
def test_missing_or_malformed_headers_are_401_before_routing(authorization: str | None) -> None:
    authn, keys, tokens = pair()
    with pytest.raises(UnauthenticatedError) as caught:
        authn.authenticate(authorization)
    assert caught.value.status == 401
    assert keys.seen == tokens.seen == []


def test_without_a_jwt_authenticator_a_non_key_credential_is_401() -> None:
    authn, keys, _ = pair(with_tokens=False)
    with pytest.raises(UnauthenticatedError) as caught:
        authn.authenticate("Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig")
    assert caught.value.status == 401
    assert "API key" in caught.value.detail
    assert keys.seen == []
    assert authn.authenticate("Bearer igw_test_abc") is keys.principal  # keys still work


def test_forget_reaches_the_api_key_cache() -> None:
    authn, keys, tokens = pair()
    authn.forget("d" * 64)
    assert keys.forgotten == ["d" * 64] and tokens.forgotten == []


def test_with_the_real_api_key_authenticator() -> None:
    store = InMemoryKeyStore()
    key, record = issue_key(store, tenant="acme")
    authn = CredentialAuthenticator(ApiKeyAuthenticator(store, clock=FakeClock()), None)
    assert authn.authenticate(f"Bearer {key}") == record.principal()
    with pytest.raises(UnauthenticatedError):
        authn.authenticate(f"Bearer {key}x")  # an unknown key
