"""Workers SIGKILLed at random points while 200 jobs run: every job ends COMPLETED (or
FAILED with a reason) with exactly one output, reconciled against the jobs table, the
bucket and the notifications an app received: exactly one notification per job."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx
import pytest

from gateway.adapters.dynamodb_jobs import DynamoDBJobStore
from infergw.local import processes
from infergw.local.stack import Connection, LocalStack

JOBS = 200
FIGURES: dict[str, int] = {}


@pytest.fixture()
def app_queue(aws: boto3.session.Session, conn: Connection) -> Iterator[str]:
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    sns = aws.client("sns", endpoint_url=conn.aws_endpoint_url)
    # A FIFO queue on the stack's FIFO topics: what an app that must see each job once uses.
    url = sqs.create_queue(
        QueueName=f"sweep-{uuid.uuid4().hex[:8]}.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    for topic in (
        conn.resources["INFERGW_JOB_SUCCEEDED_TOPIC_ARN"],
        conn.resources["INFERGW_JOB_FAILED_TOPIC_ARN"],
    ):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    yield url


def test_200_jobs_survive_random_worker_kills(
    http: httpx.Client,
    stack: LocalStack,
    conn: Connection,
    aws: boto3.session.Session,
    app_queue: str,
) -> None:
    rng = random.Random(7)
    own = stack.process("worker-0")
    own.send_signal(signal.SIGSTOP)  # only the workers this test kills take jobs
    args = [
        "-m",
        "async_worker",
        "--wait",
        "1",
        "--visibility",
        "3",
        "--lease",
        "2",
        "--sweep-every",
        "1",
    ]
    logs = stack.config.state_dir / "logs"

    def spawn(i: int) -> object:
        return processes.spawn(args, env=stack.env, log=str(logs / f"sweep-worker-{i}.log"))

    workers = [spawn(i) for i in range(2)]
    kills = 0
    try:
        body = {"inputs": [[float(v % 16) for v in range(64)]] * 20}

        def submit(_: int) -> str:
            response = http.post(
                "/v1/models/digits/invocations", json=body, headers={"Prefer": "respond-async"}
            )
            assert response.status_code == 202, response.text
            return str(response.json()["job_id"])

        with ThreadPoolExecutor(4) as pool:
            job_ids = list(pool.map(submit, range(JOBS)))

        done = threading.Event()

        def killer() -> None:
            nonlocal kills
            spawned = len(workers)
            while not done.wait(rng.uniform(0.2, 0.8)):
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
                kills += 1
                workers[victim] = spawn(spawned)
                spawned += 1

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        statuses: dict[str, dict] = {}
        while True:
            for job_id in job_ids:
                if statuses.get(job_id, {}).get("status") not in ("COMPLETED", "FAILED"):
                    statuses[job_id] = http.get(f"/v1/jobs/{job_id}").json()
            pending = [j for j in job_ids if statuses[j]["status"] not in ("COMPLETED", "FAILED")]
            if not pending:
                break
            assert time.monotonic() < deadline, f"{len(pending)} jobs never finished"
            time.sleep(0.5)
        done.set()
        thread.join()
    finally:
        processes.stop(workers)  # type: ignore[arg-type]
        own.send_signal(signal.SIGCONT)

    failed = [s for s in statuses.values() if s["status"] == "FAILED"]
    assert all(s.get("failure_reason") for s in failed), failed
    s3 = aws.client("s3", endpoint_url=conn.aws_endpoint_url)
    outputs: Counter[str] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=conn.resources["INFERGW_BUCKET"], Prefix="tenants/demo/jobs/"
    ):
        for item in page.get("Contents", []):
            job_id, name = item["Key"].split("/")[-2:]
            if name == "output":
                outputs[job_id] += 1
    for job_id in job_ids:
        expected = 1 if statuses[job_id]["status"] == "COMPLETED" else 0
        assert outputs[job_id] == expected, (job_id, statuses[job_id]["status"])
        if expected:
            output = httpx.get(statuses[job_id]["output_url"]).json()
            assert len(output["predictions"]) == 20  # whole, not a torn write

    # Every notification is sent once its job is marked notified: a re-send after a kill
    # between publishing and marking comes before the mark.
    jobs = DynamoDBJobStore(
        aws.client("dynamodb", endpoint_url=conn.aws_endpoint_url),
        conn.resources["INFERGW_JOBS_TABLE"],
    )
    deadline = time.monotonic() + 120
    unsent = list(job_ids)
    while unsent:
        assert time.monotonic() < deadline, f"{len(unsent)} notifications never sent"
        unsent = [j for j in unsent if not (job := jobs.get(j)) or not job.notified]
        time.sleep(0.2)
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    notes: Counter[str] = Counter()
    while True:
        # Not deleted until the end: the emulator deduplicates only against messages still
        # in the queue (SNS itself does, for five minutes, whatever the subscriber does).
        reply = sqs.receive_message(
            QueueUrl=app_queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=600
        )
        if not reply.get("Messages"):
            break
        for message in reply["Messages"]:
            notes[json.loads(json.loads(message["Body"])["Message"])["jobId"]] += 1
    # Late sends: a worker killed between finishing a job and recording its notification
    # (before or after publishing it). Each is a potential duplicate the topic must drop.
    late = sum(
        log.read_text().count("notification sent late") for log in logs.glob("sweep-worker-*.log")
    )
    missing = [j for j in job_ids if notes[j] == 0]
    duplicated = sum(notes[j] - 1 for j in job_ids if notes[j] > 1)
    FIGURES.update(
        jobs=JOBS,
        kills=kills,
        completed=JOBS - len(failed),
        failed=len(failed),
        lost=len(missing),
        late_notifications=late,
        duplicate_notifications=duplicated,
    )
    (stack.config.state_dir / "kill-sweep.json").write_text(json.dumps(FIGURES))
    print("kill sweep:", FIGURES)
    assert kills >= 10, "the workers were hardly disturbed: the test proves little"
    assert missing == [], f"{len(missing)} jobs were never notified"
    assert duplicated == 0, FIGURES
