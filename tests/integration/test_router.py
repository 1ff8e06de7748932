"""The router on real endpoints: the route changes with payload size, SLO and load, and
every response says which route and why."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from infergw.demo.models import digits_split
from infergw.local.stack import Connection

ROW = [0.0] * 64


def _route(response: httpx.Response) -> str:
    return response.headers.get("x-inference-route", "")


def _endpoints(conn: Connection) -> dict:
    return httpx.get(f"{conn.sagemaker_runtime_url}/endpoints").json()


def _scale_to_zero(conn: Connection, name: str) -> None:
    response = httpx.post(f"{conn.sagemaker_runtime_url}/admin/endpoints/{name}/scale-to-zero")
    assert response.status_code == 200, response.text


def _stats(http: httpx.Client) -> dict:
    return http.get("/admin/stats").json()


def test_small_payload_goes_realtime(http: httpx.Client) -> None:
    response = http.post("/v1/models/routed/invocations", json={"inputs": [ROW]})
    assert response.status_code == 200
    assert _route(response) == "realtime; reason=within-slo"


def test_prefer_respond_async_gives_202_with_a_location(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/routed/invocations",
        json={"inputs": [ROW]},
        headers={"Prefer": "respond-async"},
    )
    assert response.status_code == 202, response.text
    assert _route(response) == "async; reason=prefer-async"
    assert response.headers["preference-applied"] == "respond-async"
    location = response.headers["location"]
    job = http.get(location)
    assert job.status_code == 200
    assert job.json()["status"] in {"PENDING_UPLOAD", "QUEUED", "RUNNING", "COMPLETED"}


def test_a_body_over_the_sync_limit_goes_async(http: httpx.Client) -> None:
    rows = np.zeros((28_000, 64), dtype=np.float32)  # 7 MB as .npy: above realtime's 6 MB
    buffer = io.BytesIO()
    np.save(buffer, rows)
    response = http.post(
        "/v1/models/routed/invocations",
        content=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy"},
    )
    assert response.status_code == 202, response.text
    assert _route(response) == "async; reason=payload-over-sync-limit"


def test_saturated_realtime_spills_over_to_serverless(http: httpx.Client) -> None:
    # Realtime's capacity is 2 in flight: eight concurrent heavy requests must spill.
    rows = digits_split().x_test
    big = np.tile(rows, (12, 1))[:5000]
    buffer = io.BytesIO()
    np.save(buffer, big)
    body = buffer.getvalue()

    def call(_: int) -> httpx.Response:
        return http.post(
            "/v1/models/routed/invocations",
            content=body,
            headers={"Content-Type": "application/x-npy"},
        )

    routes: Counter[str] = Counter()
    for _ in range(3):  # a loaded machine may serialise one round; three is plenty
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(call, range(8)))
        # Both sync backends full: async (202) is the right answer for the rest.
        assert all(r.status_code in (200, 202) for r in responses), [
            (r.status_code, r.text[:200]) for r in responses
        ]
        routes.update(_route(r) for r in responses)
        if routes["serverless; reason=realtime-saturated"]:
            break
    assert routes["serverless; reason=realtime-saturated"] >= 1, routes
    assert any(r.startswith("realtime") for r in routes), routes


def test_cold_serverless_is_a_real_cold_start_and_avoided_for_tight_slos(
    http: httpx.Client, conn: Connection
) -> None:
    _scale_to_zero(conn, "solo-serverless")
    assert not [p for p in _endpoints(conn)["solo-serverless"]["pids"]]
    # The router knows it is idle past its scale-to-zero time (the policy says 2 s; wait
    # for the gateway's own view of the idle time rather than the clock).
    deadline = time.monotonic() + 10
    while True:
        backends = _stats(http)["backends"]
        idle = backends.get("solo-serverless", {}).get("idle_s")
        if idle is None or idle > 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    tight = http.post(
        "/v1/models/serverless-only/invocations",
        json={"inputs": [ROW]},
        headers={"X-Latency-Budget-Ms": "200"},
    )
    assert tight.status_code == 202, tight.text
    assert _route(tight) == "async; reason=no-sync-backend-fits:realtime-absent,serverless-cold"

    loose = http.post("/v1/models/serverless-only/invocations", json={"inputs": [ROW]})
    assert loose.status_code == 200, loose.text
    assert _route(loose).startswith("serverless")
    assert "cold-start;dur=" in loose.headers["server-timing"]
    assert len(_endpoints(conn)["solo-serverless"]["pids"]) == 1  # a process was started
    # Warm now: the same tight budget is met synchronously.
    warm = http.post(
        "/v1/models/serverless-only/invocations",
        json={"inputs": [ROW]},
        headers={"X-Latency-Budget-Ms": "200"},
    )
    assert warm.status_code == 200 and _route(warm).startswith("serverless"), warm.text
    assert "cold-start" not in warm.headers["server-timing"]


def test_dead_realtime_falls_back_opens_the_breaker_and_recovers(
    http: httpx.Client, conn: Connection
) -> None:
    assert _route(http.post("/v1/models/routed/invocations", json={"inputs": [ROW]})).startswith(
        "realtime"
    )
    for pid in _endpoints(conn)["routed-realtime"]["pids"]:
        os.kill(pid, signal.SIGKILL)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while "realtime; reason=within-slo" not in seen[3:]:
        response = http.post("/v1/models/routed/invocations", json={"inputs": [ROW]})
        assert response.status_code == 200, response.text  # no caller sees the outage
        seen.append(_route(response))
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert "serverless; reason=fallback-from-realtime" in seen, seen
    assert "serverless; reason=realtime-unhealthy" in seen, seen  # breaker open: no attempt
    assert _stats(http)["backends"]["routed-realtime"]["breaker_opened"] >= 1


def test_a_90_10_canary_over_1000_callers_and_sticky_per_caller(http: httpx.Client) -> None:
    def variant(session: str) -> str:
        response = http.post(
            "/v1/models/canary/invocations",
            json={"inputs": [ROW]},
            headers={"X-Session-Id": session},
        )
        assert response.status_code == 200
        return response.headers["x-model-variant"]

    with ThreadPoolExecutor(4) as pool:
        counts = Counter(pool.map(variant, (f"user-{i}" for i in range(1000))))
    # Binomial(1000, 0.1): mean 100, sd 9.5; five sd either side.
    assert 52 <= counts["candidate"] <= 148, counts
    assert counts["stable"] + counts["candidate"] == 1000
    assert len({variant("user-7") for _ in range(20)}) == 1  # sticky
    forced = http.post(
        "/v1/models/canary/invocations",
        json={"inputs": [ROW]},
        headers={"X-Target-Variant": "candidate"},
    )
    assert forced.headers["x-model-variant"] == "candidate"
    assert forced.headers["x-model-version"] == "2"


def test_shadow_gets_a_mirrored_copy_off_the_request_path(
    http: httpx.Client, conn: Connection
) -> None:
    _scale_to_zero(conn, "shadow-serverless")  # the shadow must cold start: slow on purpose
    before = _stats(http)["shadow"].get("shadowed", {"mirrored": 0, "compared": 0})
    rows = digits_split().x_test[:5].tolist()
    response = http.post("/v1/models/shadowed/invocations", json={"inputs": rows})
    assert response.status_code == 200
    # The caller already has its answer while the shadow is still starting up.
    after = _stats(http)["shadow"]["shadowed"]
    assert after["mirrored"] == before["mirrored"] + 1
    assert after["compared"] == before["compared"]
    deadline = time.monotonic() + 30
    while _stats(http)["shadow"]["shadowed"]["compared"] == before["compared"]:
        assert time.monotonic() < deadline, "the shadow never answered"
        time.sleep(0.1)
    shadow = _stats(http)["shadow"]["shadowed"]
    assert shadow["agreement"] == 1.0  # same model: the shadow agrees on every label
    assert json.loads(response.content)["predictions"]


@pytest.fixture(scope="module")
def oip_server(conn: Connection) -> str:
    from infergw.local import processes
    from infergw.local.stack import EMULATOR_CREDENTIALS, REGION

    port = processes.free_port()
    env = {
        **os.environ,
        **EMULATOR_CREDENTIALS,
        "AWS_ENDPOINT_URL": conn.aws_endpoint_url,
        "AWS_DEFAULT_REGION": REGION,
    }
    uri = f"s3://{conn.resources['INFERGW_BUCKET']}/models/digits/1/model.onnx"
    proc = processes.spawn(
        ["-m", "model_server", "--model-uri", uri, "--name", "digits", "--port", str(port)],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    processes.wait_until_ready(url + "/v2/health/ready", proc)
    yield url
    processes.stop([proc])


def test_an_oip_v2_model_server_as_realtime_backend(http: httpx.Client, oip_server: str) -> None:
    policy = {
        "model": "digits-oip",
        "input": {"features": 64},
        "realtime": {
            "endpoint_name": "digits-oip",
            "protocol": "oip-v2",
            "url": oip_server,
            "oip_model": "digits",
        },
    }
    current = http.get("/admin/policies/digits-oip")
    revision = current.json()["revision"] if current.status_code == 200 else 0
    assert http.put("/admin/policies/digits-oip", json={**policy, "revision": revision}).is_success
    rows = digits_split().x_test[:10].tolist()
    via_oip = http.post("/v1/models/digits-oip/invocations", json={"inputs": rows})
    via_sagemaker = http.post("/v1/models/digits/invocations", json={"inputs": rows})
    assert via_oip.status_code == 200, via_oip.text
    assert _route(via_oip) == "realtime; reason=within-slo"
    labels = [p["label"] for p in via_oip.json()["predictions"]]
    assert labels == [p["label"] for p in via_sagemaker.json()["predictions"]]


def test_a_model_container_reached_directly_as_realtime_backend(
    http: httpx.Client, oip_server: str
) -> None:
    # The same SageMaker-compatible container, called at its own URL (ECS, Kubernetes):
    # bodies pass through both ways, errors keep the model's words.
    policy = {
        "model": "digits-container",
        "input": {"features": 64},
        "realtime": {
            "endpoint_name": "digits-container",
            "protocol": "container",
            "url": oip_server,
        },
    }
    current = http.get("/admin/policies/digits-container")
    revision = current.json()["revision"] if current.status_code == 200 else 0
    put = http.put("/admin/policies/digits-container", json={**policy, "revision": revision})
    assert put.is_success, put.text
    rows = digits_split().x_test[:10].tolist()
    direct = httpx.post(f"{oip_server}/invocations", json={"inputs": rows}, timeout=30)
    via_gateway = http.post("/v1/models/digits-container/invocations", json={"inputs": rows})
    assert via_gateway.status_code == 200, via_gateway.text
    assert _route(via_gateway) == "realtime; reason=within-slo"
    labels = [p["label"] for p in via_gateway.json()["predictions"]]
    assert labels == [p["label"] for p in direct.json()["predictions"]]
    csv = "\n".join(",".join(str(v) for v in row) for row in rows[:2])
    as_csv = http.post(
        "/v1/models/digits-container/invocations",
        content=csv,
        headers={"Content-Type": "text/csv"},
    )
    assert as_csv.status_code == 200, as_csv.text
    assert [p["label"] for p in as_csv.json()["predictions"]] == labels[:2]
