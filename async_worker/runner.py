"""Running one job to its end, safely under at-least-once delivery.

Lease, stream, infer, write, complete, notify: each step is a conditional write or an
idempotent object write, so a redelivered message, a crashed worker or a cancellation
can happen between any two steps without a duplicate output or notification."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from aws_lambda_powertools import Logger

from gateway.adapters.emf import emf
from gateway.errors import DependencyUnavailableError, GatewayError
from gateway.jobs import FINISHED, Job, JobStatus
from gateway.notifications import for_job
from gateway.ports import JobStore, Notifier, ObjectStore, ObjectWriter
from model_runtime.onnx_model import OnnxModel
from model_runtime.streaming import NPY, OutputWriter, output_type, read_batches

# Structured JSON logs; every line about a job carries its id and the API request id that
# created it, so one search follows a job through gateway, queue and worker.
log = Logger(service="infergw-worker")


def _keys(job: Job) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "model": job.model,
        "correlation_id": job.extra.get("correlation_id"),
    }


class Outcome(Enum):
    DONE = "done"  # acknowledge the message
    RETRY = "retry"  # leave it: it comes back after its visibility timeout
    BUSY = "busy"  # another worker holds a live lease


class _Stop(Exception):
    """The job must stop here: cancelled, lease lost, or the worker is shutting down."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class ModelCache:
    def __init__(self, objects: ObjectStore, threads: int = 1) -> None:
        self._objects = objects
        self._threads = threads
        self._models: dict[tuple[str, str], OnnxModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str, version: str) -> OnnxModel:
        key = (name, version)
        with self._lock:
            if key not in self._models:
                stream = self._objects.open(f"models/{name}/{version}/model.onnx")
                self._models[key] = OnnxModel(
                    stream.read(), name=name, version=version, intra_op_threads=self._threads
                )
            return self._models[key]


@dataclass
class RunnerConfig:
    worker_id: str
    region: str
    lease_s: float = 60.0
    batch_rows: int = 1024
    # Reads of the input held ready while the model runs (0: read in line): see
    # model_runtime.read_ahead. Worth a second CPU's time whenever the model leaves one idle.
    read_ahead: int = 2
    progress_every_s: float = 1.0


class JobRunner:
    def __init__(
        self,
        config: RunnerConfig,
        jobs: JobStore,
        objects: ObjectStore,
        models: ModelCache,
        notifier: Notifier,
        bucket: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._jobs = jobs
        self._objects = objects
        self._models = models
        self._notifier = notifier
        self._bucket = bucket
        self._clock = clock
        self.shutting_down = threading.Event()
        self.completed = 0
        self.failed = 0
        self.rows = 0

    def handle(self, job_id: str, receive_count: int, max_receives: int) -> Outcome:
        job = self._jobs.get(job_id)
        if job is None:
            log.warning("message for unknown job %s dropped", job_id)
            return Outcome.DONE
        if job.status in FINISHED:
            self.notify_pending(job)  # a redelivery, or a crash between finishing and notifying
            return Outcome.DONE
        now = self._clock()
        if job.status is JobStatus.PENDING_UPLOAD:
            job = self._jobs.transition(job, JobStatus.QUEUED, queued_at=now) or self._jobs.get(
                job_id
            )
            if job is None or job.status in FINISHED:
                return Outcome.DONE
        if job.status is JobStatus.RUNNING and (job.lease_expires or 0) > now:
            return Outcome.BUSY
        leased = self._jobs.transition(
            job,
            JobStatus.RUNNING,
            lease_owner=self.config.worker_id,
            lease_expires=now + self.config.lease_s,
            started_at=job.started_at or now,
            attempts=job.attempts + 1,
        )
        if leased is None:
            return Outcome.BUSY
        log.info("job running", extra={**_keys(leased), "attempt": leased.attempts})
        try:
            self._run(leased)
        except _Stop as stop:
            log.info("job stopped", extra={**_keys(leased), "why": stop.why})
            if stop.why == "shutdown":
                self._release(leased)
                return Outcome.RETRY
            return Outcome.DONE
        except GatewayError as exc:
            if isinstance(exc, DependencyUnavailableError) or exc.status >= 500:
                return self._transient(leased, exc, receive_count, max_receives)
            self._fail(leased, exc.detail)  # the input's fault: retrying cannot help
            return Outcome.DONE
        except Exception as exc:
            log.exception("job hit an unexpected error", extra=_keys(leased))
            return self._transient(leased, exc, receive_count, max_receives)
        return Outcome.DONE

    # -- the work ------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        size = self._objects.size(job.input_key)
        if size is None:
            raise _BadInput("The job's input object is missing.")
        if job.max_bytes and size > job.max_bytes:
            # Presigned POST limits are the client's contract; emulators do not enforce them.
            raise _BadInput(
                f"The input is {size} bytes; this model accepts at most {job.max_bytes}."
            )
        if self._objects.size(f"models/{job.model}/{job.version}/model.onnx") is None:
            raise _BadInput(f"Model {job.model} version {job.version} has no artifact.")
        model = self._models.get(job.model, job.version)
        stream = self._objects.open(job.input_key)
        out: OutputWriter | None = None
        writer: ObjectWriter | None = None
        done = 0
        last_progress = self._clock()
        try:
            # An .npy input's header is read here: a bad one fails the job before any output.
            batches = read_batches(
                stream, job.content_type, self.config.batch_rows, model.info.features
            )
            out = OutputWriter(job.accept, rows=batches.rows)
            writer = self._objects.writer(job.output_key, out.content_type)
            # The next reads (socket reads, the NaN check, parsing) run while the model
            # works on this one; the reading thread has ended when the block is left.
            with batches.read_ahead(self.config.read_ahead) as ahead:
                for _first, matrix in ahead:
                    if self.shutting_down.is_set():
                        raise _Stop("shutdown")
                    chunk = out.batch(model.predict(matrix))
                    if chunk:
                        writer.write(chunk)
                    done += len(matrix)
                    now = self._clock()
                    if now - last_progress >= self.config.progress_every_s:
                        job = self._progress(job, done, batches.rows, now)
                        last_progress = now
            if not out.started and out.content_type == NPY:
                # No rows: the .npy header still needs the output's dtype and row shape.
                empty = np.zeros((0, model.info.features or 0), dtype=np.float32)
                writer.write(out.batch(model.predict(empty)))
            for chunk in out.end():
                writer.write(chunk)
            writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            if out is not None:
                out.close()
            stream.close()
        now = self._clock()
        completed = self._jobs.transition(
            job,
            JobStatus.COMPLETED,
            finished_at=now,
            records_done=done,
            records_total=done,
            lease_owner=None,
            lease_expires=None,
        )
        if completed is None:
            current = self._jobs.get(job.job_id)
            if current is not None and current.status in (JobStatus.CANCELLED, JobStatus.FAILED):
                # Ended elsewhere while this worker ran (cancelled, or failed by a sweep after
                # its lease lapsed): the output committed just now must not survive.
                self._objects.delete(job.output_key)
                raise _Stop(current.status.value.lower())
            raise _Stop("lease lost")
        self.completed += 1
        self.rows += done
        log.info("job completed", extra={**_keys(completed), "rows": done})
        print(emf(_job_metrics(completed), model=job.model), flush=True)
        self._notify(completed)

    def _progress(self, job: Job, done: int, total: int | None, now: float) -> Job:
        updated = self._jobs.update(
            job,
            records_done=done,
            records_total=total if total is not None else job.records_total,
            lease_expires=now + self.config.lease_s,
        )
        if updated is not None:
            return updated
        current = self._jobs.get(job.job_id)
        raise _Stop(
            "cancelled" if current and current.status is JobStatus.CANCELLED else "lease lost"
        )

    def _fail(self, job: Job, reason: str) -> None:
        error = {"job_id": job.job_id, "status": "FAILED", "reason": reason}
        self._objects.put(job.error_key, json.dumps(error).encode(), "application/json")
        failed = self._jobs.transition(
            job,
            JobStatus.FAILED,
            failure_reason=reason,
            finished_at=self._clock(),
            lease_owner=None,
            lease_expires=None,
        )
        if failed is not None:
            self._discard_output(failed)
            self.failed += 1
            log.info("job failed", extra={**_keys(failed), "reason": reason})
            self._notify(failed)

    def fail_dead_letter(self, job: Job) -> None:
        reason = "The job's message reached the dead-letter queue after repeated failures."
        if job.status is JobStatus.RUNNING:
            self._fail(job, reason)
            return
        current = self._jobs.transition(
            job, JobStatus.FAILED, failure_reason=reason, finished_at=self._clock()
        )
        if current is not None:
            error = {"job_id": job.job_id, "status": "FAILED", "reason": reason}
            self._objects.put(job.error_key, json.dumps(error).encode(), "application/json")
            self._discard_output(current)
            self.failed += 1
            self._notify(current)

    def _discard_output(self, job: Job) -> None:
        """Only a COMPLETED job has an output. An earlier attempt may have committed one and
        died before recording completion; a worker still running when the job failed deletes
        its own when its completion write loses (see _run)."""
        self._objects.delete(job.output_key)

    def _transient(
        self, job: Job, exc: Exception, receive_count: int, max_receives: int
    ) -> Outcome:
        reason = getattr(exc, "detail", None) or f"{type(exc).__name__}"
        if receive_count >= max_receives:
            # Last delivery: the message goes to the DLQ next; the job must not hang.
            self._fail(job, f"Gave up after {receive_count} attempts: {reason}")
            return Outcome.RETRY
        log.warning("job failed transiently, will retry", extra={**_keys(job), "reason": reason})
        self._release(job)
        return Outcome.RETRY

    def _release(self, job: Job) -> None:
        """Let another worker take the job at once instead of waiting out the lease."""
        with contextlib.suppress(DependencyUnavailableError):  # else it expires on its own
            self._jobs.update(job, lease_expires=self._clock())

    def notify_pending(self, job: Job) -> None:
        """Send the notification of a finished job if it was never recorded as sent."""
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED) and not job.notified:
            # Whoever finished the job died before recording the notification as sent.
            log.info("notification sent late", extra=_keys(job))
            self._notify(job)

    def _notify(self, job: Job) -> None:
        # The same message whoever sends it, with the job id as its deduplication id.
        self._notifier.publish(
            for_job(job, self._bucket, self.config.region, output_type(job.accept))
        )
        # Marked after publishing: a crash in between re-sends rather than loses it. The
        # re-send comes with the job message's next delivery, within the queue's visibility
        # timeout - inside the five minutes a FIFO topic deduplicates over.
        self._jobs.update(job, notified=True)


def _job_metrics(job: Job) -> dict[str, float]:
    """Duration (running), age (created to finished) and size of a finished job."""
    end = job.finished_at or 0.0
    return {
        "JobSeconds": end - (job.started_at or end),
        "JobAgeSeconds": end - job.created_at,
        "JobRows": float(job.records_done),
    }


class _BadInput(GatewayError):
    status, slug, title = 422, "bad-input", "The job's input cannot be processed"
