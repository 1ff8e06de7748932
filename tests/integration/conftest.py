"""One real local stack per test session: moto server, endpoint host with model servers,
and the gateway's HTTP front end, each a process on loopback with free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml

from infergw.local import processes
from infergw.local.stack import DEMO, EMULATOR_CREDENTIALS, Connection, LocalStack, StackConfig

# Extra endpoints and policies only tests need: one endpoint a test may kill, one policy
# naming an endpoint that does not exist.
TEST_ADDITIONS: dict[str, Any] = {
    "endpoints": [
        {"name": "doomed-realtime", "model": "digits", "version": "1", "instances": 1},
        # The router's own: a realtime endpoint replaced 2 s after it dies, serverless
        # endpoints that scale to zero after 2 s idle.
        {"name": "routed-realtime", "model": "digits", "version": "1", "replace_after_s": 2},
        {
            "name": "routed-serverless",
            "model": "digits",
            "version": "1",
            "kind": "serverless",
            "max_concurrency": 4,
            "idle_timeout_s": 2,
        },
        {
            "name": "solo-serverless",
            "model": "digits",
            "version": "1",
            "kind": "serverless",
            "max_concurrency": 4,
            "idle_timeout_s": 2,
        },
        {
            "name": "shadow-serverless",
            "model": "digits",
            "version": "1",
            "kind": "serverless",
            "max_concurrency": 4,
            "idle_timeout_s": 2,
        },
        # test_endpoint_kill_under_load: a realtime endpoint killed under concurrent load
        # and replaced 6 s after it dies (later than the breaker's 5 s open window, so at
        # least its first probe fails); a serverless spillover sized for the whole load
        # (8 callers) that stays warm for the test's duration.
        {"name": "killed-realtime", "model": "digits", "version": "1", "replace_after_s": 6},
        {
            "name": "killed-spillover",
            "model": "digits",
            "version": "1",
            "kind": "serverless",
            "max_concurrency": 8,
            "idle_timeout_s": 900,
        },
        # test_endpoint_kill_under_load: a realtime endpoint that stalls (SIGSTOP) for a
        # moment under load, then is fast again; it spills over to killed-spillover.
        {"name": "stalled-realtime", "model": "digits", "version": "1"},
    ],
    "policies": [
        {
            "model": "doomed",
            "version": "1",
            "slo_ms": 300,
            "timeout_ms": 3000,
            "realtime": {"endpoint_name": "doomed-realtime"},
            "input": {"features": 64},
        },
        {
            "model": "ghost",
            "version": "1",
            "slo_ms": 300,
            "timeout_ms": 3000,
            "realtime": {"endpoint_name": "no-such-endpoint"},
        },
        {
            "model": "digits-unchecked",
            "version": "1",
            "realtime": {"endpoint_name": "digits-realtime"},
        },
        {
            "model": "routed",
            "slo_ms": 3000,
            "timeout_ms": 10000,
            "input": {"features": 64},
            "async_enabled": True,
            "realtime": {
                "endpoint_name": "routed-realtime",
                "capacity": 2,
                "expected_latency_ms": 5,
            },
            "serverless": {
                "endpoint_name": "routed-serverless",
                "capacity": 4,
                "expected_latency_ms": 10,
                "idle_timeout_s": 2,
                "cold_start_ms": 1000,
            },
        },
        {
            "model": "serverless-only",
            "slo_ms": 5000,
            "input": {"features": 64},
            "async_enabled": True,
            "serverless": {
                "endpoint_name": "solo-serverless",
                "capacity": 4,
                "expected_latency_ms": 10,
                "idle_timeout_s": 2,
                "cold_start_ms": 1000,
            },
        },
        {
            "model": "canary",
            "input": {"features": 64},
            "realtime": {"endpoint_name": "digits-realtime"},
            "allow_variant_override": True,
            "variants": [
                {"name": "stable", "version": "1", "weight": 90},
                {"name": "candidate", "version": "2", "weight": 10},
            ],
        },
        {
            "model": "shadowed",
            "input": {"features": 64},
            "realtime": {"endpoint_name": "digits-realtime"},
            "shadow": {
                "name": "shadow",
                "version": "1",
                "serverless": {"endpoint_name": "shadow-serverless"},
            },
        },
        {
            "model": "limited-digits",
            "version": "1",
            "input": {"features": 64},
            "realtime": {"endpoint_name": "digits-realtime"},
            "rate_limit": {"rate_per_s": 20, "burst": 20},
        },
        {
            "model": "tenant-b-only",
            "version": "1",
            "allowed_tenants": ["tenant-b"],
            "realtime": {"endpoint_name": "digits-realtime"},
        },
        {
            "model": "killed-under-load",
            "version": "1",
            "slo_ms": 1000,
            "timeout_ms": 2000,
            "input": {"features": 64},
            "realtime": {
                "endpoint_name": "killed-realtime",
                "capacity": 8,
                "expected_latency_ms": 5,
            },
            "serverless": {
                "endpoint_name": "killed-spillover",
                "capacity": 8,
                "expected_latency_ms": 10,
            },
        },
        {
            "model": "stalled-under-load",
            "version": "1",
            "slo_ms": 500,
            "timeout_ms": 3000,
            "input": {"features": 64},
            "realtime": {
                "endpoint_name": "stalled-realtime",
                "capacity": 8,
                "expected_latency_ms": 5,
            },
            "serverless": {
                "endpoint_name": "killed-spillover",
                "capacity": 8,
                "expected_latency_ms": 10,
            },
        },
    ],
}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("stack")
    demo = yaml.safe_load(DEMO.read_text())
    for section, extra in TEST_ADDITIONS.items():
        demo[section] = demo[section] + extra
    demo_file = state / "demo.yaml"
    demo_file.write_text(yaml.safe_dump(demo))
    config = StackConfig(
        state_dir=state,
        gateway_port=processes.free_port(),
        aws_port=processes.free_port(),
        endpoint_port=processes.free_port(),
        stack_name="infergw-test",
        demo=demo_file,
        authorizer_ttl_s=1.0,
        policy_cache_ttl_s=1.0,
        # FIFO notification topics: the kill sweep holds the stack to exactly-once.
        notification_topics="fifo",
        worker_args=("--wait", "1", "--visibility", "6", "--lease", "6", "--sweep-every", "2"),
    )
    with LocalStack(config, report=lambda _: None) as running:
        yield running


@pytest.fixture(scope="session")
def conn(stack: LocalStack) -> Connection:
    assert stack.connection is not None
    return stack.connection


@pytest.fixture(scope="session")
def aws(conn: Connection) -> boto3.session.Session:
    return boto3.session.Session(
        region_name=conn.region,
        aws_access_key_id=EMULATOR_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture()
def http(conn: Connection) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=conn.gateway_url,
        headers={"Authorization": f"Bearer {conn.api_key}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def acme(conn: Connection) -> Iterator[httpx.Client]:
    """The free-tier customer tenant's client."""
    with httpx.Client(
        base_url=conn.gateway_url,
        headers={"Authorization": f"Bearer {conn.keys['acme']}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def models_dir(stack: LocalStack) -> Path:
    return stack.config.state_dir / "models"
