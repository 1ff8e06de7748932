"""Async inference end to end on real processes: presigned upload to the emulated S3, the
S3 event on SQS, the worker, the output in S3, the SNS notification."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from infergw.demo.models import digits_split
from infergw.local.stack import Connection

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "EXPIRED"}
ORDER = ["PENDING_UPLOAD", "QUEUED", "RUNNING", "COMPLETED"]


@pytest.fixture(scope="module")
def inbox(aws: boto3.session.Session, conn: Connection) -> Iterator[tuple[object, str]]:
    """A queue subscribed to both job topics, filtered to the demo tenant, as an app would."""
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    sns = aws.client("sns", endpoint_url=conn.aws_endpoint_url)
    url = sqs.create_queue(QueueName=f"app-inbox-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    topics = [
        t["TopicArn"] for t in sns.list_topics()["Topics"] if "infergw-test-job-" in t["TopicArn"]
    ]
    assert len(topics) == 2, topics
    for topic in topics:
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"FilterPolicy": json.dumps({"tenant": ["demo"]})},
        )
    yield sqs, url


def notifications_for(inbox: tuple[object, str], job_id: str, timeout_s: float = 30) -> list[dict]:
    """Every notification about ``job_id`` that arrives before the deadline; returns as soon
    as one has arrived and the queue has nothing more for a moment."""
    sqs, url = inbox
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)  # type: ignore[attr-defined]
        messages = reply.get("Messages", [])
        for message in messages:
            envelope = json.loads(message["Body"])
            body = json.loads(envelope["Message"])
            if body.get("jobId") == job_id:
                found.append({"body": body, "attributes": envelope.get("MessageAttributes", {})})
            else:
                # Someone else's: put it back for the test that waits for it.
                sqs.change_message_visibility(  # type: ignore[attr-defined]
                    QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
                continue
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])  # type: ignore[attr-defined]
        if found and not messages:
            return found
    return found


def wait_for(http: httpx.Client, job_id: str, timeout_s: float = 120) -> tuple[dict, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if not seen or seen[-1] != job["status"]:
            seen.append(job["status"])
        if job["status"] in TERMINAL:
            return job, seen
        assert time.monotonic() < deadline, (job, seen)
        time.sleep(0.05)


def upload(ticket: dict, body: bytes) -> httpx.Response:
    form = ticket["upload"]
    return httpx.post(
        form["url"], data=form["fields"], files={"file": ("input", body)}, timeout=120
    )


def direct_labels(models_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models_dir / "digits" / "1" / "model.onnx"))
    return session.run(["label"], {"X": x.astype(np.float32)})[0]


def test_a_50mb_upload_runs_on_the_worker_and_matches_onnxruntime(
    http: httpx.Client, models_dir: Path, inbox: tuple[object, str]
) -> None:
    x = np.tile(digits_split().x_test, (600, 1))  # 270,000 rows
    lines = "\n".join(json.dumps(r) for r in x.tolist()).encode()
    assert len(lines) > 50 * 1024 * 1024
    created = http.post(
        "/v1/models/digits/jobs",
        json={"content_type": "application/x-ndjson", "inference_id": "big-one"},
    )
    assert created.status_code == 201, created.text
    ticket = created.json()
    assert ticket["status"] == "PENDING_UPLOAD"
    assert ticket["upload"]["max_bytes"] >= len(lines)
    response = upload(ticket, lines)
    assert response.status_code in (200, 204), response.text

    job, seen = wait_for(http, ticket["job_id"], timeout_s=300)
    assert job["status"] == "COMPLETED", job
    assert seen == [s for s in ORDER if s in seen], seen  # transitions in order
    assert job["progress"] == {"records_done": len(x), "records_total": len(x)}
    assert job["timings"]["started_at"] <= job["timings"]["finished_at"]
    output = httpx.get(job["output_url"], timeout=120)
    assert output.status_code == 200
    labels = np.array([json.loads(line)["label"] for line in output.text.splitlines()])
    np.testing.assert_array_equal(labels, direct_labels(models_dir, x))

    [note] = notifications_for(inbox, ticket["job_id"])
    assert note["body"]["invocationStatus"] == "Completed"
    assert note["body"]["inferenceId"] == "big-one"
    assert note["body"]["responseParameters"]["outputLocation"].endswith(
        f"/jobs/{ticket['job_id']}/output"
    )
    assert {k: v["Value"] for k, v in note["attributes"].items()} == {
        "tenant": "demo",
        "model": "digits",
        "status": "COMPLETED",
    }


def test_inline_async_completes_and_repeats_with_the_same_idempotency_key(
    http: httpx.Client, models_dir: Path
) -> None:
    x = digits_split().x_test[:20]
    headers = {"Prefer": "respond-async", "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = http.post("/v1/models/digits/invocations", json={"inputs": x.tolist()}, headers=headers)
    again = http.post("/v1/models/digits/invocations", json={"inputs": x.tolist()}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["job_id"] == again.json()["job_id"]
    job, _ = wait_for(http, first.json()["job_id"])
    assert job["status"] == "COMPLETED", job
    output = httpx.get(job["output_url"]).json()  # the request's Accept: JSON
    labels = [p["label"] for p in output["predictions"]]
    assert labels == direct_labels(models_dir, x).tolist()


def test_bad_rows_fail_the_job_at_once_naming_the_row(
    http: httpx.Client, inbox: tuple[object, str]
) -> None:
    rows = [json.dumps([0.0] * 64)] * 5 + ['[1, 2, "three"]'] + [json.dumps([0.0] * 64)] * 3
    ticket = http.post(
        "/v1/models/digits/jobs", json={"content_type": "application/x-ndjson"}
    ).json()
    upload(ticket, "\n".join(rows).encode())
    job, _ = wait_for(http, ticket["job_id"])
    assert job["status"] == "FAILED"
    assert "Row 6" in job["failure_reason"], job["failure_reason"]
    assert "output_url" not in job
    [note] = notifications_for(inbox, ticket["job_id"])
    assert note["body"]["invocationStatus"] == "Failed"
    assert "Row 6" in note["body"]["failureReason"]
    assert note["attributes"]["status"]["Value"] == "FAILED"


def test_an_input_larger_than_the_policy_allows_fails(http: httpx.Client, conn: Connection) -> None:
    # The emulator does not enforce the presigned POST's content-length-range: the worker
    # checks the size itself. limited-async accepts at most 1 KiB.
    policy = {
        "model": "tiny-async",
        "async_enabled": True,
        "max_async_bytes": 1024,
        "realtime": {"endpoint_name": "digits-realtime"},
        "input": {"features": 64},
        "version": "1",
    }
    current = http.get("/admin/policies/tiny-async")
    revision = current.json()["revision"] if current.status_code == 200 else 0
    http.put("/admin/policies/tiny-async", json={**policy, "revision": revision})
    # tiny-async has no artifact of its own; it shares digits' by name? No: give it one.
    ticket = http.post("/v1/models/tiny-async/jobs", json={}).json()
    upload(ticket, ("\n".join([json.dumps([0.0] * 64)] * 50)).encode())
    job, _ = wait_for(http, ticket["job_id"])
    assert job["status"] == "FAILED"
    assert "at most 1024" in job["failure_reason"]


def test_cancel_leaves_no_output(
    http: httpx.Client, aws: boto3.session.Session, conn: Connection
) -> None:
    ticket = http.post("/v1/models/digits/jobs", json={}).json()
    cancelled = http.delete(f"/v1/jobs/{ticket['job_id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    upload(ticket, json.dumps([0.0] * 64).encode())  # arrives after the cancel
    assert http.delete(f"/v1/jobs/{ticket['job_id']}").status_code == 409
    s3 = aws.client("s3", endpoint_url=conn.aws_endpoint_url)
    prefix = f"tenants/demo/jobs/{ticket['job_id']}/"
    # Give the worker the event, then check it did nothing with it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = s3.list_objects_v2(Bucket=conn.resources["INFERGW_BUCKET"], Prefix=prefix)
        keys = {o["Key"] for o in listed.get("Contents", [])}
        assert prefix + "output" not in keys
        if prefix + "input" in keys:
            break
        time.sleep(0.1)
    assert http.get(f"/v1/jobs/{ticket['job_id']}").json()["status"] == "CANCELLED"


def test_other_tenants_cannot_see_or_touch_a_job(http: httpx.Client, acme: httpx.Client) -> None:
    job_id = http.post(
        "/v1/models/digits/invocations",
        json={"inputs": [[0.0] * 64]},
        headers={"Prefer": "respond-async"},
    ).json()["job_id"]
    assert acme.get(f"/v1/jobs/{job_id}").status_code == 404
    assert acme.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert job_id not in [j["job_id"] for j in acme.get("/v1/jobs").json()]
    assert job_id in [j["job_id"] for j in http.get("/v1/jobs").json()]


def test_npy_and_csv_inputs_with_csv_output(http: httpx.Client, models_dir: Path) -> None:
    x = digits_split().x_test[:100]
    buffer = io.BytesIO()
    np.save(buffer, x)
    for content_type, body in (
        ("application/x-npy", buffer.getvalue()),
        ("text/csv", "\n".join(",".join(str(v) for v in r) for r in x.tolist()).encode()),
    ):
        ticket = http.post(
            "/v1/models/digits/jobs", json={"content_type": content_type, "accept": "text/csv"}
        ).json()
        upload(ticket, body)
        job, _ = wait_for(http, ticket["job_id"])
        assert job["status"] == "COMPLETED", job
        rows = httpx.get(job["output_url"]).text.splitlines()
        labels = [int(r.split(",")[0]) for r in rows]
        assert labels == direct_labels(models_dir, x).tolist(), content_type
