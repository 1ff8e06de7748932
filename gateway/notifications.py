"""Job notifications in the shape of SageMaker Async Inference's SNS messages, with the
message attributes apps filter on (tenant, model, status)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.jobs import Job, JobStatus


@dataclass(frozen=True)
class Notification:
    succeeded: bool
    message: dict[str, Any]
    attributes: dict[str, str]
    dedup_id: str  # the job id: one notification per job, so subscribers can dedupe


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def for_job(job: Job, bucket: str, region: str, output_type: str = "") -> Notification:
    succeeded = job.status is JobStatus.COMPLETED
    message: dict[str, Any] = {
        "awsRegion": region,
        "eventTime": _iso(job.finished_at or time.time()),
        "receivedTime": _iso(job.created_at),
        "invocationStatus": "Completed" if succeeded else "Failed",
        "requestParameters": {
            "contentType": job.content_type,
            "model": job.model,
            "modelVersion": job.version,
            "variant": job.variant,
            "inputLocation": f"s3://{bucket}/{job.input_key}",
        },
        "inferenceId": job.inference_id or job.job_id,
        "jobId": job.job_id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    if succeeded:
        message["responseParameters"] = {
            "contentType": output_type,
            "outputLocation": f"s3://{bucket}/{job.output_key}",
            "records": job.records_done,
        }
    else:
        message["failureReason"] = job.failure_reason or job.status.value
        message["responseParameters"] = {"failureLocation": f"s3://{bucket}/{job.error_key}"}
    return Notification(
        succeeded=succeeded,
        message=message,
        attributes={"tenant": job.tenant, "model": job.model, "status": job.status.value},
        dedup_id=job.job_id,
    )
