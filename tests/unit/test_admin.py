"""gateway.admin: policies with optimistic concurrency, API keys issued once and revocable."""

from __future__ import annotations

import calendar
import json
from typing import Any

import pytest

from gateway.admin import KeyAdmin, PolicyAdmin, key_summary
from gateway.auth import ApiKeyAuthenticator, digest_key, key_id_of
from gateway.errors import (
    ConflictError,
    InvalidPolicyError,
    MalformedRequestError,
    NotFoundError,
    UnauthenticatedError,
)
from gateway.models import ModelPolicy
from tests.fakes import FakeClock, FakeKeyStore, FakePolicyStore

NOW = float(calendar.timegm((2026, 3, 14, 15, 9, 26)))
NOW_ISO = "2026-03-14T15:09:26Z"

# --- policies ---------------------------------------------------------------------------


def test_put_creates_then_updates_with_the_revision_read() -> None:
    store = FakePolicyStore()
    admin = PolicyAdmin(store)
    created = admin.put("iris", {"slo_ms": 200})
    assert (created.model, created.slo_ms, created.revision) == ("iris", 200, 1)
    assert store.get("iris") == created
    updated = admin.put("iris", {"slo_ms": 300, "revision": 1})
    assert (updated.slo_ms, updated.revision) == (300, 2)
    assert admin.get("iris") == updated


def test_put_with_a_stale_revision_conflicts_and_keeps_the_stored_policy() -> None:
    admin = PolicyAdmin(FakePolicyStore())
    admin.put("iris", {})
    current = admin.put("iris", {"slo_ms": 300, "revision": 1})
    with pytest.raises(ConflictError) as caught:
        admin.put("iris", {"slo_ms": 400, "revision": 1})  # read before the last update
    assert caught.value.status == 409
    with pytest.raises(ConflictError):
        admin.put("iris", {"slo_ms": 500})  # a create of an existing policy
    with pytest.raises(ConflictError):
        admin.put("ghost", {"revision": 4})  # an update of a missing policy
    assert admin.get("iris") == current


def test_put_takes_the_model_from_the_path_or_a_matching_body() -> None:
    admin = PolicyAdmin(FakePolicyStore())
    assert admin.put("iris", {"model": "iris"}).model == "iris"
    assert admin.put("wine", {}).model == "wine"


def test_a_body_naming_another_model_is_rejected() -> None:
    store = FakePolicyStore()
    with pytest.raises(InvalidPolicyError) as caught:
        PolicyAdmin(store).put("iris", {"model": "wine"})
    assert caught.value.status == 422
    assert caught.value.extensions["errors"] == [
        {"field": "model", "message": "must match the path"}
    ]
    assert "wine" in caught.value.detail and "iris" in caught.value.detail
    assert store.list() == []


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"slo_ms": 0}, "slo_ms"),
        ({"slo_ms": "fast"}, "slo_ms"),
        ({"timeout_ms": 10**9}, "timeout_ms"),
        ({"limiter_failure_mode": "sideways"}, "limiter_failure_mode"),
        ({"revision": -1}, "revision"),
        ({"bogus": True}, "bogus"),
        ({"realtime": {"endpoint_name": ""}}, "realtime.endpoint_name"),
        ({"rate_limit": {"rate_per_s": 0, "burst": 1}}, "rate_limit.rate_per_s"),
        ({"variants": [{"name": "a", "version": "1", "weight": 101}]}, "variants.0.weight"),
    ],
)
def test_an_invalid_document_names_the_field(document: dict[str, Any], field: str) -> None:
    store = FakePolicyStore()
    with pytest.raises(InvalidPolicyError) as caught:
        PolicyAdmin(store).put("iris", document)
    errors = caught.value.extensions["errors"]
    assert [e["field"] for e in errors] == [field]
    assert all(e["message"] for e in errors)
    assert field in caught.value.detail
    assert store.list() == []


def test_every_invalid_field_is_reported() -> None:
    with pytest.raises(InvalidPolicyError) as caught:
        PolicyAdmin(FakePolicyStore()).put("iris", {"slo_ms": 0, "timeout_ms": 0})
    assert {e["field"] for e in caught.value.extensions["errors"]} == {"slo_ms", "timeout_ms"}


def test_an_invalid_model_name_in_the_path_is_an_invalid_policy() -> None:
    with pytest.raises(InvalidPolicyError) as caught:
        PolicyAdmin(FakePolicyStore()).put("Not A Name", {})
    assert [e["field"] for e in caught.value.extensions["errors"]] == ["model"]


@pytest.mark.parametrize("document", [None, [], ["slo_ms", 1], "iris", 3, b"{}"])
def test_a_body_that_is_not_an_object_is_malformed(document: Any) -> None:
    with pytest.raises(MalformedRequestError) as caught:
        PolicyAdmin(FakePolicyStore()).put("iris", document)
    assert caught.value.status == 400


def test_get_and_delete_of_a_missing_policy_are_not_found() -> None:
    store = FakePolicyStore()
    admin = PolicyAdmin(store)
    with pytest.raises(NotFoundError) as caught:
        admin.get("ghost")
    assert caught.value.status == 404
    with pytest.raises(NotFoundError):
        admin.delete("ghost")
    assert store.deleted == []


def test_delete_removes_the_policy() -> None:
    store = FakePolicyStore([ModelPolicy(model="iris"), ModelPolicy(model="wine")])
    admin = PolicyAdmin(store)
    admin.delete("iris")
    assert store.deleted == ["iris"]
    with pytest.raises(NotFoundError):
        admin.get("iris")
    assert [p.model for p in admin.list()] == ["wine"]


def test_list_is_sorted_by_model() -> None:
    admin = PolicyAdmin(FakePolicyStore([ModelPolicy(model=m) for m in ("wine", "iris", "a1")]))
    assert [p.model for p in admin.list()] == ["a1", "iris", "wine"]


# --- keys -------------------------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.store = FakeKeyStore()
        self.clock = FakeClock(NOW)
        self.revoked: list[str] = []
        self.admin = KeyAdmin(self.store, on_revoke=self.revoked.append, clock=self.clock)


def test_create_returns_a_test_key_and_stores_only_its_digest() -> None:
    keys = Keys()
    key, record = keys.admin.create("acme", ["invoke", "jobs"], tier="free")
    assert key.startswith("igw_test_")
    assert record.key_digest == digest_key(key)
    assert record.key_id == key_id_of(record.key_digest)
    assert (record.tenant, record.scopes, record.tier) == ("acme", {"invoke", "jobs"}, "free")
    assert (record.allowed_models, record.created_at, record.revoked_at) == (None, NOW_ISO, None)
    assert keys.store.get(record.key_digest) == record
    stored = keys.store.list()
    assert stored == [record]
    assert key not in repr(stored) and key[len("igw_test_") :] not in repr(stored)


def test_create_live_keys_and_model_allowlists() -> None:
    key, record = Keys().admin.create(
        "acme", ["invoke"], allowed_models=["iris"], environment="live"
    )
    assert key.startswith("igw_live_")
    assert record.allowed_models == frozenset({"iris"})


def test_each_key_is_new() -> None:
    keys = Keys()
    issued = [keys.admin.create("acme", ["invoke"]) for _ in range(5)]
    assert len({key for key, _ in issued}) == 5
    assert len(keys.store.list()) == 5


@pytest.mark.parametrize(
    ("tenant", "scopes", "tier", "environment", "mentions"),
    [
        ("acme", ["invoke", "root"], "standard", "test", "root"),
        ("acme", [], "standard", "test", "scopes"),
        ("acme", ["invoke"], "gold", "test", "gold"),
        ("", ["invoke"], "standard", "test", "tenant"),
        ("x" * 65, ["invoke"], "standard", "test", "tenant"),
        ("acme", ["invoke"], "standard", "prod", "environment"),
    ],
)
def test_create_rejects_bad_input_and_stores_nothing(
    tenant: str, scopes: list[str], tier: str, environment: str, mentions: str
) -> None:
    keys = Keys()
    with pytest.raises(MalformedRequestError) as caught:
        keys.admin.create(tenant, scopes, tier=tier, environment=environment)
    assert mentions in caught.value.detail.lower()
    assert keys.store.list() == []


def test_revoke_marks_the_key_and_tells_on_revoke_its_digest() -> None:
    keys = Keys()
    _, record = keys.admin.create("acme", ["invoke"])
    keys.clock.advance(60)
    revoked = keys.admin.revoke(record.key_id)
    assert revoked.revoked_at == "2026-03-14T15:10:26Z"
    assert keys.store.get(record.key_digest) == revoked
    assert keys.revoked == [record.key_digest]


def test_revoking_twice_is_idempotent() -> None:
    keys = Keys()
    _, record = keys.admin.create("acme", ["invoke"])
    first = keys.admin.revoke(record.key_id)
    keys.clock.advance(3_600)
    second = keys.admin.revoke(record.key_id)
    assert second == first  # the first revocation time is kept
    assert keys.store.get(record.key_digest) == first
    assert keys.revoked == [record.key_digest, record.key_digest]  # caches told again


def test_revoking_an_unknown_key_id_is_not_found() -> None:
    keys = Keys()
    keys.admin.create("acme", ["invoke"])
    with pytest.raises(NotFoundError):
        keys.admin.revoke("key_000000000000")
    assert keys.revoked == []


def test_a_revoked_key_stops_working_at_once_on_this_instance() -> None:
    store, clock = FakeKeyStore(), FakeClock(NOW)
    authenticator = ApiKeyAuthenticator(store, cache_ttl_s=30, clock=clock)
    admin = KeyAdmin(store, on_revoke=authenticator.forget, clock=clock)
    key, record = admin.create("acme", ["invoke"])
    assert authenticator.authenticate(f"Bearer {key}").key_id == record.key_id  # now cached
    admin.revoke(record.key_id)
    with pytest.raises(UnauthenticatedError, match="revoked"):
        authenticator.authenticate(f"Bearer {key}")


def test_list_filters_by_tenant_in_creation_order() -> None:
    keys = Keys()
    _, a1 = keys.admin.create("a", ["invoke"])
    keys.clock.advance(1)
    _, b1 = keys.admin.create("b", ["invoke"])
    keys.clock.advance(1)
    _, a2 = keys.admin.create("a", ["admin"])
    assert keys.admin.list("a") == [a1, a2]
    assert keys.admin.list() == [a1, b1, a2]


def test_key_summary_never_contains_the_digest() -> None:
    keys = Keys()
    key, record = keys.admin.create("acme", ["jobs", "invoke"], allowed_models=["wine", "iris"])
    revoked = keys.admin.revoke(record.key_id)
    for shown in (record, revoked):
        summary = key_summary(shown)
        text = json.dumps(summary)
        assert shown.key_digest not in text and key not in text
        assert "key_digest" not in summary
    assert key_summary(revoked) == {
        "key_id": record.key_id,
        "tenant": "acme",
        "scopes": ["invoke", "jobs"],
        "tier": "standard",
        "allowed_models": ["iris", "wine"],
        "created_at": NOW_ISO,
        "revoked_at": NOW_ISO,
        "last_used_at": None,
    }
