"""An identity provider's JWKS over HTTPS as the core's ``JwksSource``.

Every failure of :meth:`HttpJwksSource.fetch` (connection, timeout, status other than 200,
redirect, body over 1 MiB, not JSON, no ``keys`` list) raises one exception type,
:class:`~gateway.errors.UnauthenticatedError` with the detail
``"The identity provider's keys are unavailable."``, chained to the underlying cause for
logs. ``gateway.jwt_auth.JwksCache`` catches it and keeps serving the keys it has."""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.errors import UnauthenticatedError

MAX_JWKS_BYTES = 1024 * 1024
_LOOPBACK_NAMES = frozenset({"localhost"})
UNAVAILABLE = "The identity provider's keys are unavailable."


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_url(url: str) -> str:
    """``url`` if it is https, or http on a loopback host (local stack, tests); else
    ``ValueError``: keys fetched over plain HTTP could be replaced on the way."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError("The JWKS URL is not a valid URL.") from exc
    if not host:
        raise ValueError("The JWKS URL has no host.")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and _is_loopback(host):
        return url
    raise ValueError("The JWKS URL must use https (plain http only on a loopback host).")


class HttpJwksSource:
    """GETs the JWKS document at ``url``. Redirects are not followed (a redirect could leave
    https); the whole fetch, body included, is bounded by about ``timeout_s``.

    Pass a shared ``client`` to reuse connections; without one, the source owns a client
    and :meth:`close` closes it."""

    def __init__(
        self,
        url: str,
        client: httpx.Client | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0.")
        self._url = check_jwks_url(url)
        self._timeout_s = timeout_s
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)

    @property
    def url(self) -> str:
        return self._url

    def fetch(self) -> dict[str, Any]:
        try:
            body = self._get()
            document = json.loads(body)
        except (
            httpx.HTTPError,
            httpx.InvalidURL,
            httpx.StreamError,
            ValueError,
            RecursionError,
        ) as exc:
            raise UnauthenticatedError(UNAVAILABLE) from exc
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise UnauthenticatedError(UNAVAILABLE) from ValueError(
                "The JWKS document has no 'keys' list."
            )
        return document

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _get(self) -> bytes:
        deadline = time.monotonic() + self._timeout_s
        with self._client.stream(
            "GET",
            self._url,
            headers={
                "Accept": "application/jwk-set+json, application/json",
                "Accept-Encoding": "identity",  # no decompression bombs
            },
            timeout=self._timeout_s,
            follow_redirects=False,
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"The JWKS endpoint answered HTTP {response.status_code}.")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
                raise ValueError("The JWKS document is too large.")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("The JWKS document is too large.")
                if time.monotonic() > deadline:
                    raise ValueError("The JWKS endpoint is too slow.")
            return bytes(body)
