"""API keys: issuing, digesting and checking them; principal <-> authorizer context."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import DependencyUnavailableError, ForbiddenError, UnauthenticatedError
from gateway.ports import KeyStore
from gateway.values import ApiKeyRecord, Principal

KEY_PREFIXES = ("igw_live_", "igw_test_")
_KEY_ENTROPY_BYTES = 32  # 256 bits, base64url encoded to 43 characters
_MAX_CREDENTIAL_LENGTH = 4096
MAX_TOKEN_LENGTH = 8192  # an OIDC token with many groups can pass 4 KB


def digest_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key(environment: str = "test") -> str:
    """A fresh key with a recognisable prefix, shown to its owner once and never stored."""
    if environment not in ("live", "test"):
        raise ValueError("environment must be 'live' or 'test'")
    return f"igw_{environment}_{secrets.token_urlsafe(_KEY_ENTROPY_BYTES)}"


def key_id_of(key_digest: str) -> str:
    """A non-secret handle for logs and admin listings."""
    return "key_" + key_digest[:12]


def bearer_credential(authorization: str | None, max_length: int = _MAX_CREDENTIAL_LENGTH) -> str:
    """The credential of an ``Authorization: Bearer ...`` header, or 401."""
    if not authorization:
        raise UnauthenticatedError(
            "Send an API key or a token as 'Authorization: Bearer <credential>'."
        )
    if len(authorization) > max_length:
        raise UnauthenticatedError("The Authorization header is too long.")
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise UnauthenticatedError("The Authorization header must use the Bearer scheme.")
    return credential


class ApiKeyAuthenticator:
    """Checks API keys against the key store, caching answers for ``cache_ttl_s``.

    The cache bounds how long a revoked key keeps working on other instances; revoking
    through :meth:`forget` takes effect at once on this one."""

    def __init__(
        self,
        keys: KeyStore,
        cache_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        touch: Callable[[str, str], None] | None = None,
        stale_s: float = 300.0,
    ) -> None:
        self._keys = keys
        self._stale_s = stale_s
        self._ttl = cache_ttl_s
        self._clock = clock
        self._touch = touch
        self._cache: dict[str, tuple[float, ApiKeyRecord | None]] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        credential = bearer_credential(authorization)
        if not credential.startswith(KEY_PREFIXES):
            raise UnauthenticatedError("The credential is not an infergw API key.")
        digest = digest_key(credential)
        record = self._lookup(digest)
        # The store was searched by digest; compare again in constant time so that
        # a store with a prefix index cannot leak timing about near matches.
        if record is None or not hmac.compare_digest(record.key_digest, digest):
            raise UnauthenticatedError("The API key is not valid.")
        if record.revoked_at is not None:
            raise UnauthenticatedError("The API key has been revoked.")
        return record.principal()

    def forget(self, key_digest: str) -> None:
        self._cache.pop(key_digest, None)

    def _lookup(self, digest: str) -> ApiKeyRecord | None:
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            record = self._keys.get(digest)
        except DependencyUnavailableError:
            # The key store is away: a key known a moment ago still counts, for a while,
            # rather than locking every caller out (a revocation waits for the store).
            if cached is not None and now - cached[0] < self._stale_s:
                return cached[1]
            raise
        if record is not None and self._touch is not None:
            # "Last used" is refreshed once per cache period, off the request path.
            self._touch(record.key_id, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if len(self._cache) > 100_000:  # bounded: garbage keys must not grow memory forever
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, record)
        return record


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise ForbiddenError(f"This credential lacks the '{scope}' scope.")


def principal_to_context(principal: Principal) -> dict[str, Any]:
    """Authorizer context: flat strings, the lowest common denominator of API Gateway."""
    return {
        "tenant": principal.tenant,
        "key_id": principal.key_id,
        "scopes": ",".join(sorted(principal.scopes)),
        "tier": principal.tier,
        "models": "*"
        if principal.allowed_models is None
        else ",".join(sorted(principal.allowed_models)),
    }


def principal_from_context(context: Mapping[str, Any] | None) -> Principal:
    if not context or not context.get("tenant"):
        raise UnauthenticatedError("The request carries no authenticated identity.")
    models = str(context.get("models", "*"))
    return Principal(
        tenant=str(context["tenant"]),
        key_id=str(context.get("key_id", "")),
        scopes=frozenset(s for s in str(context.get("scopes", "")).split(",") if s),
        tier=str(context.get("tier", "standard")),
        allowed_models=None if models == "*" else frozenset(m for m in models.split(",") if m),
    )
