"""Provisioning the emulator from ``template.yaml`` (its own CloudFormation) and loading
models, policies and a demo key into what it created."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.dynamodb import DynamoDBKeyStore
from gateway.adapters.dynamodb_policies import DynamoDBPolicyStore
from gateway.admin import KeyAdmin
from gateway.models import ModelPolicy


@dataclass(frozen=True)
class StackOutputs:
    policies_table: str
    keys_table: str
    limits_table: str
    usage_table: str
    jobs_table: str
    bucket: str
    jobs_queue_url: str
    jobs_dlq_url: str
    succeeded_topic_arn: str
    failed_topic_arn: str

    def environment(self) -> dict[str, str]:
        """The variables ``template.yaml`` gives the functions, for local processes."""
        return {
            "INFERGW_POLICIES_TABLE": self.policies_table,
            "INFERGW_KEYS_TABLE": self.keys_table,
            "INFERGW_LIMITS_TABLE": self.limits_table,
            "INFERGW_USAGE_TABLE": self.usage_table,
            "INFERGW_JOBS_TABLE": self.jobs_table,
            "INFERGW_BUCKET": self.bucket,
            "INFERGW_JOBS_QUEUE_URL": self.jobs_queue_url,
            "INFERGW_JOBS_DLQ_URL": self.jobs_dlq_url,
            "INFERGW_JOB_SUCCEEDED_TOPIC_ARN": self.succeeded_topic_arn,
            "INFERGW_JOB_FAILED_TOPIC_ARN": self.failed_topic_arn,
        }


_OUTPUT_FIELDS = {
    "PoliciesTableName": "policies_table",
    "KeysTableName": "keys_table",
    "LimitsTableName": "limits_table",
    "UsageTableName": "usage_table",
    "JobsTableName": "jobs_table",
    "ArtifactsBucketName": "bucket",
    "JobsQueueUrl": "jobs_queue_url",
    "JobsDeadLetterQueueUrl": "jobs_dlq_url",
    "JobSucceededTopicArn": "succeeded_topic_arn",
    "JobFailedTopicArn": "failed_topic_arn",
}


def deploy_template(
    cloudformation: Any,
    template: Path,
    stack_name: str,
    parameters: dict[str, str],
    timeout_s: float = 120,
) -> StackOutputs:
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=template.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            break
        if not status.endswith("IN_PROGRESS") or time.monotonic() > deadline:
            raise RuntimeError(f"stack {stack_name}: {status} {stack.get('StackStatusReason', '')}")
        time.sleep(0.2)  # polling CloudFormation's own status, with a deadline
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [k for k in _OUTPUT_FIELDS if k not in outputs]
    if missing:
        raise RuntimeError(f"stack {stack_name} lacks outputs {missing}")
    return StackOutputs(**{field: outputs[key] for key, field in _OUTPUT_FIELDS.items()})


def model_key(name: str, version: str) -> str:
    return f"models/{name}/{version}/model.onnx"


def upload_models(s3: Any, bucket: str, models_dir: Path) -> list[str]:
    uris = []
    for path in sorted(models_dir.glob("*/*/model.onnx")):
        version, name = path.parent.name, path.parent.parent.name
        key = model_key(name, version)
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        uris.append(f"s3://{bucket}/{key}")
    return uris


def put_policies(store: DynamoDBPolicyStore, docs: list[dict[str, Any]]) -> list[ModelPolicy]:
    stored = []
    for doc in docs:
        policy = ModelPolicy.model_validate(doc)
        current = store.get(policy.model)
        if current is not None:
            policy = policy.model_copy(update={"revision": current.revision})
        stored.append(store.put(policy))
    return stored


def create_keys(store: DynamoDBKeyStore, tenants: list[dict[str, Any]]) -> dict[str, str]:
    """One new key per tenant entry; the plaintexts are returned once, by tenant."""
    admin = KeyAdmin(store)
    keys = {}
    for spec in tenants:
        key, _ = admin.create(spec["tenant"], spec["scopes"], spec.get("tier", "standard"))
        keys[spec["tenant"]] = key
    return keys
