"""DynamoDB stores for API keys and usage (policies, which pydantic validates, are in
:mod:`gateway.adapters.dynamodb_policies`: the authorizer never imports pydantic)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import DependencyUnavailableError
from gateway.values import ApiKeyRecord


class DynamoDBTable:
    """Shared error translation: any SDK failure becomes ``DependencyUnavailableError``."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(TableName=self._table, **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise
            raise DependencyUnavailableError(
                f"The table {self._table} is unavailable.", retry_after_s=1
            ) from exc
        except BotoCoreError as exc:
            raise DependencyUnavailableError(
                f"The table {self._table} is unreachable.", retry_after_s=1
            ) from exc

    def _scan(self) -> Iterator[dict[str, Any]]:
        start: dict[str, Any] | None = None
        while True:
            page = self._call("scan", **({"ExclusiveStartKey": start} if start else {}))
            yield from page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if not start:
                return


class DynamoDBUsageStore(DynamoDBTable):
    """One item per tenant, day and model; counters only ever ADDed, so concurrent
    flushes from many gateway instances never lose a count."""

    def add(self, counts: dict[tuple[str, str, str], tuple[int, int]]) -> None:
        for written, ((tenant, day, model), (requests, errors)) in enumerate(counts.items()):
            try:
                self._add(tenant, day, model, requests, errors)
            except DependencyUnavailableError as exc:
                raise DependencyUnavailableError(exc.detail, written=written) from exc

    def _add(self, tenant: str, day: str, model: str, requests: int, errors: int) -> None:
        self._call(
            "update_item",
            Key={"tenant": {"S": tenant}, "day_model": {"S": f"{day}#{model}"}},
            UpdateExpression="ADD requests :r, errors :e",
            ExpressionAttributeValues={":r": {"N": str(requests)}, ":e": {"N": str(errors)}},
        )

    def query(self, tenant: str, since_day: str | None = None) -> list[dict[str, object]]:
        condition = "tenant = :t"
        values: dict[str, Any] = {":t": {"S": tenant}}
        if since_day:
            condition += " AND day_model >= :d"
            values[":d"] = {"S": since_day}
        rows: list[dict[str, object]] = []
        start: dict[str, Any] | None = None
        while True:
            page = self._call(
                "query",
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                **({"ExclusiveStartKey": start} if start else {}),
            )
            for item in page.get("Items", []):
                day, _, model = item["day_model"]["S"].partition("#")
                rows.append(
                    {
                        "tenant": tenant,
                        "day": day,
                        "model": model,
                        "requests": int(item.get("requests", {}).get("N", 0)),
                        "errors": int(item.get("errors", {}).get("N", 0)),
                    }
                )
            start = page.get("LastEvaluatedKey")
            if not start:
                return rows


class DynamoDBKeyStore(DynamoDBTable):
    def get(self, key_digest: str) -> ApiKeyRecord | None:
        item = self._call(
            "get_item", Key={"key_digest": {"S": key_digest}}, ConsistentRead=True
        ).get("Item")
        return None if item is None else _key(item)

    def _by_key_id(self, key_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call(
            "query",
            IndexName="by-key-id",
            KeyConditionExpression="key_id = :k",
            ExpressionAttributeValues={":k": {"S": key_id}},
        ).get("Items", [])
        return items

    def find(self, key_id: str) -> ApiKeyRecord | None:
        items = self._by_key_id(key_id)
        if not items:
            return None
        # The index may lag; read the item itself for the current revocation state.
        return self.get(items[0]["key_digest"]["S"])

    def list(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        records = [_key(item) for item in self._scan()]
        return [r for r in records if tenant is None or r.tenant == tenant]

    def touch(self, key_id: str, when: str) -> None:
        """Record when a key was last used (best effort, batched by the caller)."""
        for item in self._by_key_id(key_id):
            self._call(
                "update_item",
                Key={"key_digest": item["key_digest"]},
                UpdateExpression="SET last_used_at = :w",
                ExpressionAttributeValues={":w": {"S": when}},
            )

    def put(self, record: ApiKeyRecord) -> None:
        doc = {
            "key_id": record.key_id,
            "tenant": record.tenant,
            "scopes": sorted(record.scopes),
            "tier": record.tier,
            "allowed_models": None
            if record.allowed_models is None
            else sorted(record.allowed_models),
            "created_at": record.created_at,
            "revoked_at": record.revoked_at,
        }
        self._call(
            "put_item",
            Item={
                "key_digest": {"S": record.key_digest},
                "key_id": {"S": record.key_id},
                "tenant": {"S": record.tenant},
                "doc": {"S": json.dumps(doc)},
            },
        )


def _key(item: dict[str, Any]) -> ApiKeyRecord:
    doc = json.loads(item["doc"]["S"])
    doc["last_used_at"] = item.get("last_used_at", {}).get("S")
    models = doc.get("allowed_models")
    return ApiKeyRecord(
        key_digest=item["key_digest"]["S"],
        key_id=doc["key_id"],
        tenant=doc["tenant"],
        scopes=frozenset(doc["scopes"]),
        tier=doc.get("tier", "standard"),
        allowed_models=None if models is None else frozenset(models),
        created_at=doc.get("created_at", ""),
        revoked_at=doc.get("revoked_at"),
        last_used_at=doc.get("last_used_at"),
    )
