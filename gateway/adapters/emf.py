"""CloudWatch embedded metric format: one JSON line on stdout that CloudWatch Logs (Lambda,
or the awslogs driver on ECS) turns into metrics in the ``infergw`` namespace, without an
API call and without shared state between concurrent requests."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from functools import lru_cache

_UNITS = {"JobSeconds": "Seconds", "JobAgeSeconds": "Seconds", "Latency": "Milliseconds"}


def emf(metrics: Mapping[str, float | list[float]], **dimensions: str) -> str:
    """One EMF line. A metric's value may be a list (at most 100 values): several samples
    in one line, as an aggregating process sends them."""
    # The line's shape depends only on the metric names and the dimensions, which repeat
    # from request to request: it is serialised once, and only the numbers per call.
    head, tail = _template(tuple(metrics), tuple(sorted(dimensions.items())))
    values = ",".join(f'"{name}":{_json_number(value)}' for name, value in metrics.items())
    return f"{head}{int(time.time() * 1000)}{tail}{values}}}"


@lru_cache(maxsize=4096)
def _template(names: tuple[str, ...], dimensions: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    declaration = json.dumps(
        [
            {
                "Namespace": "infergw",
                "Dimensions": [[key for key, _ in dimensions]],
                "Metrics": [{"Name": name, "Unit": _UNITS.get(name, "Count")} for name in names],
            }
        ]
    )
    labels = "".join(f"{json.dumps(key)}: {json.dumps(value)}, " for key, value in dimensions)
    return '{"_aws": {"Timestamp": ', f', "CloudWatchMetrics": {declaration}}}, {labels}'


def _json_number(value: float | list[float]) -> str:
    # repr of a Python int or finite float is its JSON (numpy scalars are converted first).
    if isinstance(value, list):
        return "[" + ",".join(repr(float(v)) for v in value) + "]"
    return repr(int(value)) if isinstance(value, int) else repr(float(value))
