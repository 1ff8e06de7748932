"""OIDC bearer tokens: verifying JWTs signed by an identity provider against its JWKS.

The core only sees the JWKS document through the :class:`JwksSource` port; the HTTP adapter
is ``gateway.adapters.jwks.HttpJwksSource``. Defences, in the order a token meets them:

* the token's size is bounded before anything is decoded;
* the header's ``alg`` must be in the configured allowlist of asymmetric algorithms *before*
  any key is looked up, which blocks ``alg=none`` and the "HS256 signed with the public key"
  confusion; the allowlist itself may not contain ``none`` or an ``HS*`` algorithm;
* every key is bound to one algorithm when the JWKS is loaded, and a token may only be
  verified with the algorithm its key is bound to;
* header parameters that point at keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are ignored:
  keys only ever come from the configured JWKS;
* an unknown ``kid`` refreshes the JWKS at most once per ``refresh_cooldown_s``, so random
  ``kid`` values cannot make the gateway hammer the identity provider;
* time claims are checked against an injected clock, with ``leeway_s`` of tolerance.

Every failure is an :class:`UnauthenticatedError` whose detail names the reason and never
contains the token, a claim value or key material."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from gateway.auth import MAX_TOKEN_LENGTH, bearer_credential
from gateway.errors import UnauthenticatedError
from gateway.values import Principal

# Asymmetric JWS algorithms PyJWT implements; a configuration may only choose among these.
SUPPORTED_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "ES256K",
        "EdDSA",
    }
)
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")
KEYS_UNAVAILABLE = "The identity provider's keys are unavailable."

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How tokens of one identity provider are checked and mapped to a :class:`Principal`.

    ``scope_claim`` holds a space-separated string (RFC 8693) or a list of strings; when it
    is absent the ``scp`` claim is read instead. ``refresh_cooldown_s`` is the minimum time
    between two JWKS fetches after the first load; ``cache_ttl_s`` is how long a loaded
    JWKS is used before it is fetched again."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: float = 30.0
    tenant_claim: str = "tenant"
    scope_claim: str = "scope"
    tier_claim: str = "tier"
    refresh_cooldown_s: float = 60.0
    cache_ttl_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("issuer", "audience", "jwks_url", "tenant_claim", "scope_claim"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"JwtSettings.{name} must be a non-empty string.")
        if not isinstance(self.tier_claim, str) or not self.tier_claim:
            raise ValueError("JwtSettings.tier_claim must be a non-empty string.")
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise ValueError("JwtSettings.algorithms must be a non-empty tuple of names.")
        object.__setattr__(self, "algorithms", tuple(self.algorithms))  # a list, frozen
        for alg in self.algorithms:
            if not isinstance(alg, str):
                raise ValueError("JwtSettings.algorithms must contain strings only.")
            if alg.lower() == "none":
                raise ValueError("The 'none' algorithm may never be accepted.")
            if alg.upper().startswith("HS"):
                raise ValueError(
                    f"Symmetric algorithm '{alg}' is not allowed: tokens must be verified "
                    "with the identity provider's public keys."
                )
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"Unsupported JWT algorithm '{alg}'.")
        if not _finite(self.leeway_s) or not 0 <= self.leeway_s <= 300:
            raise ValueError("JwtSettings.leeway_s must be between 0 and 300 seconds.")
        if not _finite(self.refresh_cooldown_s) or self.refresh_cooldown_s < 0:
            raise ValueError("JwtSettings.refresh_cooldown_s must be >= 0.")
        if not _finite(self.cache_ttl_s) or self.cache_ttl_s <= 0:
            raise ValueError("JwtSettings.cache_ttl_s must be > 0.")


class JwksSource(Protocol):
    """Where the identity provider's JWKS comes from. ``fetch`` returns the parsed JSON
    document (``{"keys": [...]}``) and raises on any failure; :class:`JwksCache` turns
    failures into cached keys or a 401, so the exception type is free."""

    def fetch(self) -> dict[str, Any]: ...


class JwksCache:
    """The identity provider's signing keys by ``kid``, each bound to one algorithm.

    * loaded lazily, on the first token;
    * reloaded once ``cache_ttl_s`` has passed since the last successful load;
    * refreshed when a token names an unknown ``kid`` (a key rotation). Every fetch but
      the first load is a refresh, and refreshes are at least ``refresh_cooldown_s``
      apart. The first load does not start the cooldown, so a key rotated in just after
      start-up is picked up on first use;
    * a failed fetch (network, status, bad document) keeps the keys already loaded; only
      when there are none does the caller get a 401 (:data:`KEYS_UNAVAILABLE`).

    Keys are ignored when they have no ``kid``, a ``use`` other than ``sig``, ``key_ops``
    without ``verify``, an ``alg`` outside the allowlist, parameters that do not fit the
    algorithm, or a size below PyJWT's minimum (RSA < 2048 bits). A key without ``alg`` is
    bound to every allowed algorithm its type and curve fit (an RSA key to RS256 and PS256,
    say). ``clock`` is monotonic seconds; thread-safe."""

    def __init__(
        self,
        source: JwksSource,
        settings: JwtSettings,
        clock: Clock = time.monotonic,
    ) -> None:
        self._source = source
        self._algorithms = tuple(sorted(set(settings.algorithms)))
        self._ttl = settings.cache_ttl_s
        self._cooldown = settings.refresh_cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: Mapping[str, Mapping[str, jwt.PyJWK]] | None = None  # None: none loaded
        self._loaded_at = 0.0
        self._first_fetch_done = False
        self._last_refresh_at: float | None = None
        self._fetch_count = 0
        self.last_error: str | None = None  # type of the last fetch failure, for operators

    @property
    def fetch_count(self) -> int:
        """How many times the source was asked for the JWKS (successfully or not)."""
        return self._fetch_count

    def key_for(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key ``kid`` bound to ``alg``, or :class:`UnauthenticatedError`."""
        keys = self._keys
        if keys is not None and not self._stale(self._clock()):
            found = keys.get(kid, {}).get(alg)
            if found is not None:
                return found
        with self._lock:
            now = self._clock()
            fetched = False
            if self._keys is None or self._stale(now):
                fetched = self._fetch(now)
            if not fetched and (self._keys is None or kid not in self._keys):
                self._fetch(now)
            keys = self._keys
        if keys is None:
            raise UnauthenticatedError(KEYS_UNAVAILABLE)
        bound = keys.get(kid)
        if bound is None:
            raise UnauthenticatedError("The token's signing key (kid) is not known.")
        key = bound.get(alg)
        if key is None:
            raise UnauthenticatedError("The token's algorithm does not match its signing key.")
        return key

    def _stale(self, now: float) -> bool:
        return now - self._loaded_at >= self._ttl

    def _fetch(self, now: float) -> bool:
        """Fetch and install the JWKS if the cooldown allows; whether a fetch was made."""
        if self._first_fetch_done:
            if self._last_refresh_at is not None and now - self._last_refresh_at < self._cooldown:
                return False
            self._last_refresh_at = now
        self._first_fetch_done = True
        self._fetch_count += 1
        try:
            keys = self._parse(self._source.fetch())
        except Exception as exc:  # a broken identity provider must not break cached keys
            self.last_error = type(exc).__name__
            return True
        self._keys = keys
        self._loaded_at = now
        self.last_error = None
        return True

    def _parse(self, document: object) -> dict[str, dict[str, jwt.PyJWK]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("The JWKS document has no 'keys' list.")
        keys: dict[str, dict[str, jwt.PyJWK]] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict):
                continue
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not kid:
                continue
            if "use" in jwk and jwk["use"] != "sig":
                continue
            ops = jwk.get("key_ops")
            if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
                continue
            declared = jwk.get("alg")
            if declared is None:
                candidates = self._algorithms
            elif declared in self._algorithms:
                candidates = (declared,)
            else:
                continue
            for alg in candidates:
                key = _bound_key(jwk, alg)
                if key is not None:
                    keys.setdefault(kid, {}).setdefault(alg, key)
        return keys


def _bound_key(jwk: dict[str, Any], alg: str) -> jwt.PyJWK | None:
    """``jwk`` as a key for ``alg``, or None if it does not fit or is too weak."""
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
        prepared = key.Algorithm.prepare_key(key.key)  # checks key type and curve
        if key.Algorithm.check_key_length(prepared) is not None:
            return None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    return key


class JwtAuthenticator:
    """Checks ``Authorization: Bearer <jwt>`` and maps the token's claims to a
    :class:`Principal`: ``tenant`` from ``tenant_claim`` (required), ``key_id`` is
    ``"jwt:" + sub``, ``scopes`` from ``scope_claim`` (or ``scp``), ``tier`` from
    ``tier_claim`` (default ``"standard"``), ``allowed_models`` None.

    ``clock`` is wall-clock seconds since the epoch, for ``exp``, ``nbf`` and ``iat``."""

    def __init__(
        self,
        settings: JwtSettings,
        jwks_cache: JwksCache,
        clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        self._jwks = jwks_cache
        self._clock = clock

    def authenticate(self, authorization: str | None) -> Principal:
        if authorization is not None and len(authorization) > MAX_TOKEN_LENGTH + 64:
            raise UnauthenticatedError("The bearer token is too long.")
        token = bearer_credential(authorization, max_length=MAX_TOKEN_LENGTH + 64)
        if len(token) > MAX_TOKEN_LENGTH:
            raise UnauthenticatedError("The bearer token is too long.")
        if token.count(".") != 2:
            raise UnauthenticatedError("The bearer token is not a signed JWT.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthenticatedError("The bearer token is malformed.") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._settings.algorithms:
            raise UnauthenticatedError("The token's signing algorithm is not allowed.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise UnauthenticatedError("The token has no key id (kid) header.")
        key = self._jwks.key_for(kid, alg)
        claims = self._verify(token, key, alg)
        self._check_times(claims)
        return self._principal(claims)

    def _verify(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        settings = self._settings
        try:
            # Time claims are checked by _check_times against the injected clock.
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in REQUIRED_CLAIMS else "a required"
            raise UnauthenticatedError(f"The token lacks the '{claim}' claim.") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("The token's signature is invalid.") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError("The token is not meant for this audience.") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError("The token's issuer is not trusted.") from None
        except jwt.exceptions.InvalidSubjectError:
            raise UnauthenticatedError("The token's 'sub' claim is malformed.") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise UnauthenticatedError("The bearer token is not a valid JWT.") from None

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        leeway = self._settings.leeway_s
        exp = _numeric_date(claims, "exp")
        if exp is None or exp <= now - leeway:
            raise UnauthenticatedError("The token has expired.")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise UnauthenticatedError("The token is not valid yet (nbf).")
        iat = _numeric_date(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise UnauthenticatedError("The token was issued in the future (iat).")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        settings = self._settings
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnauthenticatedError("The token's 'sub' claim is malformed.")
        tenant = claims.get(settings.tenant_claim)
        if tenant is None:
            raise UnauthenticatedError(f"The token lacks the '{settings.tenant_claim}' claim.")
        if not isinstance(tenant, str) or not tenant:
            raise UnauthenticatedError(f"The token's '{settings.tenant_claim}' claim is malformed.")
        tier = claims.get(settings.tier_claim)
        if tier is None:
            tier = "standard"
        elif not isinstance(tier, str) or not tier:
            raise UnauthenticatedError(f"The token's '{settings.tier_claim}' claim is malformed.")
        return Principal(
            tenant=tenant,
            key_id="jwt:" + sub,
            scopes=self._scopes(claims),
            tier=tier,
            allowed_models=None,
        )

    def _scopes(self, claims: Mapping[str, Any]) -> frozenset[str]:
        name = self._settings.scope_claim
        if name not in claims and "scp" in claims:
            name = "scp"
        raw = claims.get(name)
        if raw is None:
            return frozenset()
        if isinstance(raw, str):
            return frozenset(raw.split())
        if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
            return frozenset(s for s in raw if s)
        raise UnauthenticatedError(f"The token's '{name}' claim is malformed.")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2), None when absent, 401 when not a number."""
    value = claims.get(name)
    if value is None:
        return None
    if not _finite(value):
        raise UnauthenticatedError(f"The token's '{name}' claim is not a number.")
    return float(value)


def _finite(value: object) -> bool:
    """A real, finite number (not a bool, not NaN or infinity, not too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
