"""The worker process: SQS long-poll loop, message heartbeats, graceful shutdown, the
dead-letter and upload-expiry sweeps, and backlog metrics for queue-depth autoscaling."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from async_worker.messages import job_ids
from async_worker.runner import JobRunner, Outcome
from gateway.adapters.emf import emf
from gateway.errors import DependencyUnavailableError
from gateway.jobs import FINISHED, expire_uploads
from gateway.ports import JobStore

log = Logger(service="infergw-worker")


@dataclass
class QueueConfig:
    queue_url: str
    dlq_url: str = ""
    wait_s: int = 20  # long polling: an idle worker costs one request per 20 s
    visibility_s: int = 60
    max_receives: int = 3  # the queue's redrive maxReceiveCount
    concurrency: int = 1
    sweep_every_s: float = 15.0
    shutdown_grace_s: float = 20.0


class Heartbeat:
    """Keeps a message invisible while its job runs, however long that is."""

    def __init__(self, sqs: Any, queue_url: str, receipt: str, visibility_s: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(sqs, queue_url, receipt, visibility_s), daemon=True
        )
        self._thread.start()

    def _beat(self, sqs: Any, queue_url: str, receipt: str, visibility_s: int) -> None:
        while not self._stop.wait(visibility_s / 3):
            try:
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(self, runner: JobRunner, sqs: Any, jobs: JobStore, config: QueueConfig) -> None:
        self.runner = runner
        self._sqs = sqs
        self._jobs = jobs
        self.config = config
        self.stop = threading.Event()
        self.messages = 0

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._poll, name=f"poller-{i}", daemon=True)
            for i in range(self.config.concurrency)
        ]
        threads.append(threading.Thread(target=self._sweep, name="sweeper", daemon=True))
        for t in threads:
            t.start()
        self.stop.wait()
        # Graceful: pollers finish their current job, or release it once the grace ends.
        deadline = time.monotonic() + self.config.shutdown_grace_s
        timer = threading.Timer(self.config.shutdown_grace_s, self.runner.shutting_down.set)
        timer.start()
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic() + 5))
        timer.cancel()

    def _poll(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self._sqs.receive_message(
                    QueueUrl=self.config.queue_url,
                    MaxNumberOfMessages=1,
                    WaitTimeSeconds=self.config.wait_s,
                    VisibilityTimeout=self.config.visibility_s,
                    AttributeNames=["ApproximateReceiveCount"],
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("receive failed: %s", exc)
                self.stop.wait(1.0)
                continue
            for message in reply.get("Messages", []):
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        self.messages += 1
        receipt = message["ReceiptHandle"]
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        heartbeat = Heartbeat(self._sqs, self.config.queue_url, receipt, self.config.visibility_s)
        outcomes = []
        try:
            for job_id in job_ids(message.get("Body", "")):
                try:
                    outcomes.append(self.runner.handle(job_id, count, self.config.max_receives))
                except DependencyUnavailableError as exc:
                    log.warning("job %s: store unavailable: %s", job_id, exc.detail)
                    outcomes.append(Outcome.RETRY)
        finally:
            heartbeat.stop()
        try:
            if all(o is Outcome.DONE for o in outcomes):
                self._sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)
            elif Outcome.RETRY in outcomes:
                # Released on shutdown: another worker may have it now. A failed attempt:
                # back off exponentially rather than waiting out the whole visibility.
                delay = 0 if self.runner.shutting_down.is_set() else 2**count
                self._sqs.change_message_visibility(
                    QueueUrl=self.config.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=min(self.config.visibility_s, delay),
                )
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not settle message: %s", exc)

    def _sweep(self) -> None:
        while not self.stop.wait(self.config.sweep_every_s):
            try:
                self.drain_dead_letters()
                for job in expire_uploads(self._jobs, time.time()):
                    log.info("upload never arrived, job expired", extra={"job_id": job.job_id})
                self.report_backlog()
            except (ClientError, BotoCoreError, DependencyUnavailableError) as exc:
                log.warning("sweep failed: %s", exc)

    def drain_dead_letters(self) -> int:
        """Jobs whose message died (poison, or workers killed on it every time) are marked
        FAILED with a reason and notified; nothing is lost silently."""
        if not self.config.dlq_url:
            return 0
        reply = self._sqs.receive_message(
            QueueUrl=self.config.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        messages = reply.get("Messages", [])
        for message in messages:
            for job_id in job_ids(message.get("Body", "")):
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                if job.status in FINISHED:
                    # Finished, then the worker died before notifying, on the last delivery.
                    self.runner.notify_pending(job)
                else:
                    self.runner.fail_dead_letter(job)
        # Left in the DLQ for operators to inspect or redrive; seen again only after its
        # visibility timeout, and then a no-op for jobs already FAILED.
        return len(messages)

    def report_backlog(self) -> dict[str, float]:
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.config.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        visible = int(attributes.get("ApproximateNumberOfMessages", 0))
        metrics = {
            "Backlog": visible,
            "InFlight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "BacklogPerWorker": visible / max(1, self.config.concurrency),
            "JobsCompleted": self.runner.completed,
            "JobsFailed": self.runner.failed,
            "RowsProcessed": self.runner.rows,
        }
        print(emf(metrics, queue=self.config.queue_url.rsplit("/", 1)[-1]), flush=True)
        return metrics
