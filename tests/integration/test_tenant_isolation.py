"""Tenant isolation, swept over the gateway's own OpenAPI document: for every tenant route
that takes an id, a caller of another tenant gets 404 on the owner's object, in both
directions, and the owner still sees it. A route added later is swept too; an id this
test does not know how to fill fails it rather than being skipped."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from infergw.local.stack import Connection

ROW = [0.0] * 64
BODIES = {  # a valid body per operation: only the tenant check may refuse it
    ("post", "/v1/models/{model}/invocations"): {"inputs": [ROW]},
    ("post", "/v1/models/{model}/jobs"): {"content_type": "application/json"},
}


@pytest.fixture()
def acme_key(http: httpx.Client) -> str:
    # acme's own demo key is on the free tier (2 requests/s): a premium key of the same
    # tenant keeps the sweep clear of its rate limit.
    response = http.post(
        "/admin/keys", json={"tenant": "acme", "scopes": ["invoke", "jobs"], "tier": "premium"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


@pytest.fixture()
def acme_premium(conn: Connection, acme_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=conn.gateway_url, headers={"Authorization": f"Bearer {acme_key}"}, timeout=30
    ) as client:
        yield client


def _job_of(client: httpx.Client) -> str:
    response = client.post(
        "/v1/models/digits/invocations",
        json={"inputs": [ROW]},
        headers={"Prefer": "respond-async"},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _tenant_operations(http: httpx.Client) -> list[tuple[str, str]]:
    spec = http.get("/openapi.json").json()
    return [
        (method, path)
        for path, item in spec["paths"].items()
        if "{" in path and not path.startswith("/admin/")  # admin routes: 403, swept elsewhere
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_route_with_an_id_is_404_for_another_tenant(
    http: httpx.Client, acme_premium: httpx.Client
) -> None:
    acme = acme_premium
    # What each tenant owns: acme a private model and a job; demo (the operator, with the
    # admin scope, which grants nothing on another tenant's objects) a job.
    owned = {
        "acme": {"model": "acme-digits", "job_id": _job_of(acme)},
        "demo": {"job_id": _job_of(http)},
    }
    clients = {"acme": acme, "demo": http}
    operations = _tenant_operations(http)
    assert len(operations) >= 5, operations  # the sweep covers something
    swept = []
    for owner, other in (("acme", "demo"), ("demo", "acme")):
        for method, template in operations:
            names = re.findall(r"{(\w+)}", template)
            unknown = [n for n in names if n not in ("model", "job_id")]
            assert not unknown, f"{method} {template}: teach this test the ids {unknown}"
            if not all(n in owned[owner] for n in names):
                continue  # the owner has no object of this kind
            path = template.format(**owned[owner])
            body = BODIES.get((method, template))
            response = clients[other].request(method, path, json=body)
            assert response.status_code == 404, (other, method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            swept.append((owner, method, template))
    # Every operation was swept in at least one direction.
    assert {(m, t) for _, m, t in swept} == set(operations)
    # The owners still see what is theirs.
    assert acme.get(f"/v1/jobs/{owned['acme']['job_id']}").status_code == 200
    assert http.get(f"/v1/jobs/{owned['demo']['job_id']}").status_code == 200
    assert acme.get("/v1/models/acme-digits").status_code == 200
