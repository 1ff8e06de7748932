"""Token buckets in DynamoDB: every lease is one conditional write on the bucket's item."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import DependencyUnavailableError
from gateway.ratelimit import BucketState, Grant, Limit, take

_MAX_ATTEMPTS = 8


class DynamoDBLimitStore:
    """Optimistic concurrency on (tokens, updated): a lost race returns the winner's item
    in the same call (``ReturnValuesOnConditionCheckFailure``), so the common case is one
    round trip per lease and a contended one rarely more than two."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        self._seen: dict[str, BucketState | None] = {}

    def lease(self, limit: Limit, want: int, now: float) -> Grant:
        state = self._seen.get(limit.key, _UNKNOWN)
        for _ in range(_MAX_ATTEMPTS):
            if state is _UNKNOWN:
                state = self._read(limit.key)
            granted, new = take(state, now, limit.rate, limit.burst, want)
            if granted == 0:
                self._seen[limit.key] = state
                return Grant(0, new.tokens)
            conflict, current = self._write(limit, state, new)
            if not conflict:
                self._seen[limit.key] = new
                return Grant(granted, new.tokens)
            state = current
        raise DependencyUnavailableError("The rate-limit store is too contended.", retry_after_s=1)

    def _read(self, key: str) -> BucketState | None:
        item = self._call("get_item", Key={"limit_key": {"S": key}}, ConsistentRead=True).get(
            "Item"
        )
        return _state(item)

    def _write(
        self, limit: Limit, old: BucketState | None, new: BucketState
    ) -> tuple[bool, BucketState | None]:
        item = {
            "limit_key": {"S": limit.key},
            "tokens": {"N": repr(new.tokens)},
            "updated": {"N": repr(new.updated)},
        }
        if limit.expires_at is not None:
            item["expires_at"] = {"N": str(int(limit.expires_at) + 86_400)}
        if old is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(limit_key)"}
        else:
            condition = {
                "ConditionExpression": "tokens = :t AND updated = :u",
                "ExpressionAttributeValues": {
                    ":t": {"N": repr(old.tokens)},
                    ":u": {"N": repr(old.updated)},
                },
            }
        try:
            self._client.put_item(
                TableName=self._table,
                Item=item,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **condition,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return True, _state(exc.response.get("Item")) if "Item" in exc.response else (
                    self._read(limit.key)
                )
            raise DependencyUnavailableError(
                "The rate-limit store is unavailable.", retry_after_s=1
            ) from exc
        except BotoCoreError as exc:
            raise DependencyUnavailableError(
                "The rate-limit store is unreachable.", retry_after_s=1
            ) from exc
        return False, new

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, operation)(TableName=self._table, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError(
                "The rate-limit store is unavailable.", retry_after_s=1
            ) from exc


_UNKNOWN: Any = object()


def _state(item: dict[str, Any] | None) -> BucketState | None:
    if not item:
        return None
    return BucketState(float(item["tokens"]["N"]), float(item["updated"]["N"]))
