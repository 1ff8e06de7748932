"""gateway.jwt_auth: OIDC bearer tokens verified against an identity provider's JWKS."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.errors import UnauthenticatedError
from gateway.jwt_auth import JwksCache, JwtAuthenticator, JwtSettings
from gateway.values import Principal

ISSUER = "https://idp.example.com/"
AUDIENCE = "infergw"
T0 = 1_800_000_000.0
RSA_KID = "rsa-1"
EC_KID = "ec-1"


# --- keys, JWKS, tokens ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": int(T0),
        "exp": int(T0) + 300,
        "tenant": "acme",
        "scope": "invoke jobs",
        "tier": "premium",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str, kid: str | None, payload: dict[str, Any]) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        (
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(payload).encode()),
            b64url(signature),
        )
    )


def bearer(token: str) -> str:
    return f"Bearer {token}"


# --- fakes ----------------------------------------------------------------------------


@dataclass
class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeJwksSource:
    """An in-memory identity provider: serves ``keys``, counts fetches, can fail."""

    keys: list[Any]
    fetches: int = 0
    failure: Exception | None = None
    document: Any = field(default=None)

    def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        if self.failure is not None:
            raise self.failure
        if self.document is not None:
            return copy.deepcopy(self.document)  # type: ignore[no-any-return]
        return {"keys": copy.deepcopy(self.keys)}


@dataclass
class Rig:
    settings: JwtSettings
    source: FakeJwksSource
    clock: FakeClock
    cache: JwksCache
    auth: JwtAuthenticator

    def check(self, token: str) -> Principal:
        return self.auth.authenticate(bearer(token))

    def rejects(self, token: str) -> str:
        with pytest.raises(UnauthenticatedError) as info:
            self.check(token)
        assert info.value.status == 401
        assert token not in info.value.detail
        return info.value.detail


def make_rig(keys: list[Any], **setting_overrides: Any) -> Rig:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE}
    options["jwks_url"] = "https://idp.example.com/jwks"
    options.update(setting_overrides)
    settings_ = JwtSettings(**options)
    source = FakeJwksSource(keys=keys)
    clock = FakeClock()
    cache = JwksCache(source, settings_, clock=clock)
    return Rig(settings_, source, clock, cache, JwtAuthenticator(settings_, cache, clock=clock))


@pytest.fixture()
def rig(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Rig:
    return make_rig([rsa_jwk(rsa_key, RSA_KID), ec_jwk(ec_key, EC_KID)])


# --- valid tokens ---------------------------------------------------------------------


def test_valid_rs256_token_is_a_principal(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    principal = rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    assert principal == Principal(
        tenant="acme",
        key_id="jwt:user-1",
        scopes=frozenset({"invoke", "jobs"}),
        tier="premium",
        allowed_models=None,
    )
    assert rig.source.fetches == 1


def test_valid_es256_token_is_a_principal(rig: Rig, ec_key: ec.EllipticCurvePrivateKey) -> None:
    principal = rig.check(sign(ec_key, "ES256", EC_KID, claims(sub="svc-7", tenant="beta")))
    assert principal.tenant == "beta"
    assert principal.key_id == "jwt:svc-7"
    assert principal.scopes == frozenset({"invoke", "jobs"})
    assert principal.tier == "premium"
    assert principal.allowed_models is None


def test_keys_are_loaded_lazily_and_cached(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    assert rig.cache.fetch_count == 0
    for _ in range(5):
        rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    assert rig.cache.fetch_count == rig.source.fetches == 1


def test_tier_defaults_to_standard(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    assert rig.check(sign(rsa_key, "RS256", RSA_KID, claims(tier=None))).tier == "standard"


@pytest.mark.parametrize(
    ("extra", "scopes"),
    [
        ({"scope": "invoke"}, {"invoke"}),
        ({"scope": "  invoke   admin "}, {"invoke", "admin"}),
        ({"scope": ["invoke", "jobs"]}, {"invoke", "jobs"}),
        ({"scope": None, "scp": ["admin"]}, {"admin"}),
        ({"scope": None, "scp": "invoke jobs"}, {"invoke", "jobs"}),
        ({"scope": "invoke", "scp": "admin"}, {"invoke"}),  # the configured claim wins
        ({"scope": None}, set()),
        ({"scope": ""}, set()),
    ],
)
def test_scopes_come_from_scope_or_scp(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, extra: dict[str, Any], scopes: set[str]
) -> None:
    principal = rig.check(sign(rsa_key, "RS256", RSA_KID, claims(**extra)))
    assert principal.scopes == frozenset(scopes)


@pytest.mark.parametrize("bad", [42, {"invoke": True}, ["invoke", 7]])
def test_malformed_scope_claim_is_rejected(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, bad: object
) -> None:
    assert "scope" in rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(scope=bad)))


def test_configured_claim_names_are_used(rsa_key: rsa.RSAPrivateKey) -> None:
    rig = make_rig(
        [rsa_jwk(rsa_key, RSA_KID)],
        tenant_claim="https://infergw/tenant",
        scope_claim="permissions",
        tier_claim="https://infergw/tier",
    )
    token = sign(
        rsa_key,
        "RS256",
        RSA_KID,
        claims(
            tenant=None,
            tier=None,
            scope="ignored",
            **{
                "https://infergw/tenant": "t-9",
                "https://infergw/tier": "gold",
                "permissions": ["invoke"],
            },
        ),
    )
    principal = rig.check(token)
    assert (principal.tenant, principal.tier, principal.scopes) == ("t-9", "gold", {"invoke"})


def test_audience_list_containing_ours_is_accepted(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, "RS256", RSA_KID, claims(aud=["other", AUDIENCE]))
    assert rig.check(token).tenant == "acme"


# --- time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exp_offset", "accepted"),
    [
        (+300, True),
        (-1, True),  # expired, but within the 30 s leeway
        (-29, True),
        (-30, False),  # exp <= now - leeway
        (-31, False),
        (-3600, False),
    ],
)
def test_expiry_honours_leeway(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, exp_offset: int, accepted: bool
) -> None:
    token = sign(rsa_key, "RS256", RSA_KID, claims(iat=int(T0) - 7200, exp=int(T0) + exp_offset))
    if accepted:
        assert rig.check(token).tenant == "acme"
    else:
        assert rig.rejects(token) == "The token has expired."


def test_a_token_expires_as_the_clock_moves(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, "RS256", RSA_KID, claims(exp=int(T0) + 60))
    rig.check(token)
    rig.clock.advance(60 + 29)
    rig.check(token)
    rig.clock.advance(1)
    assert rig.rejects(token) == "The token has expired."


@pytest.mark.parametrize(
    ("nbf_offset", "accepted"),
    [(-10, True), (0, True), (+30, True), (+31, False), (+600, False)],
)
def test_not_before_honours_leeway(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, nbf_offset: int, accepted: bool
) -> None:
    token = sign(rsa_key, "RS256", RSA_KID, claims(nbf=int(T0) + nbf_offset, iat=int(T0) - 10))
    if accepted:
        assert rig.check(token).tenant == "acme"
    else:
        assert "not valid yet" in rig.rejects(token)


def test_issued_in_the_future_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, "RS256", RSA_KID, claims(iat=int(T0) + 600, exp=int(T0) + 900))
    assert "issued in the future" in rig.rejects(token)


@pytest.mark.parametrize(
    "bad", ["1900000000", True, [1900000000], 10**400, float("nan"), float("inf")]
)
def test_non_numeric_exp_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey, bad: object) -> None:
    rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(exp=bad)))


def test_zero_leeway(rsa_key: rsa.RSAPrivateKey) -> None:
    rig = make_rig([rsa_jwk(rsa_key, RSA_KID)], leeway_s=0)
    assert rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(exp=int(T0) - 1))) == (
        "The token has expired."
    )


# --- claims ---------------------------------------------------------------------------


def test_wrong_audience_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(aud="someone-else")))
    assert detail == "The token is not meant for this audience."


def test_wrong_issuer_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(iss="https://evil.example/")))
    assert detail == "The token's issuer is not trusted."


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_required_claims(rig: Rig, rsa_key: rsa.RSAPrivateKey, claim: str) -> None:
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(**{claim: None})))
    assert detail == f"The token lacks the '{claim}' claim."


@pytest.mark.parametrize("sub", ["", 17])
def test_malformed_subject_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey, sub: object) -> None:
    assert "'sub'" in rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(sub=sub)))


def test_missing_tenant_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(tenant=None)))
    assert detail == "The token lacks the 'tenant' claim."


@pytest.mark.parametrize("tenant", ["", 5, ["acme"]])
def test_malformed_tenant_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey, tenant: object) -> None:
    assert "'tenant'" in rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(tenant=tenant)))


def test_malformed_tier_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    assert "'tier'" in rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(tier=3)))


# --- signatures and algorithms --------------------------------------------------------


def test_alg_none_is_rejected_before_any_key_is_fetched(rig: Rig) -> None:
    for alg in ("none", "None", "NONE"):
        token = unsigned({"alg": alg, "typ": "JWT", "kid": RSA_KID}, claims())
        assert token.endswith(".")
        assert rig.rejects(token) == "The token's signing algorithm is not allowed."
    assert rig.source.fetches == 0


def test_hs256_signed_with_the_public_key_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    """The classic confusion: an HMAC over the token with the RSA public key PEM as secret."""
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": RSA_KID}).encode())
    payload = b64url(json.dumps(claims()).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64url(mac)}"
    assert rig.rejects(token) == "The token's signing algorithm is not allowed."
    assert rig.source.fetches == 0


def test_algorithm_outside_the_allowlist_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    rig = make_rig([rsa_jwk(rsa_key, RSA_KID)], algorithms=("ES256",))
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims()))
    assert detail == "The token's signing algorithm is not allowed."
    assert rig.source.fetches == 0


def test_token_alg_must_match_its_key(rig: Rig, ec_key: ec.EllipticCurvePrivateKey) -> None:
    """An ES256 token naming the RSA key's kid cannot be checked with the RSA key."""
    detail = rig.rejects(sign(ec_key, "ES256", RSA_KID, claims()))
    assert detail == "The token's algorithm does not match its signing key."


def test_key_declaring_alg_is_used_for_that_alg_only(rsa_key: rsa.RSAPrivateKey) -> None:
    rig = make_rig([rsa_jwk(rsa_key, RSA_KID, alg="PS256")], algorithms=("RS256", "PS256"))
    assert rig.check(sign(rsa_key, "PS256", RSA_KID, claims())).tenant == "acme"
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims()))
    assert detail == "The token's algorithm does not match its signing key."


def test_key_without_alg_serves_every_fitting_allowed_alg(rsa_key: rsa.RSAPrivateKey) -> None:
    rig = make_rig([rsa_jwk(rsa_key, RSA_KID)], algorithms=("RS256", "PS256", "ES256"))
    assert rig.check(sign(rsa_key, "RS256", RSA_KID, claims())).tenant == "acme"
    assert rig.check(sign(rsa_key, "PS256", RSA_KID, claims())).tenant == "acme"


def test_signature_by_another_key_is_rejected(rig: Rig, rsa_key_2: rsa.RSAPrivateKey) -> None:
    detail = rig.rejects(sign(rsa_key_2, "RS256", RSA_KID, claims()))
    assert detail == "The token's signature is invalid."


def test_tampered_payload_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    header, _, signature = sign(rsa_key, "RS256", RSA_KID, claims()).split(".")
    forged = b64url(json.dumps(claims(tenant="victim")).encode())
    assert rig.rejects(f"{header}.{forged}.{signature}") == "The token's signature is invalid."


def test_missing_kid_is_rejected(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    detail = rig.rejects(sign(rsa_key, "RS256", None, claims()))
    assert detail == "The token has no key id (kid) header."
    assert rig.source.fetches == 0


def test_key_pointing_headers_are_ignored(rig: Rig, rsa_key_2: rsa.RSAPrivateKey) -> None:
    """A token may not bring its own key (jwk) or say where to fetch one (jku)."""
    token = jwt.encode(
        claims(),
        rsa_key_2,
        algorithm="RS256",
        headers={
            "kid": RSA_KID,
            "jwk": rsa_jwk(rsa_key_2, RSA_KID),
            "jku": "https://evil.example/jwks",
        },
    )
    assert rig.rejects(token) == "The token's signature is invalid."


# --- malformed input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d.e",
        "!!!.@@@.###",
        b64url(b"[1,2]") + ".e30.",
        b64url(b'{"alg":"RS256","kid":7}') + ".e30.sig",
        b64url(b'{"alg":"RS256","kid":"rsa-1"}') + ".not-json.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.eyJ.x",
    ],
)
def test_garbled_token_is_401(rig: Rig, token: str) -> None:
    rig.rejects(token)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc.def.ghi"],
)
def test_missing_or_foreign_authorization_is_401(rig: Rig, authorization: str | None) -> None:
    with pytest.raises(UnauthenticatedError):
        rig.auth.authenticate(authorization)


def test_token_over_8_kib_is_401(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(rsa_key, "RS256", RSA_KID, claims(padding="x" * 9000))
    assert len(token) > 8 * 1024
    assert "too long" in rig.rejects(token)
    assert rig.source.fetches == 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_is_only_ever_a_401(text: str) -> None:
    rig = make_rig([])
    try:
        rig.auth.authenticate("Bearer " + text)
    except UnauthenticatedError as exc:
        assert exc.status == 401
    else:  # pragma: no cover - would be a forged token
        pytest.fail("arbitrary text was accepted")


_B64 = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=80
)


@settings(max_examples=200, deadline=None)
@given(st.tuples(_B64, _B64, _B64).map(".".join))
def test_arbitrary_three_segment_tokens_are_only_ever_a_401(token: str) -> None:
    rig = make_rig([])
    with pytest.raises(UnauthenticatedError):
        rig.auth.authenticate("Bearer " + token)


# --- JWKS cache: refresh, cooldown, rotation ------------------------------------------


def test_unknown_kid_triggers_one_refresh(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    assert rig.source.fetches == 1
    detail = rig.rejects(sign(rsa_key, "RS256", "no-such-kid", claims()))
    assert detail == "The token's signing key (kid) is not known."
    assert rig.source.fetches == 2


def test_unknown_kid_on_a_cold_cache_fetches_once(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    rig.rejects(sign(rsa_key, "RS256", "no-such-kid", claims()))
    assert rig.source.fetches == 1


def test_random_kid_flood_is_bounded_by_the_cooldown(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    assert rig.source.fetches == 1

    def flood() -> None:
        for _ in range(100):
            rig.rejects(sign(rsa_key, "RS256", secrets.token_hex(8), claims()))
            rig.clock.advance(0.1)  # 10 s in all, well inside the 60 s cooldown

    flood()
    assert rig.source.fetches <= 2
    assert rig.source.fetches == 2
    # the known key keeps working throughout
    assert rig.check(sign(rsa_key, "RS256", RSA_KID, claims())).tenant == "acme"

    rig.clock.advance(60)
    flood()
    assert rig.source.fetches == 3
    assert rig.cache.fetch_count == 3


def test_rotated_key_is_picked_up_at_once_when_never_refreshed(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    rig.source.keys.append(rsa_jwk(rsa_key_2, "rsa-2"))
    rig.clock.advance(1)  # far inside the cooldown: the first load does not start it
    assert rig.check(sign(rsa_key_2, "RS256", "rsa-2", claims())).tenant == "acme"
    assert rig.source.fetches == 2


def test_rotated_key_is_picked_up_after_the_cooldown(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    rig.rejects(sign(rsa_key, "RS256", "bogus", claims()))  # spends the refresh
    assert rig.source.fetches == 2

    rig.source.keys.append(rsa_jwk(rsa_key_2, "rsa-2"))
    rotated = sign(rsa_key_2, "RS256", "rsa-2", claims(exp=int(T0) + 3600))
    rig.clock.advance(30)
    assert rig.rejects(rotated) == "The token's signing key (kid) is not known."
    assert rig.source.fetches == 2  # still cooling down
    rig.clock.advance(30)
    assert rig.check(rotated).tenant == "acme"
    assert rig.source.fetches == 3


def test_keys_are_reloaded_after_the_ttl(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    rig.source.keys = [k for k in rig.source.keys if k["kid"] != RSA_KID]  # key retired
    rig.clock.advance(3599)
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims(exp=int(T0) + 7200)))
    assert rig.source.fetches == 1
    rig.clock.advance(1)
    detail = rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims(exp=int(T0) + 7200)))
    assert detail == "The token's signing key (kid) is not known."
    assert rig.source.fetches == 2


def test_failed_refresh_keeps_serving_cached_keys(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    rig.check(sign(rsa_key, "RS256", RSA_KID, claims()))
    rig.source.failure = UnauthenticatedError("The identity provider's keys are unavailable.")
    rig.clock.advance(4000)  # past the TTL
    token = sign(rsa_key, "RS256", RSA_KID, claims(exp=int(T0) + 7200))
    assert rig.check(token).tenant == "acme"
    assert rig.source.fetches == 2
    assert rig.cache.last_error == "UnauthenticatedError"
    for _ in range(50):  # a stale cache retries once per cooldown, not per request
        assert rig.check(token).tenant == "acme"
    assert rig.source.fetches == 2

    rig.source.failure = None
    rig.clock.advance(60)
    rig.check(token)
    assert rig.source.fetches == 3
    assert rig.cache.last_error is None


@pytest.mark.parametrize(
    "failure", [UnauthenticatedError("down"), RuntimeError("boom"), ConnectionError("nope")]
)
def test_no_keys_at_all_is_a_401_and_retries_are_bounded(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, failure: Exception
) -> None:
    rig.source.failure = failure
    token = sign(rsa_key, "RS256", RSA_KID, claims())
    for _ in range(20):
        assert rig.rejects(token) == "The identity provider's keys are unavailable."
    assert rig.source.fetches == 2  # the first load, then one retry per cooldown
    rig.source.failure = None
    rig.clock.advance(60)
    assert rig.check(token).tenant == "acme"
    assert rig.source.fetches == 3


@pytest.mark.parametrize(
    "document", [[], {"keys": "nope"}, {"no": "keys"}, "text", None, {"keys": None}]
)
def test_malformed_jwks_document_counts_as_a_failed_fetch(
    rig: Rig, rsa_key: rsa.RSAPrivateKey, document: Any
) -> None:
    rig.source.document = document if document is not None else {"keys": None}
    assert rig.rejects(sign(rsa_key, "RS256", RSA_KID, claims())) == (
        "The identity provider's keys are unavailable."
    )


def es256_with_any_curve(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """An ES256-labelled token signed with whatever curve ``key`` has (PyJWT refuses)."""
    header = b64url(json.dumps({"alg": "ES256", "kid": kid}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signer = ECAlgorithm(ECAlgorithm.SHA256)  # no expected curve
    signature = signer.sign(f"{header}.{payload}".encode(), key)
    return f"{header}.{payload}.{b64url(signature)}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_unusable_keys_in_the_jwks_are_ignored(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    rig = make_rig(
        [
            "not-a-dict",
            {"kty": "RSA"},  # no kid, no parameters
            rsa_jwk(rsa_key, "enc-key", use="enc"),
            rsa_jwk(rsa_key, "rs512-key", alg="RS512"),
            rsa_jwk(rsa_key, "hs-key", alg="HS256"),
            rsa_jwk(rsa_key, "sign-only", key_ops=["sign"]),
            {"kty": "oct", "kid": "secret", "k": b64url(b"s" * 32)},
            rsa_jwk(weak, "weak"),
            ec_jwk(p384, "p384"),  # P-384 does not fit ES256, the only EC alg allowed
            {**rsa_jwk(rsa_key, "broken"), "n": "!!"},
            rsa_jwk(rsa_key, "usable", use="sig", alg="RS256"),
            ec_jwk(ec_key, "usable-ec"),
        ]
    )
    for kid, token in [
        ("enc-key", sign(rsa_key, "RS256", "enc-key", claims())),
        ("rs512-key", sign(rsa_key, "RS256", "rs512-key", claims())),
        ("hs-key", sign(rsa_key, "RS256", "hs-key", claims())),
        ("sign-only", sign(rsa_key, "RS256", "sign-only", claims())),
        ("secret", sign(rsa_key, "RS256", "secret", claims())),
        ("weak", sign(weak, "RS256", "weak", claims())),
        ("p384", es256_with_any_curve(p384, "p384")),
        ("broken", sign(rsa_key, "RS256", "broken", claims())),
    ]:
        assert rig.rejects(token) in (
            "The token's signing key (kid) is not known.",
            "The token's algorithm does not match its signing key.",
        ), kid
    assert rig.check(sign(rsa_key, "RS256", "usable", claims())).tenant == "acme"
    assert rig.check(sign(ec_key, "ES256", "usable-ec", claims())).tenant == "acme"


def test_an_empty_but_valid_jwks_replaces_the_cached_keys(
    rig: Rig, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A well-formed document is authoritative: keys it drops stop working."""
    token = sign(rsa_key, "RS256", RSA_KID, claims(exp=int(T0) + 7200))
    rig.check(token)
    rig.source.keys = []
    rig.clock.advance(3600)
    assert rig.rejects(token) == "The token's signing key (kid) is not known."


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithms",
    [
        ("HS256",),
        ("RS256", "HS256"),
        ("hs512",),
        ("none",),
        ("RS256", "None"),
        ("NONE",),
        (),
        ("XYZ256",),
        "RS256",
    ],
)
def test_settings_reject_unsafe_algorithms(algorithms: Any) -> None:
    with pytest.raises(ValueError):
        JwtSettings(
            issuer=ISSUER, audience=AUDIENCE, jwks_url="https://x/jwks", algorithms=algorithms
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"issuer": ""},
        {"audience": ""},
        {"jwks_url": ""},
        {"leeway_s": -1},
        {"leeway_s": float("nan")},
        {"cache_ttl_s": 0},
        {"refresh_cooldown_s": -1},
    ],
)
def test_settings_reject_nonsense(overrides: dict[str, Any]) -> None:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://x/j"}
    with pytest.raises(ValueError):
        JwtSettings(**{**options, **overrides})


def test_settings_defaults() -> None:
    s = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://x/jwks")
    assert s.algorithms == ("RS256", "ES256")
    assert (s.leeway_s, s.refresh_cooldown_s, s.cache_ttl_s) == (30, 60, 3600)
    assert (s.tenant_claim, s.scope_claim, s.tier_claim) == ("tenant", "scope", "tier")


def test_errors_never_carry_key_material(rig: Rig, rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = rsa_jwk(rsa_key, RSA_KID)
    bad_tokens = [
        sign(rsa_key, "RS256", "unknown", claims()),
        sign(rsa_key, "RS256", RSA_KID, claims(aud="x")),
        unsigned({"alg": "RS256", "kid": RSA_KID}, claims(), b"sig"),
    ]
    for token in bad_tokens:
        detail = rig.rejects(token)
        assert jwk["n"][:16] not in detail
        assert "acme" not in detail  # no claim values either


def test_settings_accept_a_list_of_algorithms_and_freeze_it() -> None:
    s = JwtSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url="https://x/jwks",
        algorithms=["ES256"],  # type: ignore[arg-type]
    )
    assert s.algorithms == ("ES256",)
    assert hash(s)
