"""Job notifications to SNS: success and failure topics, filterable attributes."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import DependencyUnavailableError
from gateway.notifications import Notification


class SnsNotifier:
    def __init__(self, client: Any, succeeded_topic: str, failed_topic: str) -> None:
        self._client = client
        self._succeeded = succeeded_topic
        self._failed = failed_topic

    def publish(self, notification: Notification) -> None:
        try:
            self._client.publish(
                TopicArn=self._succeeded if notification.succeeded else self._failed,
                Message=json.dumps(notification.message),
                MessageAttributes={
                    k: {"DataType": "String", "StringValue": v}
                    for k, v in notification.attributes.items()
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError("SNS is unavailable.", retry_after_s=2) from exc
