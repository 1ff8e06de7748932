"""AWS Signature Version 4 for the hot path's requests, signed as botocore signs them.

botocore recomputes the whole HMAC chain and rebuilds its request objects on every call.
The derived signing key depends only on the secret, the day, the region and the service,
so it is kept until one of those changes; a request then costs two SHA-256 and one HMAC.
Credentials are read per request from botocore's provider chain, so rotated or refreshed
credentials (roles, containers) are picked up as botocore would."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote

# Headers botocore leaves out of the signature (proxies may change them).
_UNSIGNED = frozenset(
    {
        *("baggage", "connection", "expect", "keep-alive", "proxy-authenticate"),
        *("proxy-authorization", "te", "traceparent", "tracestate", "trailer"),
        *("transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id"),
    }
)


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None


class SigV4Signer:
    def __init__(
        self,
        credentials: Callable[[], Credentials],
        region: str,
        service: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._region = region
        self._service = service
        self._clock = clock
        self._key: tuple[tuple[str, str], bytes] | None = None  # ((secret, day), key)

    def headers(
        self, method: str, host: str, path: str, headers: dict[str, str], body: bytes
    ) -> list[tuple[str, str]]:
        """The headers to send: ``headers`` plus X-Amz-Date, the session token if any, and
        Authorization. ``path`` is the request path as sent (already percent-encoded), with
        no query string."""
        creds = self._credentials()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        day = stamp[:8]
        signed = {
            name.lower(): " ".join(value.split())
            for name, value in headers.items()
            if name.lower() not in _UNSIGNED
        }
        signed["host"] = host
        signed["x-amz-date"] = stamp
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        canonical = "\n".join(
            (
                method,
                quote(path, safe="/~"),
                "",
                "".join(f"{name}:{signed[name]}\n" for name in names),
                ";".join(names),
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256",
                stamp,
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            )
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        out = [(name, value) for name, value in headers.items()]
        out.append(("x-amz-date", stamp))
        if creds.token:
            out.append(("x-amz-security-token", creds.token))
        out.append(
            (
                "authorization",
                f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                f"SignedHeaders={';'.join(names)}, Signature={signature}",
            )
        )
        return out

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == (secret, day):
            return cached[1]
        key = f"AWS4{secret}".encode()
        for part in (day, self._region, self._service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = ((secret, day), key)
        return key
