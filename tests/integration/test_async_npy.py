"""Binary async jobs through the real stack: an .npy upload, the job, the .npy output in S3
read back with np.load - onnxruntime's probabilities bit for bit."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from infergw.client import Client, JobFailedError
from infergw.demo.models import digits_split
from infergw.local.stack import Connection

NPY = "application/x-npy"
WORKER_BATCH = 1024  # the stack's worker runs with its default --batch-rows


@pytest.fixture()
def client(conn: Connection) -> Iterator[Client]:
    with Client(conn.gateway_url, conn.api_key) as client:
        yield client


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def onnxruntime_alone(models_dir: Path, x: np.ndarray, output: str) -> np.ndarray:
    """The digits model in a session set up as the worker's, over the worker's batches."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(models_dir / "digits" / "1" / "model.onnx"),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    return np.concatenate(
        [
            session.run([output], {"X": x[s : s + WORKER_BATCH]})[0]
            for s in range(0, len(x), WORKER_BATCH)
        ]
    )


def run_job(client: Client, body: bytes, content_type: str, accept: str) -> dict[str, Any]:
    ticket = client.submit_job("digits", body=body, content_type=content_type, accept=accept)
    return client.wait(ticket["job_id"], timeout_s=180)


def test_an_npy_job_returns_npy_equal_to_onnxruntime(
    client: Client, models_dir: Path, tmp_path: Path
) -> None:
    x = np.ascontiguousarray(np.tile(digits_split().x_test, (6, 1)), dtype=np.float32)  # 2,700
    job = run_job(client, npy(x), NPY, NPY)
    assert job["progress"] == {"records_done": len(x), "records_total": len(x)}
    size = client.download(job, tmp_path / "output.npy")
    got = np.load(tmp_path / "output.npy", allow_pickle=False)
    assert size == 128 + got.nbytes
    want = onnxruntime_alone(models_dir, x, "probabilities")
    assert got.dtype == np.float32 and got.shape == (len(x), 10)
    assert got.tobytes() == want.tobytes()


def test_ndjson_in_npy_out_and_labels_by_name(
    client: Client, models_dir: Path, tmp_path: Path
) -> None:
    x = np.ascontiguousarray(digits_split().x_test[:500], dtype=np.float32)
    body = "\n".join(json.dumps(r) for r in x.tolist()).encode()
    job = run_job(client, body, "application/x-ndjson", f"{NPY}; output=label")
    client.download(job, tmp_path / "labels.npy")
    got = np.load(tmp_path / "labels.npy", allow_pickle=False)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, onnxruntime_alone(models_dir, x, "label"))


def test_a_truncated_npy_fails_naming_the_row(client: Client, tmp_path: Path) -> None:
    x = np.zeros((100, 64), np.float32)
    body = npy(x)[: -(40 * 256 + 3)]  # 3 bytes short of row 60's end, and no rows 61-100
    with pytest.raises(JobFailedError) as caught:
        run_job(client, body, NPY, NPY)
    job = caught.value.job
    assert job["failure_reason"] == "The .npy data ends early, at row 60 of 100."
    assert "output_url" not in job


def test_an_output_the_model_lacks_fails_the_job(client: Client, tmp_path: Path) -> None:
    with pytest.raises(JobFailedError) as caught:
        run_job(client, npy(np.zeros((3, 64), np.float32)), NPY, f"{NPY}; output=x")
    assert caught.value.job["failure_reason"] == (
        "The model has no output 'x' to write as application/x-npy; its outputs: "
        "label, probabilities."
    )
