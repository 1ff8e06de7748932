"""CloudWatch embedded metric format: a JSON line on stdout that the awslogs driver turns
into metrics (namespace ``infergw``) without an API call from the worker."""

from __future__ import annotations

import json
import time

_UNITS = {"JobSeconds": "Seconds", "JobAgeSeconds": "Seconds"}


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
