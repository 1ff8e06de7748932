"""Scheduled: jobs whose presigned upload expired without an input become EXPIRED."""

from __future__ import annotations

import functools
import time
from typing import Any

from functions.coldstart import paused_gc

with paused_gc():  # a cold start's imports: functions/coldstart.py
    from aws_lambda_powertools import Logger

    from gateway.adapters import aws
    from gateway.adapters.dynamodb_jobs import DynamoDBJobStore
    from gateway.jobs import expire_uploads
    from gateway.settings import Settings

logger = Logger(service="infergw-sweeper")


@functools.cache
def _jobs() -> DynamoDBJobStore:
    """One client per execution environment, as the other handlers keep theirs: creating
    one on every scheduled call cost 5-7 ms of each warm call."""
    return DynamoDBJobStore(aws.client("dynamodb"), Settings.from_environ().jobs_table)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    expired = expire_uploads(_jobs(), time.time())
    for job in expired:
        logger.info("upload never arrived", extra={"job_id": job.job_id, "tenant": job.tenant})
    return {"expired": len(expired)}
