"""DynamoDB store for policies (pydantic validates them: apart from the key store)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from gateway.adapters.dynamodb import DynamoDBTable
from gateway.errors import ConflictError, DependencyUnavailableError
from gateway.models import ModelPolicy


class DynamoDBPolicyStore(DynamoDBTable):
    """One item per model: the validated policy document and its revision number, which
    every update must match (optimistic concurrency)."""

    def get(self, model: str) -> ModelPolicy | None:
        item = self._call("get_item", Key={"model": {"S": model}}, ConsistentRead=False).get("Item")
        return None if item is None else _policy(item)

    def list(self) -> list[ModelPolicy]:
        return [_policy(item) for item in self._scan()]

    def put(self, policy: ModelPolicy) -> ModelPolicy:
        stored = policy.model_copy(update={"revision": policy.revision + 1})
        condition: dict[str, Any]
        if policy.revision == 0:
            condition = {"ConditionExpression": "attribute_not_exists(model)"}
        else:
            condition = {
                "ConditionExpression": "revision = :read",
                "ExpressionAttributeValues": {":read": {"N": str(policy.revision)}},
            }
        try:
            self._call(
                "put_item",
                Item={
                    "model": {"S": stored.model},
                    "revision": {"N": str(stored.revision)},
                    "doc": {"S": stored.model_dump_json()},
                },
                **condition,
            )
        except ClientError as exc:
            raise ConflictError(
                f"Policy '{policy.model}' changed since revision {policy.revision} was read.",
                model=policy.model,
            ) from exc
        return stored

    def delete(self, model: str) -> None:
        self._call("delete_item", Key={"model": {"S": model}})


def _policy(item: dict[str, Any]) -> ModelPolicy:
    try:
        return ModelPolicy.model_validate_json(item["doc"]["S"])
    except (KeyError, ValidationError) as exc:
        model = item.get("model", {}).get("S", "?")
        raise DependencyUnavailableError(f"The stored policy of '{model}' is invalid.") from exc
