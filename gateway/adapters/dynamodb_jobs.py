"""Jobs in DynamoDB. Every write is conditional on the state it was read in (and on the
lease owner for leased jobs), which is what makes at-least-once delivery safe."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import ConflictError, DependencyUnavailableError
from gateway.jobs import Job, JobStatus, can_move

RETENTION_S = 7 * 86_400


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def _item(job: Job) -> dict[str, Any]:
    doc = dataclasses.asdict(job)
    doc["status"] = job.status.value
    item: dict[str, Any] = {
        "job_id": {"S": job.job_id},
        "tenant": {"S": job.tenant},
        "created_at": {"S": _iso(job.created_at)},
        "status": {"S": job.status.value},
        "lease_owner": {"S": job.lease_owner or "-"},
        "doc": {"S": json.dumps(doc)},
        # DynamoDB's TTL purges old jobs; upload expiry is a state, decided by the sweeper.
        "purge_at": {"N": str(int(job.created_at + RETENTION_S))},
    }
    if job.idempotency_key:
        item["idem"] = {"S": f"{job.tenant}#{job.idempotency_key}"}
    return item


def _job(item: dict[str, Any]) -> Job:
    doc = json.loads(item["doc"]["S"])
    doc["status"] = JobStatus(doc["status"])
    return Job(**doc)


class DynamoDBJobStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def create(self, job: Job) -> None:
        if job.idempotency_key:
            # A marker item makes the key unique per tenant, atomically.
            marker = {
                "job_id": {"S": f"idem#{job.tenant}#{job.idempotency_key}"},
                "target": {"S": job.job_id},
                "purge_at": {"N": str(int(job.created_at + RETENTION_S))},
            }
            if not self._put(marker, "attribute_not_exists(job_id)", {}):
                raise ConflictError("A job with this Idempotency-Key exists.")
        if not self._put(_item(job), "attribute_not_exists(job_id)", {}):
            raise ConflictError(f"Job {job.job_id} exists.")

    def get(self, job_id: str) -> Job | None:
        item = self._call("get_item", Key={"job_id": {"S": job_id}}, ConsistentRead=True).get(
            "Item"
        )
        return None if item is None or "doc" not in item else _job(item)

    def transition(self, job: Job, to: JobStatus, **updates: object) -> Job | None:
        if not can_move(job.status, to):
            return None
        return self._replace(job, dataclasses.replace(job, status=to, **updates))  # type: ignore[arg-type]

    def update(self, job: Job, **updates: object) -> Job | None:
        return self._replace(job, dataclasses.replace(job, **updates))  # type: ignore[arg-type]

    def list_for_tenant(self, tenant: str, limit: int) -> list[Job]:
        page = self._call(
            "query",
            IndexName="by-tenant",
            KeyConditionExpression="tenant = :t",
            ExpressionAttributeValues={":t": {"S": tenant}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [_job(item) for item in page.get("Items", []) if "doc" in item]

    def find_by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        marker = self._call(
            "get_item", Key={"job_id": {"S": f"idem#{tenant}#{key}"}}, ConsistentRead=True
        ).get("Item")
        return None if marker is None else self.get(marker["target"]["S"])

    def recent(self, limit: int) -> list[Job]:
        """Newest first, by a scan: for an operator's page, not for the request path."""
        items = self._call("scan", Limit=500).get("Items", [])
        jobs = [_job(item) for item in items if "doc" in item]
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)[:limit]

    def pending_uploads(self, expired_before: float) -> list[Job]:
        found: list[Job] = []
        start: dict[str, Any] | None = None
        while True:
            page = self._call(
                "scan",
                FilterExpression="#s = :pending",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":pending": {"S": JobStatus.PENDING_UPLOAD.value}},
                **({"ExclusiveStartKey": start} if start else {}),
            )
            for item in page.get("Items", []):
                job = _job(item)
                if job.expires_at is not None and job.expires_at < expired_before:
                    found.append(job)
            start = page.get("LastEvaluatedKey")
            if not start:
                return found

    def _replace(self, old: Job, new: Job) -> Job | None:
        new = dataclasses.replace(new, updated_at=time.time())
        ok = self._put(
            _item(new),
            "#s = :status AND lease_owner = :owner",
            {":status": {"S": old.status.value}, ":owner": {"S": old.lease_owner or "-"}},
        )
        return new if ok else None

    def _put(self, item: dict[str, Any], condition: str, values: dict[str, Any]) -> bool:
        kwargs: dict[str, Any] = {"ConditionExpression": condition}
        if values:
            kwargs["ExpressionAttributeValues"] = values
            kwargs["ExpressionAttributeNames"] = {"#s": "status"}
        try:
            self._client.put_item(TableName=self._table, Item=item, **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise DependencyUnavailableError(
                "The jobs table is unavailable.", retry_after_s=2
            ) from exc
        except BotoCoreError as exc:
            raise DependencyUnavailableError(
                "The jobs table is unreachable.", retry_after_s=2
            ) from exc
        return True

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(TableName=self._table, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError(
                "The jobs table is unavailable.", retry_after_s=2
            ) from exc
