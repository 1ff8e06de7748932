"""model_server.app in process (httpx's ASGI transport, the real digits model): the raw ASGI
``/invocations`` answers as the Starlette handler did, and with dynamic batching a bad request
gets its own problem while the good ones around it share one model call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.responses import JSONResponse

import model_server.__main__ as cli
from functions.problems import PROBLEM_JSON, problem_document
from gateway.errors import SchemaMismatchError
from infergw.demo.models import build_digits, digits_split
from model_runtime.onnx_model import OnnxModel
from model_server.app import create_app
from model_server.batching import BatchPolicy

T = TypeVar("T")
NEVER_S = 3600.0  # only a full batch is released


@pytest.fixture(scope="module")
def onnx() -> bytes:
    return build_digits().onnx


@pytest.fixture(scope="module")
def model(onnx: bytes) -> OnnxModel:
    return OnnxModel(onnx, name="digits", version="1")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def client(model: OnnxModel, batching: BatchPolicy | None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(model, batching))
    return httpx.AsyncClient(transport=transport, base_url="http://model")


def one_row(i: int) -> list[float]:
    return [float(v) for v in digits_split().x_test[i]]


def test_with_batching_a_bad_request_fails_alone_and_the_good_ones_share_a_call(
    model: OnnxModel,
) -> None:
    good = [one_row(i) for i in range(4)]

    async def scenario() -> tuple[list[httpx.Response], dict[str, Any]]:
        async with client(model, BatchPolicy(4, NEVER_S, inline_rows=0)) as http:
            calls = [http.post("/invocations", json={"inputs": [row]}) for row in good]
            # Neither may join (or hold up) the batch: it fills with the four good rows.
            calls.insert(1, http.post("/invocations", json={"inputs": [good[0][:63]]}))
            calls.insert(3, http.post("/invocations", content=b'{"inputs": [[1, 2'))
            responses = list(await asyncio.gather(*calls))
            return responses, (await http.get("/batching")).json()

    responses, stats = run(scenario())
    wrong_width, malformed = responses.pop(1), responses.pop(2)
    assert wrong_width.status_code == 422
    assert wrong_width.headers["content-type"] == PROBLEM_JSON
    problem = wrong_width.json()
    assert problem["type"] == "/problems/schema-mismatch"
    assert (problem["expected_features"], problem["got_features"]) == (64, 63)
    assert malformed.status_code == 400
    assert malformed.json()["type"] == "/problems/malformed-request"

    alone = model.predict(np.asarray(good, dtype=np.float32))
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert prediction["label"] == int(alone["label"][i])
        np.testing.assert_allclose(prediction["probabilities"], alone["probabilities"][i])
    assert stats["enabled"] is True
    assert (stats["batches"], stats["requests"], stats["rows"]) == (1, 4, 4)


@pytest.mark.parametrize("batching", [None, BatchPolicy(8, 0.0, 64)], ids=["off", "on"])
def test_invocations_answer_as_the_starlette_handler_did(
    model: OnnxModel, batching: BatchPolicy | None
) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(model, batching) as http:
            return [
                await http.post("/invocations", json={"inputs": [one_row(0), one_row(1)]}),
                await http.post("/invocations", json={"inputs": [[1.0] * 63]}),
                await http.post("/invocations", content=b"1,2", headers={"content-type": "x/y"}),
                await http.get("/invocations"),
            ]

    ok, mismatch, unsupported, wrong_method = run(scenario())
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/json"
    assert ok.headers["content-length"] == str(len(ok.content))
    body = json.loads(ok.content)
    assert (body["model"], body["version"]) == ("digits", "1")
    assert [p["label"] for p in body["predictions"]] == [
        int(v) for v in model.predict(np.asarray([one_row(0), one_row(1)], np.float32))["label"]
    ]

    error = SchemaMismatchError(
        "Rows have 63 features; the model expects 64.", expected_features=64, got_features=63
    )
    expected = JSONResponse(problem_document(error), status_code=422, media_type=PROBLEM_JSON)
    assert mismatch.status_code == 422
    assert mismatch.content == expected.body
    assert [(k.lower(), v) for k, v in mismatch.headers.items()] == [
        (k.decode(), v.decode()) for k, v in expected.raw_headers
    ]
    assert unsupported.status_code == 415
    assert wrong_method.status_code == 405  # Starlette's router still answers the rest


def test_oip_infer_goes_through_the_batcher(model: OnnxModel) -> None:
    def oip(row: list[float]) -> dict[str, Any]:
        return {"inputs": [{"name": "X", "shape": [1, 64], "datatype": "FP32", "data": row}]}

    async def scenario() -> tuple[list[httpx.Response], dict[str, Any]]:
        async with client(model, BatchPolicy(2, NEVER_S, inline_rows=64)) as http:
            responses = await asyncio.gather(
                http.post("/v2/models/digits/infer", json=oip(one_row(0))),
                http.post("/v2/models/digits/infer", json=oip(one_row(1))),
            )
            return list(responses), (await http.get("/batching")).json()

    responses, stats = run(scenario())
    expected = model.predict(np.asarray([one_row(0), one_row(1)], np.float32))["label"]
    for response, label in zip(responses, expected, strict=True):
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["label"]["data"] == [int(label)]
        assert outputs["probabilities"]["shape"] == [1, 10]
    assert (stats["batches"], stats["requests"]) == (1, 2)


def test_without_batching_the_stats_say_so(model: OnnxModel) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(model, None) as http:
            return dict((await http.get("/batching")).json())

    assert run(scenario()) == {"enabled": False}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], None),
        (["--batch-max-rows", "32"], BatchPolicy(32, 0.0, 64)),
        (["--batch-max-rows", "1", "--batch-delay-ms", "5"], None),
        (["--batch-max-rows", "0"], None),
        (["--batch-max-rows", "16", "--batch-delay-ms", "1.5"], BatchPolicy(16, 0.0015, 64)),
        (
            ["--batch-max-rows", "32", "--batch-delay-ms", "2", "--batch-inline-rows", "0"],
            BatchPolicy(32, 0.002, 0),
        ),
    ],
)
def test_the_command_line_batches_only_when_asked_and_not_at_one_row(
    onnx: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    expected: BatchPolicy | None,
) -> None:
    monkeypatch.delenv("MODEL_SERVER_BATCH_MAX_ROWS", raising=False)
    monkeypatch.delenv("MODEL_SERVER_BATCH_DELAY_MS", raising=False)
    seen: list[BatchPolicy | None] = []
    monkeypatch.setattr(cli, "create_app", lambda model, batching: seen.append(batching))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(onnx)
    cli.main(["--model-uri", str(model_file), "--name", "digits", *flags])
    assert seen == [expected]
