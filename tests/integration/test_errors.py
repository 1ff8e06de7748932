"""Every client mistake and backend failure is a precise problem+json, never a 500."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from infergw.local.stack import Connection

ROW = [0.0] * 64


def _problem(response: httpx.Response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    doc = response.json()
    assert doc["type"] == f"/problems/{slug}"
    assert doc["status"] == status
    assert doc["title"] and doc["detail"]
    assert "Traceback" not in response.text
    return doc


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/digits/invocations",
        content=b'{"inputs": [[1, 2',
        headers={"Content-Type": "application/json"},
    )
    _problem(response, 400, "malformed-request")


def test_wrong_feature_count_is_422_naming_the_row(http: httpx.Client) -> None:
    response = http.post("/v1/models/digits/invocations", json={"inputs": [ROW, [0.0] * 63]})
    doc = _problem(response, 422, "schema-mismatch")
    assert doc["row"] == 2 and doc["expected_features"] == 64 and doc["got_features"] == 63


def test_the_model_servers_own_rejection_is_422(http: httpx.Client) -> None:
    # No input schema in this policy: the gateway forwards, the container refuses, and
    # SageMaker's ModelError comes back as the client's 422.
    response = http.post("/v1/models/digits-unchecked/invocations", json={"inputs": [[1.0] * 63]})
    doc = _problem(response, 422, "schema-mismatch")
    assert "64" in doc["detail"]


def test_unknown_model_is_404(http: httpx.Client) -> None:
    _problem(
        http.post("/v1/models/nope/invocations", json={"inputs": [ROW]}), 404, "model-not-found"
    )


def test_another_tenants_model_is_404_not_403(http: httpx.Client) -> None:
    _problem(
        http.post("/v1/models/tenant-b-only/invocations", json={"inputs": [ROW]}),
        404,
        "model-not-found",
    )
    _problem(http.get("/v1/models/tenant-b-only"), 404, "model-not-found")


@pytest.mark.parametrize("authorization", [None, "Bearer igw_test_not-a-real-key", "Basic abc"])
def test_missing_or_invalid_key_is_401(conn: Connection, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(
        f"{conn.gateway_url}/v1/models/digits/invocations",
        json={"inputs": [ROW]},
        headers=headers,
    )
    _problem(response, 401, "unauthenticated")


def test_body_over_the_sync_limit_is_413_with_the_limit(http: httpx.Client) -> None:
    row = json.dumps([1.0] * 30)
    rows = ",".join([row] * (7 * 1024 * 1024 // len(row)))
    response = http.post(
        "/v1/models/breast-cancer/invocations",
        content=f'{{"inputs": [{rows}]}}'.encode(),
        headers={"Content-Type": "application/json"},
    )
    doc = _problem(response, 413, "payload-too-large")
    assert doc["limit_bytes"] == 6 * 1024 * 1024


def test_body_over_the_api_limit_is_413(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/digits/invocations",
        content=b" " * (10 * 1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )
    _problem(response, 413, "payload-too-large")


def test_unsupported_content_type_is_415(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/digits/invocations", content=b"<xml/>", headers={"Content-Type": "text/xml"}
    )
    _problem(response, 415, "unsupported-media-type")


def test_endpoint_that_does_not_exist_is_503_with_retry_after(http: httpx.Client) -> None:
    response = http.post("/v1/models/ghost/invocations", json={"inputs": [ROW]})
    _problem(response, 503, "backend-unavailable")
    assert int(response.headers["retry-after"]) > 0


def test_endpoint_down_is_503_with_retry_after(http: httpx.Client, conn: Connection) -> None:
    assert http.post("/v1/models/doomed/invocations", json={"inputs": [ROW]}).status_code == 200
    endpoints = httpx.get(f"{conn.sagemaker_runtime_url}/endpoints").json()
    for pid in endpoints["doomed-realtime"]["pids"]:
        os.kill(pid, signal.SIGKILL)
    response = http.post("/v1/models/doomed/invocations", json={"inputs": [ROW]})
    _problem(response, 503, "backend-unavailable")
    assert int(response.headers["retry-after"]) > 0
    # The other endpoints are unaffected.
    assert http.post("/v1/models/digits/invocations", json={"inputs": [ROW]}).status_code == 200


def test_unknown_route_is_a_problem_too(http: httpx.Client) -> None:
    _problem(http.get("/v1/nothing-here"), 404, "not-found")
