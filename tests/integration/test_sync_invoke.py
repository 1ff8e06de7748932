"""Sync invoke end to end: gateway -> SageMaker runtime API -> model server -> onnxruntime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from infergw.client import Client
from infergw.demo.models import breast_cancer_split, digits_split
from infergw.local.stack import Connection


def _direct(models_dir: Path, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(
        str(models_dir / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(["label", "probabilities"], {"X": x})
    return labels, probabilities


def _columns(body: dict) -> tuple[np.ndarray, np.ndarray]:
    predictions = body["predictions"]
    return (
        np.array([p["label"] for p in predictions]),
        np.array([p["probabilities"] for p in predictions], dtype=np.float32),
    )


def test_heldout_digits_through_the_gateway_are_accurate_and_equal_onnxruntime(
    http: httpx.Client, models_dir: Path
) -> None:
    split = digits_split()
    response = http.post("/v1/models/digits/invocations", json={"inputs": split.x_test.tolist()})
    assert response.status_code == 200, response.text
    assert response.headers["x-inference-route"] == "realtime; reason=within-slo"
    assert "backend;dur=" in response.headers["server-timing"]
    labels, probabilities = _columns(response.json())
    assert len(labels) == len(split.y_test) == 450
    accuracy = float((labels == split.y_test).mean())
    assert accuracy >= 0.9
    direct_labels, direct_probabilities = _direct(models_dir, "digits", split.x_test)
    np.testing.assert_array_equal(labels, direct_labels)
    np.testing.assert_array_equal(probabilities, direct_probabilities)


def test_single_rows_through_the_python_client(conn: Connection, models_dir: Path) -> None:
    split = digits_split()
    direct_labels, _ = _direct(models_dir, "digits", split.x_test[:5])
    with Client(conn.gateway_url, conn.api_key) as client:
        for row, expected in zip(split.x_test[:5], direct_labels, strict=True):
            result = client.invoke("digits", {"inputs": [row.tolist()]})
            assert result.status == 200
            assert result.route.startswith("realtime")
            assert result.predictions[0]["label"] == int(expected)


def test_tabular_model_over_csv(http: httpx.Client, models_dir: Path) -> None:
    split = breast_cancer_split()
    csv = "\n".join(",".join(repr(float(v)) for v in row) for row in split.x_test)
    response = http.post(
        "/v1/models/breast-cancer/invocations",
        content=csv.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    labels, _ = _columns(response.json())
    direct_labels, _ = _direct(models_dir, "breast-cancer", split.x_test)
    np.testing.assert_array_equal(labels, direct_labels)
    assert float((labels == split.y_test).mean()) >= 0.9


def test_ndjson_npy_instances_and_oip_v2_give_the_same_answer(
    http: httpx.Client, models_dir: Path
) -> None:
    x = digits_split().x_test[:7]
    expected, _ = _direct(models_dir, "digits", x)
    buffer = io.BytesIO()
    np.save(buffer, x)
    bodies = {
        "application/x-ndjson": "\n".join(json.dumps(r) for r in x.tolist()).encode(),
        "application/x-npy": buffer.getvalue(),
        "application/json": json.dumps({"instances": x.tolist()}).encode(),
        "application/json; charset=utf-8": json.dumps(
            {
                "inputs": [
                    {
                        "name": "X",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        ).encode(),
    }
    for content_type, body in bodies.items():
        response = http.post(
            "/v1/models/digits/invocations", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 200, (content_type, response.text)
        labels, _ = _columns(response.json())
        np.testing.assert_array_equal(labels, expected, err_msg=content_type)


def test_models_listing_shows_policy_summaries(http: httpx.Client) -> None:
    listing = http.get("/v1/models").json()
    names = [m["model"] for m in listing]
    assert {"digits", "breast-cancer"} <= set(names)
    assert "tenant-b-only" not in names  # another tenant's model is invisible
    digits = http.get("/v1/models/digits").json()
    assert digits["input"]["features"] == 64
    assert digits["backends"] == ["realtime", "serverless", "async"]


def test_concurrent_requests_never_mix(conn: Connection, models_dir: Path) -> None:
    """One gateway process serves many invocations at once: each answer must be its own
    request's (model, rows), not a neighbour's."""
    from concurrent.futures import ThreadPoolExecutor

    digits = digits_split().x_test[:40]
    cancer = breast_cancer_split().x_test[:40]
    expected = {
        "digits": _direct(models_dir, "digits", digits)[0].tolist(),
        "breast-cancer": _direct(models_dir, "breast-cancer", cancer)[0].tolist(),
    }
    rows = {"digits": digits.tolist(), "breast-cancer": cancer.tolist()}

    def call(i: int) -> tuple[str, int, dict]:
        model = "digits" if i % 2 else "breast-cancer"
        with httpx.Client(
            base_url=conn.gateway_url,
            timeout=30,
            headers={"Authorization": f"Bearer {conn.api_key}"},
        ) as client:
            response = client.post(
                f"/v1/models/{model}/invocations", json={"inputs": [rows[model][i % 40]]}
            )
        return model, i % 40, response.json()

    with ThreadPoolExecutor(8) as pool:
        for model, index, body in pool.map(call, range(160)):
            assert body["model"] == model, (model, body)
            assert body["predictions"][0]["label"] == expected[model][index]
