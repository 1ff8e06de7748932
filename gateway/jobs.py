"""Async jobs: the state machine and the gateway's side of it (create, read, list, cancel).

PENDING_UPLOAD -> QUEUED -> RUNNING -> COMPLETED | FAILED;  CANCELLED;  EXPIRED.
Every transition is a conditional write on the expected current state, so concurrent
workers, redeliveries and cancellations cannot overwrite each other."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from gateway.auth import require_scope
from gateway.errors import ConflictError, NotAcceptableError, NotFoundError
from gateway.ports import JobStore, PayloadStore
from gateway.values import Principal, Scope

if TYPE_CHECKING:  # the sweeper expires uploads without importing pydantic
    from gateway.models import ModelPolicy


class JobStatus(StrEnum):
    PENDING_UPLOAD = "PENDING_UPLOAD"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


FINISHED = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING_UPLOAD: frozenset(
        {JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.EXPIRED, JobStatus.FAILED}
    ),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # RUNNING -> RUNNING: another worker takes over an expired lease.
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
}


def can_move(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def job_prefix(tenant: str, job_id: str) -> str:
    return f"tenants/{tenant}/jobs/{job_id}/"


@dataclass(frozen=True)
class Job:
    job_id: str
    tenant: str
    model: str
    version: str
    status: JobStatus
    created_at: float
    content_type: str
    accept: str = "application/json"
    variant: str = "primary"
    max_bytes: int = 0
    inference_id: str | None = None
    idempotency_key: str | None = None
    updated_at: float = 0.0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    records_done: int = 0
    records_total: int | None = None
    failure_reason: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    attempts: int = 0
    notified: bool = False
    expires_at: float | None = None  # PENDING_UPLOAD jobs expire; finished ones are purged
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_key(self) -> str:
        return job_prefix(self.tenant, self.job_id) + "input"

    @property
    def output_key(self) -> str:
        return job_prefix(self.tenant, self.job_id) + "output"

    @property
    def error_key(self) -> str:
        return job_prefix(self.tenant, self.job_id) + "error"


# What a job's output can be written as (the worker's encoders); .npy may name the output
# tensor it holds: "application/x-npy; output=label".
JOB_OUTPUT_TYPES = ("application/x-ndjson", "application/json", "text/csv", "application/x-npy")


def check_job_output(accept: str) -> None:
    """Refuse, before anything is created, an output type the worker cannot write."""
    kind = accept.partition(";")[0].strip().lower()
    if kind not in JOB_OUTPUT_TYPES:
        raise NotAcceptableError(
            f"A job's output can be {', '.join(JOB_OUTPUT_TYPES)} "
            "(.npy with an optional '; output=<name>'), not '" + accept[:100] + "'.",
            offered=list(JOB_OUTPUT_TYPES),
        )


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


@dataclass(frozen=True)
class UploadTicket:
    job: Job
    upload: dict[str, Any]  # presigned POST: url + fields


class JobService:
    def __init__(
        self,
        jobs: JobStore,
        payloads: PayloadStore,
        clock: Callable[[], float] = time.time,
        upload_ttl_s: int = 900,
        retention_s: int = 7 * 86_400,
    ) -> None:
        self._jobs = jobs
        self._payloads = payloads
        self._clock = clock
        self.upload_ttl_s = upload_ttl_s
        self.retention_s = retention_s

    def submit_inline(
        self,
        principal: Principal,
        policy: ModelPolicy,
        body: bytes,
        content_type: str,
        accept: str,
        variant: str = "primary",
        version: str | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Job:
        """A small body sent to async: the gateway writes it to S3 itself; the object's
        creation event queues the job exactly as for a presigned upload."""
        existing = self._idempotent(principal, idempotency_key)
        if existing is not None:
            return existing
        job = self._new_job(
            principal,
            policy,
            content_type,
            accept,
            idempotency_key,
            variant=variant,
            version=version or policy.version,
            correlation_id=correlation_id,
        )
        created = self._create(principal, job)
        if created is not job:
            return created  # the same Idempotency-Key won a race a moment ago
        self._payloads.put(job.input_key, body, content_type)
        return job

    def create_upload(
        self,
        principal: Principal,
        policy: ModelPolicy,
        content_type: str,
        accept: str,
        inference_id: str | None,
        idempotency_key: str | None,
        correlation_id: str | None = None,
    ) -> UploadTicket:
        require_scope(principal, Scope.JOBS)
        check_job_output(accept)
        job = self._idempotent(principal, idempotency_key)
        if job is None:
            job = self._create(
                principal,
                self._new_job(
                    principal,
                    policy,
                    content_type,
                    accept,
                    idempotency_key,
                    inference_id=inference_id,
                    correlation_id=correlation_id,
                ),
            )
        upload = self._payloads.presign_upload(
            job.input_key,
            max_bytes=job.max_bytes,
            content_type=job.content_type,
            expires_s=self.upload_ttl_s,
        )
        return UploadTicket(job, upload)

    def _new_job(
        self,
        principal: Principal,
        policy: ModelPolicy,
        content_type: str,
        accept: str,
        idempotency_key: str | None,
        *,
        variant: str = "primary",
        version: str | None = None,
        inference_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Job:
        now = self._clock()
        return Job(
            job_id=new_job_id(),
            tenant=principal.tenant,
            model=policy.model,
            version=version or policy.version,
            status=JobStatus.PENDING_UPLOAD,
            created_at=now,
            updated_at=now,
            content_type=content_type,
            accept=accept,
            variant=variant,
            max_bytes=policy.max_async_bytes,
            inference_id=inference_id,
            idempotency_key=idempotency_key,
            expires_at=now + self.upload_ttl_s,  # the presigned POST's life
            extra={"correlation_id": correlation_id} if correlation_id else {},
        )

    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs of every tenant, for the operator's status page."""
        return self._jobs.recent(limit)

    def get(self, principal: Principal, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        # Another tenant's job is indistinguishable from a missing one.
        if job is None or job.tenant != principal.tenant:
            raise NotFoundError(f"There is no job '{job_id}'.", job_id=job_id)
        return job

    def list(self, principal: Principal, limit: int = 50) -> list[Job]:
        return self._jobs.list_for_tenant(principal.tenant, limit)

    def cancel(self, principal: Principal, job_id: str) -> Job:
        job = self.get(principal, job_id)
        if job.status in FINISHED:
            raise ConflictError(f"Job '{job_id}' is already {job.status.value}.")
        now = self._clock()
        moved = self._jobs.transition(
            job,
            JobStatus.CANCELLED,
            finished_at=now,
            updated_at=now,
            expires_at=now + self.retention_s,
        )
        if moved is None:
            raise ConflictError(f"Job '{job_id}' changed while being cancelled; try again.")
        return moved

    def output_url(self, job: Job, expires_s: int = 900) -> str | None:
        if job.status is not JobStatus.COMPLETED:
            return None
        return self._payloads.presign_download(job.output_key, expires_s)

    def _create(self, principal: Principal, job: Job) -> Job:
        try:
            self._jobs.create(job)
        except ConflictError:
            existing = self._idempotent(principal, job.idempotency_key)
            if existing is None:
                raise
            return existing
        return job

    def _idempotent(self, principal: Principal, key: str | None) -> Job | None:
        if key is None:
            return None
        return self._jobs.find_by_idempotency_key(principal.tenant, key)


def expire_uploads(jobs: JobStore, now: float) -> list[Job]:
    """Jobs whose upload never arrived before the presigned POST expired become EXPIRED."""
    expired = []
    for job in jobs.pending_uploads(expired_before=now):
        moved = jobs.transition(job, JobStatus.EXPIRED, finished_at=now)
        if moved is not None:
            expired.append(moved)
    return expired
