"""gateway.adapters.jwks over real HTTP: a JWKS served on loopback, fetched with httpx,
verified by gateway.jwt_auth end to end."""

from __future__ import annotations

import json
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.adapters.jwks import MAX_JWKS_BYTES, HttpJwksSource
from gateway.errors import UnauthenticatedError
from gateway.jwt_auth import KEYS_UNAVAILABLE, JwksCache, JwtAuthenticator, JwtSettings

ISSUER = "https://idp.example.com/"
AUDIENCE = "infergw"
T0 = 1_800_000_000.0


@dataclass
class IdentityProvider:
    """What the loopback JWKS server serves, and how often it was asked."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "ok"  # ok | 500 | garbage | no-keys | huge | redirect
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> None:
        with self.lock:
            self.requests += 1


class _Handler(BaseHTTPRequestHandler):
    idp: IdentityProvider  # set on a subclass per server

    def do_GET(self) -> None:
        self.idp.count()
        mode = self.idp.mode
        if self.path != "/jwks":
            self._send(404, b"{}")
        elif mode == "ok":
            self._send(200, json.dumps({"keys": self.idp.keys}).encode())
        elif mode == "500":
            self._send(500, b'{"error": "internal"}')
        elif mode == "garbage":
            self._send(200, b"<html>definitely not json</html>")
        elif mode == "no-keys":
            self._send(200, b'{"issuer": "https://idp.example.com/"}')
        elif mode == "huge":
            self._send(200, b'{"keys": [], "pad": "' + b"x" * (MAX_JWKS_BYTES + 10) + b'"}')
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://idp.example.com/jwks")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:  # pragma: no cover
            raise AssertionError(mode)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class JwksServer:
    idp: IdentityProvider
    url: str


@pytest.fixture(scope="module")
def _running_server() -> Iterator[JwksServer]:
    """One loopback server for the module (shutting one down costs half a second)."""
    idp = IdentityProvider()
    handler = type("Handler", (_Handler,), {"idp": idp})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield JwksServer(idp=idp, url=f"http://127.0.0.1:{port}/jwks")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def server(_running_server: JwksServer) -> JwksServer:
    """The module's server, reset: no keys, healthy, no requests counted."""
    idp = _running_server.idp
    with idp.lock:
        idp.keys, idp.mode, idp.requests = [], "ok", 0
    return _running_server


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    auth: JwtAuthenticator
    cache: JwksCache
    source: HttpJwksSource
    clock: FakeClock


@pytest.fixture()
def gateway(
    server: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> Iterator[Gateway]:
    server.idp.keys = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1", "alg": "ES256"},
    ]
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=server.url)
    clock = FakeClock()
    source = HttpJwksSource(settings.jwks_url, timeout_s=5.0)
    cache = JwksCache(source, settings, clock=clock)
    try:
        yield Gateway(JwtAuthenticator(settings, cache, clock=clock), cache, source, clock)
    finally:
        source.close()


def token(key: Any, alg: str, kid: str, **overrides: Any) -> str:
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "exp": int(T0) + 7200,
        "tenant": "acme",
        "scope": "invoke",
    }
    claims.update(overrides)
    return "Bearer " + jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_valid_tokens_are_accepted_end_to_end(
    gateway: Gateway,
    server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    principal = gateway.auth.authenticate(token(rsa_key, "RS256", "rsa-1"))
    assert (principal.tenant, principal.key_id, principal.scopes) == (
        "acme",
        "jwt:user-1",
        frozenset({"invoke"}),
    )
    assert gateway.auth.authenticate(token(ec_key, "ES256", "ec-1")).tier == "standard"
    assert server.idp.requests == 1


def test_unknown_kid_flood_fetches_a_bounded_number_of_times(
    gateway: Gateway, server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    gateway.auth.authenticate(token(rsa_key, "RS256", "rsa-1"))
    assert server.idp.requests == 1

    def flood() -> None:
        for _ in range(100):
            with pytest.raises(UnauthenticatedError) as info:
                gateway.auth.authenticate(token(rsa_key, "RS256", secrets.token_hex(8)))
            assert info.value.status == 401

    flood()
    assert server.idp.requests == 2
    gateway.clock.now += 61  # past the cooldown
    flood()
    assert server.idp.requests == 3
    assert gateway.cache.fetch_count == server.idp.requests


@pytest.mark.parametrize("mode", ["500", "garbage", "no-keys", "huge", "redirect"])
def test_a_broken_identity_provider_is_a_401(
    gateway: Gateway, server: JwksServer, rsa_key: rsa.RSAPrivateKey, mode: str
) -> None:
    server.idp.mode = mode
    with pytest.raises(UnauthenticatedError) as info:
        gateway.auth.authenticate(token(rsa_key, "RS256", "rsa-1"))
    assert info.value.status == 401
    assert info.value.detail == KEYS_UNAVAILABLE
    assert server.idp.requests == 1

    server.idp.mode = "ok"  # it recovers; the next fetch is allowed at once (first retry)
    assert gateway.auth.authenticate(token(rsa_key, "RS256", "rsa-1")).tenant == "acme"
    assert server.idp.requests == 2


@pytest.mark.parametrize("mode", ["500", "garbage"])
def test_source_raises_one_exception_type(server: JwksServer, mode: str) -> None:
    server.idp.mode = mode
    source = HttpJwksSource(server.url)
    try:
        with pytest.raises(UnauthenticatedError) as info:
            source.fetch()
        assert info.value.detail == KEYS_UNAVAILABLE
        assert info.value.__cause__ is not None
    finally:
        source.close()


def test_cached_keys_outlive_a_failing_identity_provider(
    gateway: Gateway, server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    gateway.auth.authenticate(token(rsa_key, "RS256", "rsa-1"))
    server.idp.mode = "500"
    gateway.clock.now += 3601  # past the TTL: a reload is attempted and fails
    assert gateway.auth.authenticate(token(rsa_key, "RS256", "rsa-1")).tenant == "acme"
    assert server.idp.requests == 2


def test_unreachable_identity_provider_is_a_401(rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = HttpJwksSource(f"http://127.0.0.1:{port}/jwks", timeout_s=2.0)
    try:
        with pytest.raises(UnauthenticatedError) as info:
            source.fetch()
        assert isinstance(info.value.__cause__, httpx.HTTPError)
    finally:
        source.close()


def test_a_shared_client_is_used_and_not_closed(server: JwksServer) -> None:
    server.idp.keys = [{"kty": "EC", "kid": "k"}]
    with httpx.Client() as client:
        source = HttpJwksSource(server.url, client=client)
        assert source.fetch() == {"keys": [{"kty": "EC", "kid": "k"}]}
        source.close()
        assert not client.is_closed


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks",
        "http://10.0.0.1/jwks",
        "http://127.0.0.1.evil.example/jwks",
        "ftp://127.0.0.1/jwks",
        "file:///etc/passwd",
        "https:///jwks",
        "idp.example.com/jwks",
        "",
    ],
)
def test_only_https_or_loopback_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError):
        HttpJwksSource(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks",
        "http://localhost:8080/jwks",
        "http://[::1]:8080/jwks",
    ],
)
def test_https_and_loopback_http_urls_are_accepted(url: str) -> None:
    HttpJwksSource(url).close()


def test_a_bad_port_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError):
        HttpJwksSource("http://127.0.0.1:99999/jwks")
