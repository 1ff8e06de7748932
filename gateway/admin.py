"""Operator use cases: model policies (versioned, optimistic concurrency) and API keys
(issued once, revocable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from gateway.auth import digest_key, key_id_of, new_api_key
from gateway.errors import InvalidPolicyError, MalformedRequestError, NotFoundError
from gateway.models import DEFAULT_TIERS, ModelPolicy
from gateway.ports import KeyStore, PolicyStore
from gateway.values import ApiKeyRecord, Scope


def _now_iso(clock: Callable[[], float]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock()))


class PolicyAdmin:
    def __init__(self, policies: PolicyStore) -> None:
        self._policies = policies

    def list(self) -> list[ModelPolicy]:
        return sorted(self._policies.list(), key=lambda p: p.model)

    def get(self, model: str) -> ModelPolicy:
        policy = self._policies.get(model)
        if policy is None:
            raise NotFoundError(f"There is no policy for '{model}'.", model=model)
        return policy

    def put(self, model: str, document: Any) -> ModelPolicy:
        """Create (``revision`` 0 or absent) or update (``revision`` = the one read)."""
        if not isinstance(document, dict):
            raise MalformedRequestError("A policy must be a JSON object.")
        document = {**document, "model": document.get("model", model)}
        if document["model"] != model:
            raise InvalidPolicyError(
                f"The body names model '{document['model']}' but the path names '{model}'.",
                errors=[{"field": "model", "message": "must match the path"}],
            )
        try:
            # Strict: a JSON false is not a revision, "5" is not an SLO.
            policy = ModelPolicy.model_validate(document, strict=True)
        except ValidationError as exc:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in exc.errors()
            ]
            fields = ", ".join(e["field"] for e in errors)
            raise InvalidPolicyError(f"Invalid policy field(s): {fields}.", errors=errors) from None
        return self._policies.put(policy)

    def delete(self, model: str) -> None:
        self.get(model)
        self._policies.delete(model)


class KeyAdmin:
    def __init__(
        self,
        keys: KeyStore,
        on_revoke: Callable[[str], None] = lambda digest: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._on_revoke = on_revoke
        self._clock = clock

    def create(
        self,
        tenant: str,
        scopes: list[str],
        tier: str = "standard",
        allowed_models: list[str] | None = None,
        environment: str = "test",
    ) -> tuple[str, ApiKeyRecord]:
        """A new key. The plaintext is returned here, once; only its digest is stored."""
        unknown = sorted(set(scopes) - {s.value for s in Scope})
        if unknown or not scopes:
            raise MalformedRequestError(f"Unknown or missing scopes: {unknown or scopes}.")
        if tier not in DEFAULT_TIERS:
            raise MalformedRequestError(f"Unknown tier '{tier}'; one of {sorted(DEFAULT_TIERS)}.")
        if not tenant or len(tenant) > 64:
            raise MalformedRequestError("A tenant name of 1 to 64 characters is required.")
        try:
            key = new_api_key(environment)
        except ValueError as exc:
            raise MalformedRequestError(str(exc)) from None
        digest = digest_key(key)
        record = ApiKeyRecord(
            key_digest=digest,
            key_id=key_id_of(digest),
            tenant=tenant,
            scopes=frozenset(scopes),
            tier=tier,
            allowed_models=None if allowed_models is None else frozenset(allowed_models),
            created_at=_now_iso(self._clock),
        )
        self._keys.put(record)
        return key, record

    def list(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return sorted(self._keys.list(tenant), key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        record = self._keys.find(key_id)
        if record is None:
            raise NotFoundError(f"There is no key '{key_id}'.")
        if record.revoked_at is None:
            record = replace(record, revoked_at=_now_iso(self._clock))
            self._keys.put(record)
        self._on_revoke(record.key_digest)
        return record


def key_summary(record: ApiKeyRecord) -> dict[str, Any]:
    """What an operator may see of a key: never the digest."""
    return {
        "key_id": record.key_id,
        "tenant": record.tenant,
        "scopes": sorted(record.scopes),
        "tier": record.tier,
        "allowed_models": None if record.allowed_models is None else sorted(record.allowed_models),
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "last_used_at": record.last_used_at,
    }
