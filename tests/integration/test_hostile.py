"""Hostile input and credential handling through the real gateway: every case a precise
4xx problem, nothing a 5xx, no secret or payload in any log."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import pytest

from infergw.local.stack import Connection, LocalStack

ROW = [0.0] * 64
URL = "/v1/models/digits/invocations"
MiB = 1024 * 1024

HOSTILE: list[tuple[str, bytes, dict[str, str], int]] = [
    ("empty body", b"", {"Content-Type": "application/json"}, 400),
    ("whitespace", b"   ", {"Content-Type": "application/json"}, 400),
    ("deeply nested", b"[" * 200_000 + b"]" * 200_000, {"Content-Type": "application/json"}, 400),
    ("NaN", b'{"inputs": [[NaN' + b", 0" * 63 + b"]]}", {"Content-Type": "application/json"}, 400),
    (
        "Infinity",
        b'{"inputs": [[Infinity' + b", 0" * 63 + b"]]}",
        {"Content-Type": "application/json"},
        400,
    ),
    (
        "huge number",
        b'{"inputs": [[1e999' + b", 0" * 63 + b"]]}",
        {"Content-Type": "application/json"},
        422,
    ),
    (
        "huge integer",
        b'{"inputs": [[' + b"9" * 5000 + b", 0" * 63 + b"]]}",
        {"Content-Type": "application/json"},
        400,
    ),
    (
        "strings",
        json.dumps({"inputs": [["a"] * 64]}).encode(),
        {"Content-Type": "application/json"},
        422,
    ),
    (
        "booleans",
        json.dumps({"inputs": [[True] * 64]}).encode(),
        {"Content-Type": "application/json"},
        422,
    ),
    (
        "ragged rows",
        json.dumps({"inputs": [ROW, ROW[:10]]}).encode(),
        {"Content-Type": "application/json"},
        422,
    ),
    ("wrong content type", b"<a/>", {"Content-Type": "application/xml"}, 415),
    ("non-UTF-8", b'{"inputs": "\xff\xfe"}', {"Content-Type": "application/json"}, 400),
    (
        "gzip bomb",
        gzip.compress(b"0," * 5_000_000),
        {"Content-Type": "text/csv", "Content-Encoding": "gzip"},
        415,
    ),
    (
        "npy garbage",
        b"\x93NUMPY\x01\x00\xff\xff{'descr': 1}",
        {"Content-Type": "application/x-npy"},
        400,
    ),
    ("csv with a formula", b"=cmd|' /C calc'!A0" + b",0" * 63, {"Content-Type": "text/csv"}, 422),
    (
        "bad budget header",
        json.dumps({"inputs": [ROW]}).encode(),
        {"Content-Type": "application/json", "X-Latency-Budget-Ms": "-5"},
        400,
    ),
    (
        "bad idempotency key",
        json.dumps({"inputs": [ROW]}).encode(),
        {"Content-Type": "application/json", "Idempotency-Key": "a b;c"},
        400,
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "headers", "status"), HOSTILE, ids=[case[0] for case in HOSTILE]
)
def test_hostile_input_is_a_precise_4xx(
    http: httpx.Client, name: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = http.post(URL, content=body, headers=headers)
    assert response.status_code == status, (name, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


@pytest.mark.parametrize("over", [0, 1])
def test_one_byte_over_each_limit(http: httpx.Client, over: int) -> None:
    """At the sync limit: served (or routed async); one byte more on a model without async: 413.
    At the API's 10 MB: one byte more is 413 whatever the model."""
    limit = 6 * MiB
    row = ",".join(["1.0"] * 30)
    body = ("\n".join([row] * (limit // (len(row) + 1) + 1)) + "\n").encode()
    body = (
        body[: limit + over]
        if len(body) >= limit + over
        else body + b" " * (limit + over - len(body))
    )
    response = http.post(
        "/v1/models/breast-cancer/invocations", content=body, headers={"Content-Type": "text/csv"}
    )
    if over:
        assert response.status_code == 413, response.text[:200]
    else:
        assert response.status_code in (200, 422), response.text[:200]  # served, or a cut row
    api = http.post(URL, content=b" " * (10 * MiB + over), headers={"Content-Type": "text/csv"})
    if over:
        assert api.status_code == 413, api.text[:200]
    else:  # taken (async: the worker will fail it for having no rows), never a 413 or 5xx
        assert api.status_code in (202, 400), api.text[:200]


def test_a_key_in_the_query_string_is_refused(conn: Connection) -> None:
    response = httpx.post(f"{conn.gateway_url}{URL}?api_key={conn.api_key}", json={"inputs": [ROW]})
    assert response.status_code == 401
    response = httpx.post(
        f"{conn.gateway_url}{URL}", json={"inputs": [ROW]}, headers={"X-Api-Key": conn.api_key}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/admin/policies", None),
        ("GET", "/admin/policies/digits", None),
        ("PUT", "/admin/policies/digits", {"revision": 1}),
        ("DELETE", "/admin/policies/digits", None),
        ("POST", "/admin/keys", {"tenant": "acme", "scopes": ["admin"]}),
        ("GET", "/admin/keys", None),
        ("DELETE", "/admin/keys/key_000000000000", None),
        ("GET", "/admin/usage?tenant=demo", None),
        ("GET", "/admin/stats", None),
    ],
)
def test_admin_routes_need_the_admin_scope(
    acme: httpx.Client, method: str, path: str, body: dict | None
) -> None:
    response = acme.request(method, path, json=body)
    assert response.status_code == 403, (method, path, response.text[:200])


def test_presigned_uploads_are_scoped_to_the_tenant_and_short_lived(http: httpx.Client) -> None:
    import base64

    ticket = http.post("/v1/models/digits/jobs", json={}).json()
    fields = ticket["upload"]["fields"]
    assert fields["key"] == f"tenants/demo/jobs/{ticket['job_id']}/input"
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = json.dumps(policy["conditions"])
    assert "content-length-range" in conditions
    assert ticket["upload"]["expires_in_s"] <= 15 * 60


def test_logs_never_hold_keys_or_payloads(
    http: httpx.Client, stack: LocalStack, conn: Connection
) -> None:
    marker = 1234.5678  # a value nobody else sends
    http.post(URL, json={"inputs": [[marker] * 64]})
    http.post(URL, json={"inputs": [[marker] * 64]}, headers={"Prefer": "respond-async"})
    httpx.post(
        f"{conn.gateway_url}{URL}",
        json={"inputs": [ROW]},
        headers={"Authorization": "Bearer igw_test_secret-that-is-wrong"},
    )
    logs = Path(stack.config.state_dir) / "logs"
    for log in logs.glob("*.log"):
        if log.name == "aws-emulator.log":
            continue  # the emulator is AWS's stand-in, not our code
        text = log.read_text(errors="replace")
        assert conn.api_key not in text, log.name
        assert "secret-that-is-wrong" not in text, log.name
        assert "1234.5678" not in text, log.name
