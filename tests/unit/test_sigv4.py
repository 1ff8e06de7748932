"""gateway.adapters.sigv4: the hot path's SigV4 signer, with botocore's SigV4Auth as the
oracle. For the same request, instant and credentials both must produce the very same
X-Amz-Date, X-Amz-Security-Token and Authorization headers; and the derived signing key is
computed once per (secret, day)."""

from __future__ import annotations

import calendar
import datetime
import hashlib
import hmac
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from gateway.adapters import sigv4
from gateway.adapters.sigv4 import Credentials, SigV4Signer

REGION = "eu-west-1"
SERVICE = "sagemaker"
HOST = "runtime.sagemaker.eu-west-1.amazonaws.com"
NOW = calendar.timegm((2026, 3, 14, 23, 59, 58))
ACCESS = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCWV1LXdlc3QtMSJHMEUCIQ+token=="


def freeze_botocore(monkeypatch: pytest.MonkeyPatch, epoch: float) -> None:
    """botocore.auth reads the time through its module-level get_current_datetime."""
    instant = datetime.datetime.fromtimestamp(epoch, datetime.UTC).replace(tzinfo=None)

    def frozen(remove_tzinfo: bool = True) -> datetime.datetime:
        return instant if remove_tzinfo else instant.replace(tzinfo=datetime.UTC)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", frozen)


def botocore_headers(
    monkeypatch: pytest.MonkeyPatch,
    creds: Credentials,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    epoch: float = NOW,
    region: str = REGION,
    service: str = SERVICE,
) -> dict[str, str]:
    """The headers botocore's SigV4Auth adds for this request, names lowercased."""
    freeze_botocore(monkeypatch, epoch)
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    auth = botocore.auth.SigV4Auth(
        BotoCredentials(creds.access_key, creds.secret_key, creds.token), service, region
    )
    auth.add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


def signer(
    creds: Credentials,
    clock: Callable[[], float] = lambda: NOW,
    region: str = REGION,
    service: str = SERVICE,
) -> SigV4Signer:
    return SigV4Signer(lambda: creds, region, service, clock=clock)


def as_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        assert name.lower() not in out, f"{name} twice"
        out[name.lower()] = value
    return out


BASIC = Credentials(ACCESS, SECRET)
WITH_TOKEN = Credentials(ACCESS, SECRET, TOKEN)
INVOCATIONS = "/endpoints/iris-realtime/invocations"


@pytest.mark.parametrize("creds", [BASIC, WITH_TOKEN], ids=["long-term", "session-token"])
@pytest.mark.parametrize(
    ("host", "url_base"),
    [(HOST, f"https://{HOST}"), ("127.0.0.1:8080", "http://127.0.0.1:8080")],
    ids=["aws", "local-port"],
)
@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        (
            INVOCATIONS,
            {"content-type": "application/json", "accept": "application/json"},
            b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}',
        ),
        (
            "/endpoints/my%20model%2Fv2/invocations",  # an already percent-encoded segment
            {"content-type": "text/csv", "accept": "text/csv"},
            b"5.1,3.5,1.4,0.2\n",
        ),
        (
            "/endpoints/a~b_c-d.e/invocations",  # unreserved characters stay as they are
            {"content-type": "application/json", "accept": "*/*"},
            b"{}",
        ),
        (
            INVOCATIONS,
            {
                "Content-Type": "  application/json;   charset=utf-8  ",  # runs of spaces
                "Accept": "application/json,\t text/csv",
                "X-Amzn-SageMaker-Custom-Attributes": "a  b   c",
            },
            b"{}",
        ),
        (INVOCATIONS, {"content-type": "application/json", "accept": "application/json"}, b""),
        (
            INVOCATIONS,
            {"content-type": "application/x-npy", "accept": "application/x-npy"},
            b"\x93NUMPY\x01\x00v\x00" + bytes(range(256)) * 4,  # binary, not UTF-8
        ),
    ],
    ids=["json", "percent-encoded-path", "unreserved", "spaces", "empty-body", "binary-body"],
)
def test_headers_equal_botocores(
    monkeypatch: pytest.MonkeyPatch,
    creds: Credentials,
    host: str,
    url_base: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    expected = botocore_headers(monkeypatch, creds, "POST", url_base + path, headers, body)
    got = as_dict(signer(creds).headers("POST", host, path, headers, body))
    assert got["authorization"] == expected["authorization"]
    assert got["x-amz-date"] == expected["x-amz-date"] == "20260314T235958Z"
    assert got.get("x-amz-security-token") == expected.get("x-amz-security-token") == creds.token
    # The request's own headers are sent as given, next to the three added.
    assert got == {
        **{name.lower(): value for name, value in headers.items()},
        **{k: expected[k] for k in ("authorization", "x-amz-date")},
        **({"x-amz-security-token": TOKEN} if creds.token else {}),
    }


def test_authorization_names_the_scope_and_the_signed_headers() -> None:
    got = as_dict(
        signer(WITH_TOKEN).headers(
            "POST", HOST, INVOCATIONS, {"Content-Type": "application/json", "Accept": "a/b"}, b""
        )
    )
    prefix = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS}/20260314/{REGION}/{SERVICE}/aws4_request, "
        "SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature="
    )
    assert got["authorization"].startswith(prefix)
    assert len(got["authorization"]) == len(prefix) + 64


@pytest.mark.parametrize(
    ("region", "service", "method"),
    [("us-east-1", "sagemaker", "POST"), ("eu-west-1", "execute-api", "GET")],
)
def test_other_regions_services_and_methods_equal_botocores(
    monkeypatch: pytest.MonkeyPatch, region: str, service: str, method: str
) -> None:
    headers = {"content-type": "application/json", "accept": "application/json"}
    url = f"https://{HOST}/a/b"
    expected = botocore_headers(
        monkeypatch, BASIC, method, url, headers, b"x", region=region, service=service
    )
    s = signer(BASIC, region=region, service=service)
    got = as_dict(s.headers(method, HOST, "/a/b", headers, b"x"))
    assert got["authorization"] == expected["authorization"]


def test_credentials_are_read_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refreshed (rotated) credential is used at once, as botocore would."""
    current = [BASIC]
    s = SigV4Signer(lambda: current[0], REGION, SERVICE, clock=lambda: NOW)
    headers = {"content-type": "application/json"}
    first = as_dict(s.headers("POST", HOST, INVOCATIONS, headers, b"{}"))
    rotated = Credentials("ASIAROTATED", "another/secret", TOKEN)
    current[0] = rotated
    second = as_dict(s.headers("POST", HOST, INVOCATIONS, headers, b"{}"))
    url = f"https://{HOST}{INVOCATIONS}"
    assert (
        second["authorization"]
        == botocore_headers(monkeypatch, rotated, "POST", url, headers, b"{}")["authorization"]
    )
    assert second["x-amz-security-token"] == TOKEN
    assert "x-amz-security-token" not in first
    assert "Credential=ASIAROTATED/" in second["authorization"]


# --- the cached signing key -----------------------------------------------------------------


class HmacSpy:
    """Stands in for the ``hmac`` module inside gateway.adapters.sigv4: counts the HMACs
    keyed by each key, to tell the derivation (four, from the secret) from the signature."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def new(self, key: bytes, msg: bytes, digestmod: Any) -> hmac.HMAC:
        self.keys.append(key)
        return hmac.new(key, msg, digestmod)

    def derivations(self) -> int:
        return sum(1 for key in self.keys if key.startswith(b"AWS4"))

    def reset(self) -> int:
        count = len(self.keys)
        self.keys.clear()
        return count


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> HmacSpy:
    spy = HmacSpy()
    monkeypatch.setattr(sigv4, "hmac", SimpleNamespace(new=spy.new))
    return spy


def test_the_signing_key_is_derived_once_per_secret_and_day(
    monkeypatch: pytest.MonkeyPatch, spy: HmacSpy
) -> None:
    clock = [float(NOW)]
    secret = [BASIC]
    s = SigV4Signer(lambda: secret[0], REGION, SERVICE, clock=lambda: clock[0])
    headers = {"content-type": "application/json", "accept": "application/json"}

    def sign_and_check() -> int:
        """Sign, check against botocore, return how many HMACs the signer computed."""
        got = as_dict(s.headers("POST", HOST, INVOCATIONS, headers, b"{}"))
        url = f"https://{HOST}{INVOCATIONS}"
        expected = botocore_headers(
            monkeypatch, secret[0], "POST", url, headers, b"{}", epoch=clock[0]
        )
        assert got["authorization"] == expected["authorization"]
        return spy.reset()

    assert sign_and_check() == 5  # kDate, kRegion, kService, kSigning + the signature
    assert sign_and_check() == 1
    clock[0] += 1.5  # 23:59:59.5, the same day
    assert sign_and_check() == 1
    clock[0] += 0.5  # midnight: a new day, a new key
    assert sign_and_check() == 5
    assert sign_and_check() == 1
    secret[0] = Credentials(ACCESS, "a-rotated-secret")  # the same day, a new secret
    assert sign_and_check() == 5
    assert sign_and_check() == 1
    secret[0] = Credentials("ANOTHER-KEY-ID", "a-rotated-secret", TOKEN)  # same secret
    assert sign_and_check() == 1


def test_the_cached_key_is_the_documented_derivation(spy: HmacSpy) -> None:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), service), "aws4_request");
    once cached, a request's only HMAC is its signature under that key."""
    s = signer(BASIC)
    s.headers("POST", HOST, INVOCATIONS, {}, b"")
    spy.reset()
    s.headers("POST", HOST, INVOCATIONS, {}, b"")
    assert spy.keys == [_derive(SECRET, "20260314")]


def _derive(secret: str, day: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (day, REGION, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


# --- where the signer and botocore part ways ------------------------------------------------


def test_headers_botocore_never_signs_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = {"content-type": "application/json", "user-agent": "infergw/1", "expect": "x"}
    url = f"https://{HOST}{INVOCATIONS}"
    expected = botocore_headers(monkeypatch, BASIC, "POST", url, headers, b"{}")
    got = as_dict(signer(BASIC).headers("POST", HOST, INVOCATIONS, headers, b"{}"))
    assert got["authorization"] == expected["authorization"]
