"""What an operator sees: /metrics counts the traffic sent, /status draws every route kind,
rendered by a real headless Chromium when one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from infergw.local.stack import Connection, LocalStack

ROW = [0.0] * 64
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _counter(metrics: str, model: str, route: str, status: int) -> int:
    pattern = (
        rf'^infergw_requests_total\{{model="{re.escape(model)}",route="{route}",'
        rf'status="{status}"\}} (\d+)$'
    )
    match = re.search(pattern, metrics, re.M)
    return int(match.group(1)) if match else 0


def _traffic(http: httpx.Client) -> None:
    """Two realtime calls, one serverless, one async, one rejected."""
    for _ in range(2):
        assert http.post("/v1/models/digits/invocations", json={"inputs": [ROW]}).status_code == 200
    serverless = http.post("/v1/models/serverless-only/invocations", json={"inputs": [ROW]})
    assert serverless.status_code == 200, serverless.text
    queued = http.post(
        "/v1/models/digits/invocations", json={"inputs": [ROW]}, headers={"Prefer": "respond-async"}
    )
    assert queued.status_code == 202
    bad = http.post("/v1/models/digits/invocations", json={"inputs": [[1.0]]})
    assert bad.status_code == 422


def test_metrics_match_the_traffic_sent(http: httpx.Client, conn: Connection) -> None:
    before = httpx.get(f"{conn.gateway_url}/metrics").text
    _traffic(http)
    after = httpx.get(f"{conn.gateway_url}/metrics").text
    for model, route, status, sent in (
        ("digits", "realtime", 200, 2),
        ("serverless-only", "serverless", 200, 1),
        ("digits", "async", 202, 1),
        ("digits", "none", 422, 1),
    ):
        delta = _counter(after, model, route, status) - _counter(before, model, route, status)
        assert delta == sent, (model, route, status, delta)
    assert 'infergw_request_latency_ms{model="digits",route="realtime",quantile="0.99"}' in after
    assert 'infergw_limiter_decisions_total{decision="allowed"}' in after


def test_status_json_has_every_route_and_the_queue(http: httpx.Client, conn: Connection) -> None:
    _traffic(http)
    status = httpx.get(f"{conn.gateway_url}/status.json").json()
    routes = {(r["model"], r["route"]) for r in status["routes"]}
    assert {
        ("digits", "realtime"),
        ("serverless-only", "serverless"),
        ("digits", "async"),
    } <= routes
    assert status["queue"] is not None and status["queue"]["dead_letters"] >= 0
    assert status["jobs"], "recent jobs are listed"


def test_the_status_page_renders_charts_in_headless_chromium(
    http: httpx.Client, conn: Connection
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    _traffic(http)
    ARTIFACTS.mkdir(exist_ok=True)
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        "--virtual-time-budget=4000",
    ]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [*flags, f"--user-data-dir={profile}", "--dump-dom", f"{conn.gateway_url}/status"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        subprocess.run(
            [
                *flags,
                f"--user-data-dir={profile}",
                f"--screenshot={ARTIFACTS / 'status.png'}",
                f"{conn.gateway_url}/status",
            ],
            capture_output=True,
            timeout=120,
        )
    assert 'data-loaded="true"' in dom, dom[:2000]
    for route in ("realtime", "serverless", "async"):
        assert f'data-route="{route}"' in dom, route  # a bar in the route-mix chart
    assert "<circle" in dom  # latency points
    assert (ARTIFACTS / "status.png").stat().st_size > 10_000


def test_a_job_is_followed_by_its_request_id_from_gateway_to_worker(
    http: httpx.Client, stack: LocalStack
) -> None:
    import json
    import time

    response = http.post(
        "/v1/models/digits/invocations", json={"inputs": [ROW]}, headers={"Prefer": "respond-async"}
    )
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 60
    log = stack.config.state_dir / "logs" / "worker-0.log"
    while True:
        lines = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and job_id in line
        ]
        completed = [line for line in lines if line.get("message") == "job completed"]
        if completed:
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    assert completed[0]["correlation_id"]  # the API request that created the job
    assert completed[0]["tenant"] == "demo" and completed[0]["rows"] == 1
    metric = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith('{"_aws"') and '"JobSeconds"' in line
    ]
    assert metric, "the job's duration metric was emitted"
