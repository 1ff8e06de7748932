"""What the emulator's CloudFormation silently skips, applied from the same template right
after the deploy: a bucket's S3 -> SQS notifications and SNS subscriptions. Local and
deployed wiring therefore cannot drift; tests check the wiring works end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !GetAtt, !Sub, ...)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.load(path.read_text(), Loader=_CfnLoader)
    return doc


class _Resolver:
    def __init__(self, cloudformation: Any, sqs: Any, sns: Any, stack: str) -> None:
        resources = cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
        self.physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in resources
            if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
        }
        self._sqs = sqs

    def value(self, node: Any) -> Any:
        if isinstance(node, dict) and "Ref" in node:
            return self.physical[node["Ref"]]
        if isinstance(node, dict) and "Fn::GetAtt" in node:
            logical, attribute = node["Fn::GetAtt"]
            if attribute == "Arn":
                return self.queue_arn(self.physical[logical])
            raise ValueError(f"cannot resolve {node}")
        return node

    def queue_arn(self, queue: str) -> str:
        if queue.startswith("arn:"):
            return queue
        attributes = self._sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])


def apply_skipped_wiring(
    template: dict[str, Any], stack: str, cloudformation: Any, s3: Any, sqs: Any, sns: Any
) -> list[str]:
    """Apply bucket notifications and SNS subscriptions; returns what was applied."""
    resolve = _Resolver(cloudformation, sqs, sns, stack)
    applied = []
    for logical, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::S3::Bucket" and "NotificationConfiguration" in properties:
            queues = []
            for config in properties["NotificationConfiguration"].get("QueueConfigurations", []):
                rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
                queues.append(
                    {
                        "QueueArn": resolve.value(config["Queue"]),
                        "Events": [config["Event"]],
                        "Filter": {
                            "Key": {
                                "FilterRules": [
                                    {"Name": r["Name"], "Value": r["Value"]} for r in rules
                                ]
                            }
                        },
                    }
                )
            s3.put_bucket_notification_configuration(
                Bucket=resolve.physical[logical],
                NotificationConfiguration={"QueueConfigurations": queues},
            )
            applied.append(f"{logical}: {len(queues)} S3 -> SQS notification(s)")
        if resource["Type"] == "AWS::SNS::Subscription":
            endpoint = resolve.value(properties["Endpoint"])
            attributes = {}
            if "FilterPolicy" in properties:
                import json

                attributes["FilterPolicy"] = json.dumps(properties["FilterPolicy"])
            if properties.get("RawMessageDelivery"):
                attributes["RawMessageDelivery"] = "true"
            sns.subscribe(
                TopicArn=resolve.value(properties["TopicArn"]),
                Protocol=properties["Protocol"],
                Endpoint=endpoint,
                Attributes=attributes,
            )
            applied.append(f"{logical}: SNS subscription ({properties['Protocol']})")
    return applied
