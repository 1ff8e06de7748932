"""Job notifications to SNS: success and failure topics, filterable attributes.

Standard topics deliver at least once, to any kind of subscriber. FIFO topics (names ending
in ``.fifo``) get the job id as the message's deduplication id, so SNS drops a re-send
within its five-minute window and an SQS FIFO subscriber receives each notification
exactly once."""

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
        topic = self._succeeded if notification.succeeded else self._failed
        fifo: dict[str, str] = {}
        if topic.endswith(".fifo"):
            # One group per job: notifications of different jobs are not held behind
            # each other in a subscriber's FIFO queue.
            fifo = {
                "MessageGroupId": notification.dedup_id,
                "MessageDeduplicationId": notification.dedup_id,
            }
        try:
            self._client.publish(
                TopicArn=topic,
                Message=json.dumps(notification.message),
                MessageAttributes={
                    k: {"DataType": "String", "StringValue": v}
                    for k, v in notification.attributes.items()
                },
                **fifo,
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError("SNS is unavailable.", retry_after_s=2) from exc
