"""``/v1/jobs`` and ``/v1/models/{model}/jobs``: async inference for large inputs."""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from functions import bootstrap
from functions.api.context import headers, json_body, principal
from gateway import payload
from gateway.errors import BackendUnavailableError, MalformedRequestError
from gateway.hints import parse_hints
from gateway.jobs import Job, JobService
from gateway.values import Scope

router = Router()  # type: ignore[no-untyped-call]


def _event() -> APIGatewayProxyEventV2:
    return cast(APIGatewayProxyEventV2, router.current_event)


def _jobs() -> JobService:
    jobs = bootstrap.gateway().jobs
    if jobs is None:
        raise BackendUnavailableError("Async jobs are not configured here.", retry_after_s=60)
    return jobs


def job_view(job: Job, jobs: JobService) -> dict[str, Any]:
    view: dict[str, Any] = {
        "job_id": job.job_id,
        "model": job.model,
        "version": job.version,
        "variant": job.variant,
        "status": job.status.value,
        "inference_id": job.inference_id,
        "progress": {"records_done": job.records_done, "records_total": job.records_total},
        "timings": {
            "created_at": job.created_at,
            "queued_at": job.queued_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        },
        "status_url": f"/v1/jobs/{job.job_id}",
    }
    if job.failure_reason:
        view["failure_reason"] = job.failure_reason
    output = jobs.output_url(job)
    if output:
        view["output_url"] = output
    return view


@router.post(
    "/v1/models/<model>/jobs",
    summary="Create an async job and get a presigned upload for its input",
    description="Optional JSON body: content_type, accept, inference_id. Upload the input "
    "with the returned POST form; the job starts when the object lands.",
)
def create_job(model: str) -> Response[str]:
    event = _event()
    caller = principal(event, Scope.JOBS)
    options = json_body(event) if event.body else {}
    if not isinstance(options, dict):
        raise MalformedRequestError("The body must be a JSON object of job options.")
    content_type = payload.media_type(str(options.get("content_type", "application/x-ndjson")))
    inference_id = options.get("inference_id")
    if inference_id is not None and (not isinstance(inference_id, str) or len(inference_id) > 64):
        raise MalformedRequestError("inference_id must be a string of at most 64 characters.")
    hints = parse_hints(headers(event))
    gateway = bootstrap.gateway()
    policy = gateway.policy_for(caller, model)
    if not policy.async_enabled:
        raise MalformedRequestError(f"Model '{model}' does not accept async jobs.")
    jobs = _jobs()
    ticket = jobs.create_upload(
        caller,
        policy,
        content_type,
        # Rows in, one line of predictions out per row: NDJSON unless asked otherwise.
        str(options.get("accept", "application/x-ndjson")),
        inference_id,
        hints.idempotency_key,
        correlation_id=event.request_context.request_id,
    )
    body = {**job_view(ticket.job, jobs), "upload": ticket.upload}
    return Response(
        201,
        "application/json",
        json.dumps(body),
        headers={"Location": f"/v1/jobs/{ticket.job.job_id}"},
    )


@router.get("/v1/jobs/<job_id>", summary="A job's status, progress, timings and output")
def get_job(job_id: str) -> dict[str, Any]:
    jobs = _jobs()
    return job_view(jobs.get(principal(_event()), job_id), jobs)


@router.get("/v1/jobs", summary="The caller's jobs, newest first")
def list_jobs(limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[dict[str, Any]]:
    jobs = _jobs()
    return [job_view(j, jobs) for j in jobs.list(principal(_event()), limit)]


@router.delete("/v1/jobs/<job_id>", summary="Cancel a job that has not finished")
def cancel_job(job_id: str) -> dict[str, Any]:
    jobs = _jobs()
    return job_view(jobs.cancel(principal(_event(), Scope.JOBS), job_id), jobs)
