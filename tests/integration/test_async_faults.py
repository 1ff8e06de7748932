"""At-least-once delivery without duplicates: killed workers, redelivered messages and
poison messages, on real worker processes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import boto3
import httpx
import numpy as np
import pytest

from infergw.demo.models import digits_split
from infergw.local import processes
from infergw.local.stack import Connection, LocalStack
from tests.integration.test_async import inbox, notifications_for, upload, wait_for

__all__ = ["inbox"]  # the fixture, shared with test_async


def _queue_depth(sqs: object, url: str) -> int:
    attributes = sqs.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _job_item(aws: boto3.session.Session, conn: Connection, job_id: str) -> dict:
    dynamodb = aws.client("dynamodb", endpoint_url=conn.aws_endpoint_url)
    item = dynamodb.get_item(
        TableName=conn.resources["INFERGW_JOBS_TABLE"],
        Key={"job_id": {"S": job_id}},
        ConsistentRead=True,
    )["Item"]
    return json.loads(item["doc"]["S"])


@pytest.fixture()
def two_workers(stack: LocalStack) -> Iterator[list]:
    """Two fresh workers with 3 s leases; the stack's own worker paused meanwhile."""
    own = stack.process("worker-0")
    own.send_signal(signal.SIGSTOP)
    procs = [
        processes.spawn(
            [
                "-m",
                "async_worker",
                "--wait",
                "1",
                "--visibility",
                "3",
                "--lease",
                "3",
                "--batch-rows",
                "2000",
            ],
            env=stack.env,
            log=str(stack.config.state_dir / "logs" / f"fault-worker-{i}.log"),
        )
        for i in range(2)
    ]
    try:
        yield procs
    finally:
        processes.stop(procs)
        own.send_signal(signal.SIGCONT)


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(
    http: httpx.Client,
    aws: boto3.session.Session,
    conn: Connection,
    two_workers: list,
    inbox: tuple[object, str],
) -> None:
    x = np.tile(digits_split().x_test, (400, 1))  # 180,000 rows: several seconds of work
    body = "\n".join(json.dumps(r) for r in x.tolist()).encode()
    ticket = http.post("/v1/models/digits/jobs", json={}).json()
    upload(ticket, body)
    deadline = time.monotonic() + 60
    while True:  # wait until one of the two has the lease and has made progress
        doc = _job_item(aws, conn, ticket["job_id"])
        if doc["status"] == "RUNNING" and doc["records_done"] > 0:
            break
        assert doc["status"] in ("PENDING_UPLOAD", "QUEUED", "RUNNING"), doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.02)
    owner_pid = int(doc["lease_owner"].split(":")[1])
    victim = next(p for p in two_workers if p.pid == owner_pid)
    os.kill(victim.pid, signal.SIGKILL)

    job, _ = wait_for(http, ticket["job_id"], timeout_s=120)
    assert job["status"] == "COMPLETED", job
    final = _job_item(aws, conn, ticket["job_id"])
    assert final["attempts"] >= 2  # the survivor took over the dead worker's lease
    lines = httpx.get(job["output_url"], timeout=60).text.splitlines()
    assert len(lines) == len(x)  # one whole output, not a partial or a doubled one
    notes = notifications_for(inbox, ticket["job_id"])
    assert len(notes) == 1, notes


def test_a_redelivered_message_of_a_completed_job_is_dropped(
    http: httpx.Client,
    aws: boto3.session.Session,
    conn: Connection,
    inbox: tuple[object, str],
) -> None:
    job_id = http.post(
        "/v1/models/digits/invocations",
        json={"inputs": [[0.0] * 64]},
        headers={"Prefer": "respond-async"},
    ).json()["job_id"]
    job, _ = wait_for(http, job_id)
    assert job["status"] == "COMPLETED"
    assert len(notifications_for(inbox, job_id)) == 1
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    queue = conn.resources["INFERGW_JOBS_QUEUE_URL"]
    key = f"tenants/demo/jobs/{job_id}/input"
    event = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": key}}}]}
    for _ in range(2):  # SQS may deliver twice; here it does
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    deadline = time.monotonic() + 30
    while _queue_depth(sqs, queue) > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert notifications_for(inbox, job_id, timeout_s=3) == []
    assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "COMPLETED"


def test_a_poison_message_goes_to_the_dlq_and_its_job_fails(
    http: httpx.Client,
    aws: boto3.session.Session,
    conn: Connection,
    inbox: tuple[object, str],
) -> None:
    s3 = aws.client("s3", endpoint_url=conn.aws_endpoint_url)
    s3.put_object(
        Bucket=conn.resources["INFERGW_BUCKET"],
        Key="models/poison/1/model.onnx",
        Body=b"this is not an onnx model",
    )
    policy = {
        "model": "poison",
        "version": "1",
        "async_enabled": True,
        "realtime": {"endpoint_name": "digits-realtime"},
    }
    current = http.get("/admin/policies/poison")
    revision = current.json()["revision"] if current.status_code == 200 else 0
    assert http.put("/admin/policies/poison", json={**policy, "revision": revision}).is_success
    job_id = http.post(
        "/v1/models/poison/invocations",
        json={"inputs": [[0.0] * 64]},
        headers={"Prefer": "respond-async"},
    ).json()["job_id"]
    job, _ = wait_for(http, job_id, timeout_s=90)
    assert job["status"] == "FAILED"
    assert "Gave up after 3 attempts" in job["failure_reason"], job
    [note] = notifications_for(inbox, job_id)
    assert note["body"]["invocationStatus"] == "Failed"
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    dlq = conn.resources["INFERGW_JOBS_DLQ_URL"]
    deadline = time.monotonic() + 60
    while _queue_depth(sqs, dlq) == 0:
        assert time.monotonic() < deadline, "the poison message never reached the DLQ"
        time.sleep(0.2)
    error = s3.get_object(
        Bucket=conn.resources["INFERGW_BUCKET"], Key=f"tenants/demo/jobs/{job_id}/error"
    )["Body"].read()
    assert json.loads(error)["status"] == "FAILED"


def test_sigterm_lets_the_worker_finish_or_hand_over_its_job(
    http: httpx.Client,
    aws: boto3.session.Session,
    conn: Connection,
    two_workers: list,
) -> None:
    x = np.tile(digits_split().x_test, (200, 1))  # 90,000 rows
    ticket = http.post("/v1/models/digits/jobs", json={}).json()
    upload(ticket, "\n".join(json.dumps(r) for r in x.tolist()).encode())
    deadline = time.monotonic() + 60
    while (doc := _job_item(aws, conn, ticket["job_id"]))["status"] != "RUNNING":
        assert time.monotonic() < deadline, doc
        time.sleep(0.02)
    owner = next(p for p in two_workers if p.pid == int(doc["lease_owner"].split(":")[1]))
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=60) == 0  # a clean exit, within its grace period
    job, _ = wait_for(http, ticket["job_id"], timeout_s=120)
    assert job["status"] == "COMPLETED", job
    assert len(httpx.get(job["output_url"], timeout=60).text.splitlines()) == len(x)


def test_an_upload_that_never_arrives_expires(
    http: httpx.Client, aws: boto3.session.Session, conn: Connection
) -> None:
    from gateway.adapters.dynamodb_jobs import DynamoDBJobStore
    from gateway.jobs import expire_uploads

    ticket = http.post("/v1/models/digits/jobs", json={}).json()
    store = DynamoDBJobStore(
        aws.client("dynamodb", endpoint_url=conn.aws_endpoint_url),
        conn.resources["INFERGW_JOBS_TABLE"],
    )
    # The sweep the workers run, with the clock moved past the presigned POST's expiry.
    assert ticket["job_id"] not in [j.job_id for j in expire_uploads(store, time.time())]
    expired = expire_uploads(store, time.time() + 16 * 60)
    assert ticket["job_id"] in [j.job_id for j in expired]
    assert http.get(f"/v1/jobs/{ticket['job_id']}").json()["status"] == "EXPIRED"
