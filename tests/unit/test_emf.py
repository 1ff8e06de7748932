"""The EMF line is what CloudWatch Logs needs to extract metrics, whatever the values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.adapters.emf import emf


@pytest.mark.parametrize(
    ("metrics", "dimensions"),
    [
        ({"Requests": 1, "Latency": 1.234, "Errors": 0}, {"route": "realtime", "model": "digits"}),
        ({"JobSeconds": np.float64(2.5), "Rows": np.int64(7)}, {"model": 'quo"te\\d'}),
        ({"Requests": 1}, {}),
    ],
)
def test_a_line_declares_every_metric_and_carries_its_value(
    metrics: dict[str, float], dimensions: dict[str, str]
) -> None:
    for _ in range(2):  # the second line comes from the cached template
        doc = json.loads(emf(metrics, **dimensions))
        declared = doc["_aws"]["CloudWatchMetrics"][0]
        assert declared["Namespace"] == "infergw"
        assert declared["Dimensions"] == [sorted(dimensions)]
        assert [m["Name"] for m in declared["Metrics"]] == list(metrics)
        assert {k: doc[k] for k in dimensions} == dimensions
        assert {k: doc[k] for k in metrics} == pytest.approx(
            {k: float(v) for k, v in metrics.items()}
        )
        assert isinstance(doc["_aws"]["Timestamp"], int)


def test_units_follow_the_metric() -> None:
    doc = json.loads(emf({"Latency": 3.0, "JobSeconds": 1.0, "Requests": 1}))
    units = {m["Name"]: m["Unit"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {"Latency": "Milliseconds", "JobSeconds": "Seconds", "Requests": "Count"}
