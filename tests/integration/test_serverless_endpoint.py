"""Serverless endpoints on the local SageMaker runtime, for real: a cold start starts a
model-server process (model downloaded from the emulator's S3), idle instances are stopped,
max concurrency throttles with ``ThrottlingException``, provisioned concurrency stays warm.

The session stack provides only the AWS emulator; this module runs its own endpoint host."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infergw.local import processes
from infergw.local.stack import EMULATOR_CREDENTIALS, PROJECT_ROOT, Connection, LocalStack

SERVERLESS = "digits-serverless"
PROVISIONED = "digits-provisioned"
BROKEN = "broken-serverless"
IDLE_TIMEOUT_S = 2.0
PROVISIONED_IDLE_TIMEOUT_S = 1.0
MAX_CONCURRENCY = 2
COLD_HEADER = "x-infergw-cold-start-ms"
ROW = [0.0] * 64


@pytest.fixture(scope="module")
def host(
    stack: LocalStack, conn: Connection, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    state = tmp_path_factory.mktemp("serverless")
    model_uri = f"s3://{conn.resources['INFERGW_BUCKET']}/models/digits/1/model.onnx"
    common = {"model": "digits", "version": "1", "model_uri": model_uri, "kind": "serverless"}
    config = state / "endpoints.json"
    config.write_text(
        json.dumps(
            {
                "endpoints": [
                    {
                        "name": SERVERLESS,
                        **common,
                        "max_concurrency": MAX_CONCURRENCY,
                        "idle_timeout_s": IDLE_TIMEOUT_S,
                    },
                    {
                        "name": BROKEN,
                        **common,
                        "model_uri": model_uri.replace("/digits/", "/no-such-model/"),
                    },
                    {
                        "name": PROVISIONED,
                        **common,
                        "max_concurrency": 2,
                        "idle_timeout_s": PROVISIONED_IDLE_TIMEOUT_S,
                        "provisioned_concurrency": 1,
                    },
                ]
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INFERGW_"))}
    env.update(EMULATOR_CREDENTIALS)
    env.update(
        {
            "AWS_ENDPOINT_URL": conn.aws_endpoint_url,
            "AWS_DEFAULT_REGION": conn.region,
            "AWS_REGION": conn.region,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        }
    )
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = processes.spawn(
        [
            "-m",
            "infergw.local.endpoint_host",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-dir",
            str(state),
        ],
        env=env,
        log=str(state / "endpoint-host.log"),
    )
    started: list[int] = []
    try:
        processes.wait_until_ready(url + "/endpoints", proc, timeout_s=60)
        yield url
        started = [pid for e in _describe(url).values() for pid in e["pids"]]
    finally:
        processes.stop([proc])
    # uvicorn re-raises the SIGTERM it handled once its shutdown (lifespan included) is done.
    assert proc.returncode in (0, -signal.SIGTERM), (state / "endpoint-host.log").read_text()
    # Everything the host started is stopped (and reaped) by the host itself.
    assert started and not [pid for pid in started if _alive(pid)]


@pytest.fixture(scope="module")
def runtime(aws: boto3.session.Session, host: str) -> Any:
    # As the gateway's client: no retries, so a throttle reaches the caller.
    config = Config(
        retries={"mode": "standard", "max_attempts": 1}, read_timeout=60, max_pool_connections=16
    )
    return aws.client("sagemaker-runtime", endpoint_url=host, config=config)


def _describe(host: str) -> dict[str, Any]:
    response = httpx.get(host + "/endpoints", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _scale_to_zero(host: str, name: str) -> list[int]:
    response = httpx.post(f"{host}/admin/endpoints/{name}/scale-to-zero", timeout=30)
    response.raise_for_status()
    return list(response.json()["stopped_pids"])


def _invoke(
    runtime: Any, name: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[float, float | None, dict[str, Any]]:
    """Wall time (ms), the cold-start header (ms) if any, and the parsed body."""
    started = time.perf_counter()
    response = runtime.invoke_endpoint(
        EndpointName=name,
        Body=body if body is not None else json.dumps({"inputs": [ROW]}),
        ContentType=content_type,
        Accept="application/json",
    )
    payload = json.loads(response["Body"].read())
    wall_ms = (time.perf_counter() - started) * 1000
    cold = response["ResponseMetadata"]["HTTPHeaders"].get(COLD_HEADER)
    return wall_ms, (float(cold) if cold is not None else None), payload


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll a real condition with a deadline; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def _concurrently(n: int, call: Callable[[], Any]) -> list[Any]:
    """Run ``call`` n times at once (released together by a barrier); results or errors."""
    barrier = threading.Barrier(n)

    def one() -> Any:
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # collected, asserted on by the caller
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: one(), range(n)))


def test_first_invoke_is_a_real_cold_start_and_the_next_is_warm(host: str, runtime: Any) -> None:
    _scale_to_zero(host, SERVERLESS)
    before = _describe(host)[SERVERLESS]
    assert before["warm_instances"] == 0 and before["on_demand_pid"] is None

    cold_wall_ms, cold_ms, body = _invoke(runtime, SERVERLESS)
    assert body["model"] == "digits" and len(body["predictions"]) == 1
    assert cold_ms is not None and 0 < cold_ms <= cold_wall_ms

    after = _describe(host)[SERVERLESS]
    pid = after["on_demand_pid"]
    assert pid is not None and pid in after["pids"] and _alive(pid)
    assert after["kind"] == "serverless" and after["warm_instances"] == 1
    assert after["cold_starts"] == before["cold_starts"] + 1
    assert after["last_cold_starts_ms"][-1] == pytest.approx(cold_ms, abs=0.1)

    warm_wall_ms, warm_cold_ms, _ = _invoke(runtime, SERVERLESS)
    assert warm_cold_ms is None
    assert cold_wall_ms > warm_wall_ms
    assert _describe(host)[SERVERLESS]["on_demand_pid"] == pid  # the same process served it
    print(f"cold start {cold_ms:.0f} ms (wall {cold_wall_ms:.0f} ms), warm {warm_wall_ms:.1f} ms")


def test_scale_to_zero_stops_the_process_and_the_next_request_is_cold(
    host: str, runtime: Any
) -> None:
    _invoke(runtime, SERVERLESS)
    pid = _describe(host)[SERVERLESS]["on_demand_pid"]
    assert pid is not None and _alive(pid)

    assert _scale_to_zero(host, SERVERLESS) == [pid]
    assert not _alive(pid)
    described = _describe(host)[SERVERLESS]
    assert described["warm_instances"] == 0 and pid not in described["pids"]

    _, cold_ms, _ = _invoke(runtime, SERVERLESS)
    assert cold_ms is not None and cold_ms > 0
    new_pid = _describe(host)[SERVERLESS]["on_demand_pid"]
    assert new_pid is not None and new_pid != pid and _alive(new_pid)


def test_idle_instance_is_scaled_to_zero_after_the_idle_timeout(host: str, runtime: Any) -> None:
    _invoke(runtime, SERVERLESS)
    pid = _describe(host)[SERVERLESS]["on_demand_pid"]
    assert pid is not None

    def stopped() -> bool:
        described = _describe(host)[SERVERLESS]
        return described["on_demand_pid"] is None and pid not in described["pids"]

    waited_s = _wait_for(stopped, IDLE_TIMEOUT_S + 10, "the idle instance to be stopped")
    assert waited_s >= IDLE_TIMEOUT_S - 0.5  # not before the timeout (less response transit)
    assert not _alive(pid)
    _, cold_ms, _ = _invoke(runtime, SERVERLESS)
    assert cold_ms is not None


def test_a_burst_during_a_cold_start_shares_that_one_start(host: str, runtime: Any) -> None:
    _scale_to_zero(host, SERVERLESS)
    before = _describe(host)[SERVERLESS]["cold_starts"]

    results = _concurrently(MAX_CONCURRENCY, lambda: _invoke(runtime, SERVERLESS))

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(cold is not None for _, cold, _ in results) == 1
    after = _describe(host)[SERVERLESS]
    assert after["cold_starts"] == before + 1
    assert after["on_demand_pid"] is not None and len(after["pids"]) == 1


def test_requests_beyond_max_concurrency_are_throttled(host: str, runtime: Any) -> None:
    _invoke(runtime, SERVERLESS)  # warm, so the held requests measure concurrency, not a start
    body = json.dumps({"inputs": [ROW]}).encode()
    # The host admits a request when its headers arrive: requests whose bodies are held back
    # stay in flight for as long as the test holds them, however fast the machine is.
    held = [_start_request(host, SERVERLESS, body) for _ in range(MAX_CONCURRENCY)]
    try:
        _wait_for(
            lambda: _describe(host)[SERVERLESS]["in_flight"] == MAX_CONCURRENCY,
            30,
            f"{MAX_CONCURRENCY} requests in flight",
        )
        with pytest.raises(ClientError) as throttled:
            _invoke(runtime, SERVERLESS)
        error = throttled.value.response
        assert error["Error"]["Code"] == "ThrottlingException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "Rate exceeded" in error["Error"]["Message"]

        # The held requests lose nothing: each is served once its body arrives.
        for connection in held:
            connection.send(body[1:])
            response = connection.getresponse()
            assert response.status == 200
            assert len(json.loads(response.read())["predictions"]) == 1
    finally:
        for connection in held:
            connection.close()
    assert _describe(host)[SERVERLESS]["in_flight"] == 0
    _invoke(runtime, SERVERLESS)  # capacity is back


def _start_request(host: str, name: str, body: bytes) -> http.client.HTTPConnection:
    """An invocation whose headers and first body byte are sent, the rest held back."""
    connection = http.client.HTTPConnection(urlsplit(host).netloc, timeout=30)
    connection.putrequest("POST", f"/endpoints/{name}/invocations")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Accept", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body[:1])
    return connection


def test_provisioned_concurrency_is_warm_and_never_scaled_to_zero(host: str, runtime: Any) -> None:
    described = _describe(host)[PROVISIONED]
    assert described["warm_instances"] == 1 and len(described["provisioned_pids"]) == 1
    pid = described["provisioned_pids"][0]

    _, cold_ms, body = _invoke(runtime, PROVISIONED)
    assert cold_ms is None and len(body["predictions"]) == 1

    # The host's own idle clock passes the timeout by several scale-to-zero checks.
    _wait_for(
        lambda: _describe(host)[PROVISIONED]["idle_s"] > PROVISIONED_IDLE_TIMEOUT_S + 1.0,
        PROVISIONED_IDLE_TIMEOUT_S + 10,
        "the provisioned endpoint to be idle past its timeout",
    )
    described = _describe(host)[PROVISIONED]
    assert described["provisioned_pids"] == [pid] and described["warm_instances"] == 1
    assert _alive(pid) and described["cold_starts"] == 0
    _, cold_ms, _ = _invoke(runtime, PROVISIONED)
    assert cold_ms is None


def test_a_failed_cold_start_is_service_unavailable_and_leaves_no_process(
    host: str, runtime: Any
) -> None:
    with pytest.raises(ClientError) as raised:
        _invoke(runtime, BROKEN)
    assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert "could not start" in raised.value.response["Error"]["Message"]
    described = _describe(host)[BROKEN]
    assert described["pids"] == [] and described["warm_instances"] == 0
    assert described["in_flight"] == 0 and not described["starting"]


def test_scale_to_zero_of_a_missing_endpoint_is_a_validation_error(host: str) -> None:
    response = httpx.post(f"{host}/admin/endpoints/nope/scale-to-zero", timeout=10)
    assert response.status_code == 400
    assert response.headers["x-amzn-ErrorType"] == "ValidationError"
