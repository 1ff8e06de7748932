"""CloudWatch embedded metric format: one JSON line on stdout that CloudWatch Logs (Lambda,
or the awslogs driver on ECS) turns into metrics in the ``infergw`` namespace, without an
API call and without shared state between concurrent requests."""

from __future__ import annotations

import json
import time

_UNITS = {"JobSeconds": "Seconds", "JobAgeSeconds": "Seconds", "Latency": "Milliseconds"}


def emf(metrics: dict[str, float], **dimensions: str) -> str:
    return json.dumps(
        {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": "infergw",
                        "Dimensions": [sorted(dimensions)],
                        "Metrics": [
                            {"Name": name, "Unit": _UNITS.get(name, "Count")} for name in metrics
                        ],
                    }
                ],
            },
            **dimensions,
            **metrics,
        }
    )
