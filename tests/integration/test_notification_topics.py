"""The SNS notifier on the emulator's wire: on a FIFO topic a re-sent notification (a worker
killed between publishing and recording it) reaches an SQS FIFO subscriber once; on a
standard topic it publishes without the FIFO-only parameters, which SNS would refuse."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import boto3

from gateway.adapters.sns import SnsNotifier
from gateway.jobs import Job, JobStatus
from gateway.notifications import for_job
from infergw.local.stack import Connection


def _topic_and_queue(aws: boto3.session.Session, conn: Connection, fifo: bool) -> tuple[str, str]:
    sns = aws.client("sns", endpoint_url=conn.aws_endpoint_url)
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    suffix = ".fifo" if fifo else ""
    name = f"notify-{uuid.uuid4().hex[:8]}{suffix}"
    topic = sns.create_topic(Name=name, Attributes={"FifoTopic": "true"} if fifo else {})
    queue = sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"} if fifo else {})
    arn = sqs.get_queue_attributes(QueueUrl=queue["QueueUrl"], AttributeNames=["QueueArn"])
    sns.subscribe(
        TopicArn=topic["TopicArn"], Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"]
    )
    return topic["TopicArn"], queue["QueueUrl"]


def _received(aws: boto3.session.Session, conn: Connection, queue: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs", endpoint_url=conn.aws_endpoint_url)
    bodies = []
    while True:
        reply = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        )
        if not reply.get("Messages"):
            return bodies
        bodies += [json.loads(m["Body"]) for m in reply["Messages"]]


def _finished_job(job_id: str) -> Job:
    now = time.time()
    return Job(
        job_id=job_id,
        tenant="acme",
        model="digits",
        version="1",
        status=JobStatus.COMPLETED,
        created_at=now - 2,
        finished_at=now,
        content_type="application/json",
        records_done=3,
    )


def test_fifo_topic_delivers_a_resent_notification_once(
    aws: boto3.session.Session, conn: Connection
) -> None:
    topic, queue = _topic_and_queue(aws, conn, fifo=True)
    notifier = SnsNotifier(aws.client("sns", endpoint_url=conn.aws_endpoint_url), topic, topic)
    first, second = _finished_job("job_a"), _finished_job("job_b")
    for job in (first, first, second, first):  # job_a sent three times, as after kills
        notifier.publish(for_job(job, "bucket", conn.region, "application/json"))

    bodies = _received(aws, conn, queue)
    job_ids = sorted(json.loads(b["Message"])["jobId"] for b in bodies)
    assert job_ids == ["job_a", "job_b"]
    attributes = bodies[0]["MessageAttributes"]
    assert attributes["tenant"]["Value"] == "acme"
    assert attributes["status"]["Value"] == "COMPLETED"


def test_standard_topic_publishes_without_fifo_parameters(
    aws: boto3.session.Session, conn: Connection
) -> None:
    topic, queue = _topic_and_queue(aws, conn, fifo=False)
    notifier = SnsNotifier(aws.client("sns", endpoint_url=conn.aws_endpoint_url), topic, topic)
    notifier.publish(for_job(_finished_job("job_c"), "bucket", conn.region, "text/csv"))

    [body] = _received(aws, conn, queue)
    message = json.loads(body["Message"])
    assert message["jobId"] == "job_c"
    assert message["responseParameters"]["contentType"] == "text/csv"


def test_the_test_stack_notifies_on_fifo_topics(conn: Connection) -> None:
    assert conn.resources["INFERGW_JOB_SUCCEEDED_TOPIC_ARN"].endswith("-job-succeeded.fifo")
    assert conn.resources["INFERGW_JOB_FAILED_TOPIC_ARN"].endswith("-job-failed.fifo")
