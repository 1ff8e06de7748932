"""The model server as a real process with dynamic batching: many concurrent clients over
loopback, each answered with its own row's prediction, a malformed request among them
answered alone, and fewer model calls than requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from infergw.demo.models import build_digits, digits_split
from infergw.local import processes
from model_runtime.onnx_model import OnnxModel

CLIENTS = 16
REQUESTS = 96


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batching") / "digits.onnx"
    path.write_bytes(build_digits().onnx)
    return path


@pytest.fixture(scope="module")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = processes.free_port()
    log = tmp_path_factory.mktemp("batching-log") / "model-server.log"
    # A long delay and a cap below the client count: batches form for certain.
    batching = ["--batch-max-rows", str(CLIENTS // 2), "--batch-delay-ms", "200"]
    args = ["-m", "model_server", "--model-uri", str(model_file), "--name", "digits"]
    proc = processes.spawn([*args, "--port", str(port), *batching], log=str(log))
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until_ready(url + "/ping", proc, timeout_s=60)
        yield url
    finally:
        processes.stop([proc])


def test_concurrent_clients_each_get_their_own_rows_from_shared_model_calls(
    server: str, model_file: Path
) -> None:
    x = digits_split().x_test[:REQUESTS]
    expected = OnnxModel(model_file.read_bytes(), name="digits", version="1").predict(x)

    def invoke(i: int) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            if i == REQUESTS // 2:  # one malformed request in the middle of the load
                return client.post(server + "/invocations", content=b'{"inputs": [[1,')
            return client.post(server + "/invocations", json={"inputs": [x[i].tolist()]})

    before = httpx.get(server + "/batching", timeout=10).json()
    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(invoke, range(REQUESTS)))
    after = httpx.get(server + "/batching", timeout=10).json()

    malformed = responses[REQUESTS // 2]
    assert malformed.status_code == 400
    assert malformed.headers["content-type"] == "application/problem+json"
    assert json.loads(malformed.content)["type"] == "/problems/malformed-request"
    for i, response in enumerate(responses):
        if i == REQUESTS // 2:
            continue
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert prediction["label"] == int(expected["label"][i]), i
        np.testing.assert_allclose(
            prediction["probabilities"], expected["probabilities"][i], rtol=1e-5
        )
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == REQUESTS - 1
    assert batches < requests  # shared calls: the point of batching
    assert after["failed_batches"] == before["failed_batches"]
