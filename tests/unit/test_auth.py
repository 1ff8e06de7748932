"""gateway.auth: API keys, the authenticator and its cache, principal <-> context."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth import (
    KEY_PREFIXES,
    ApiKeyAuthenticator,
    bearer_credential,
    digest_key,
    key_id_of,
    new_api_key,
    principal_from_context,
    principal_to_context,
    require_scope,
)
from gateway.errors import ForbiddenError, UnauthenticatedError
from gateway.values import ApiKeyRecord, Principal
from tests.fakes import FakeClock, InMemoryKeyStore, issue_key

TTL = 30.0

# --- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(("environment", "prefix"), [("test", "igw_test_"), ("live", "igw_live_")])
def test_new_api_key_prefix_length_and_alphabet(environment: str, prefix: str) -> None:
    key = new_api_key(environment)
    assert key.startswith(prefix)
    assert key.startswith(KEY_PREFIXES)
    secret = key[len(prefix) :]
    assert len(secret) == 43  # 32 random bytes, base64url without padding
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)


def test_new_api_key_defaults_to_test_keys() -> None:
    assert new_api_key().startswith("igw_test_")


def test_new_api_keys_are_distinct_and_random() -> None:
    keys = {new_api_key() for _ in range(200)}
    assert len(keys) == 200
    # 200 keys x 43 characters over a 64-letter alphabet: nearly every letter shows up.
    letters = set("".join(k[len("igw_test_") :] for k in keys))
    assert len(letters) > 60


@pytest.mark.parametrize("environment", ["prod", "", "LIVE"])
def test_new_api_key_rejects_unknown_environments(environment: str) -> None:
    with pytest.raises(ValueError):
        new_api_key(environment)


def test_digest_is_sha256_hex_and_key_id_is_derived_from_it() -> None:
    key = "igw_test_abc"
    digest = digest_key(key)
    assert digest == hashlib.sha256(b"igw_test_abc").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key_id_of(digest) == "key_" + digest[:12]
    assert key not in key_id_of(digest)


# --- bearer header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        ("Bearer igw_test_abc", "igw_test_abc"),
        ("bearer igw_test_abc", "igw_test_abc"),
        ("BEARER igw_test_abc", "igw_test_abc"),
        ("  Bearer   igw_test_abc  ", "igw_test_abc"),
    ],
)
def test_bearer_credential(header: str, credential: str) -> None:
    assert bearer_credential(header) == credential


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "igw_test_abc",
        "Token igw_test_abc",
        "Bearer " + "x" * 5000,
    ],
)
def test_bearer_credential_rejections_are_401(header: str | None) -> None:
    with pytest.raises(UnauthenticatedError) as raised:
        bearer_credential(header)
    assert raised.value.status == 401


# --- authenticator -------------------------------------------------------------------


@pytest.fixture()
def keys() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def authenticator(keys: InMemoryKeyStore, clock: FakeClock) -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator(keys, cache_ttl_s=TTL, clock=clock)


def test_valid_key_yields_its_principal(
    keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator
) -> None:
    key, record = issue_key(
        keys, "tenant-a", ("invoke", "jobs"), tier="gold", allowed_models=frozenset({"iris"})
    )
    principal = authenticator.authenticate(f"Bearer {key}")
    assert principal == Principal(
        tenant="tenant-a",
        key_id=record.key_id,
        scopes=frozenset({"invoke", "jobs"}),
        tier="gold",
        allowed_models=frozenset({"iris"}),
    )


def test_live_keys_are_accepted_too(
    keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator
) -> None:
    key, _ = issue_key(keys, "tenant-l", environment="live")
    assert authenticator.authenticate(f"Bearer {key}").tenant == "tenant-l"


def test_unknown_key_is_401(authenticator: ApiKeyAuthenticator) -> None:
    with pytest.raises(UnauthenticatedError, match="not valid"):
        authenticator.authenticate(f"Bearer {new_api_key()}")


def test_revoked_key_is_401(keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator) -> None:
    key, record = issue_key(keys)
    keys.put(dataclasses.replace(record, revoked_at="2026-02-01T00:00:00Z"))
    with pytest.raises(UnauthenticatedError, match="revoked"):
        authenticator.authenticate(f"Bearer {key}")


@pytest.mark.parametrize(
    "credential",
    ["sk-live-1234", "eyJhbGciOiJIUzI1NiJ9.e30.sig", "IGW_TEST_abc", "igw_prod_abc"],
)
def test_non_infergw_credentials_are_401_without_a_store_read(
    keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator, credential: str
) -> None:
    with pytest.raises(UnauthenticatedError, match="not an infergw API key"):
        authenticator.authenticate(f"Bearer {credential}")
    assert keys.get_calls == []


def test_missing_header_is_401(authenticator: ApiKeyAuthenticator) -> None:
    with pytest.raises(UnauthenticatedError):
        authenticator.authenticate(None)


def test_answers_are_cached_for_the_ttl(
    keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator, clock: FakeClock
) -> None:
    key, _ = issue_key(keys)
    for _ in range(5):
        authenticator.authenticate(f"Bearer {key}")
        clock.advance(TTL / 10)
    assert len(keys.get_calls) == 1
    clock.advance(TTL)
    authenticator.authenticate(f"Bearer {key}")
    assert len(keys.get_calls) == 2


def test_revocation_takes_effect_when_the_cache_entry_expires(
    keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator, clock: FakeClock
) -> None:
    key, record = issue_key(keys)
    authenticator.authenticate(f"Bearer {key}")
    keys.put(dataclasses.replace(record, revoked_at="2026-02-01T00:00:00Z"))

    clock.advance(TTL - 0.001)
    assert authenticator.authenticate(f"Bearer {key}").tenant == "tenant-a"  # still cached

    clock.advance(0.001)
    with pytest.raises(UnauthenticatedError, match="revoked"):
        authenticator.authenticate(f"Bearer {key}")


def test_forget_makes_revocation_immediate(
    keys: InMemoryKeyStore, authenticator: ApiKeyAuthenticator
) -> None:
    key, record = issue_key(keys)
    authenticator.authenticate(f"Bearer {key}")
    keys.put(dataclasses.replace(record, revoked_at="2026-02-01T00:00:00Z"))
    authenticator.forget(record.key_digest)
    with pytest.raises(UnauthenticatedError, match="revoked"):
        authenticator.authenticate(f"Bearer {key}")


def test_forget_of_an_unknown_digest_is_harmless(authenticator: ApiKeyAuthenticator) -> None:
    authenticator.forget("0" * 64)


class _SloppyKeyStore(InMemoryKeyStore):
    """A store that answers any lookup with its one record (e.g. a prefix index)."""

    def get(self, key_digest: str) -> ApiKeyRecord | None:
        self.get_calls.append(key_digest)
        return next(iter(self._records.values()), None)


def test_the_record_digest_must_equal_the_credential_digest(clock: FakeClock) -> None:
    keys = _SloppyKeyStore()
    key, _ = issue_key(keys)
    authenticator = ApiKeyAuthenticator(keys, cache_ttl_s=TTL, clock=clock)
    with pytest.raises(UnauthenticatedError, match="not valid"):
        authenticator.authenticate(f"Bearer {new_api_key()}")
    assert authenticator.authenticate(f"Bearer {key}").tenant == "tenant-a"


# --- scopes and authorizer context -----------------------------------------------------


def make_principal(**changes: object) -> Principal:
    base = Principal(tenant="tenant-a", key_id="key_0123456789ab", scopes=frozenset({"invoke"}))
    return dataclasses.replace(base, **changes)


def test_require_scope() -> None:
    principal = make_principal(scopes=frozenset({"invoke", "jobs"}))
    require_scope(principal, "invoke")
    require_scope(principal, "jobs")
    with pytest.raises(ForbiddenError, match="'admin' scope") as raised:
        require_scope(principal, "admin")
    assert raised.value.status == 403


@pytest.mark.parametrize(
    "principal",
    [
        make_principal(),
        make_principal(allowed_models=frozenset({"iris", "digits"})),
        make_principal(allowed_models=frozenset()),
        make_principal(scopes=frozenset(), tier="gold"),
        make_principal(scopes=frozenset({"invoke", "jobs", "admin"})),
    ],
    ids=["every-model", "two-models", "no-models", "no-scopes", "all-scopes"],
)
def test_principal_round_trips_through_authorizer_context(principal: Principal) -> None:
    context = principal_to_context(principal)
    assert all(isinstance(v, str) for v in context.values())  # API Gateway context values
    assert principal_from_context(context) == principal


def test_context_models_encoding() -> None:
    assert principal_to_context(make_principal())["models"] == "*"
    assert (
        principal_to_context(make_principal(allowed_models=frozenset({"b", "a"})))["models"]
        == "a,b"
    )


@pytest.mark.parametrize("context", [None, {}, {"tenant": ""}, {"scopes": "invoke"}])
def test_context_without_tenant_is_401(context: dict[str, str] | None) -> None:
    with pytest.raises(UnauthenticatedError):
        principal_from_context(context)


def test_context_defaults_for_missing_fields() -> None:
    principal = principal_from_context({"tenant": "t"})
    assert principal == Principal(
        tenant="t", key_id="", scopes=frozenset(), tier="standard", allowed_models=None
    )


model_names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)


@given(
    tenant=st.text(st.characters(codec="utf-8", exclude_characters=","), min_size=1, max_size=20),
    scopes=st.frozensets(st.sampled_from(["invoke", "jobs", "admin"])),
    models=st.none() | st.frozensets(model_names, max_size=5),
)
def test_principal_round_trip_property(
    tenant: str, scopes: frozenset[str], models: frozenset[str] | None
) -> None:
    principal = make_principal(tenant=tenant, scopes=scopes, allowed_models=models)
    assert principal_from_context(principal_to_context(principal)) == principal
