"""The worker's metrics are valid CloudWatch embedded-metric-format lines."""

from __future__ import annotations

import json

from gateway.adapters.emf import emf


def test_emf_line_declares_every_metric_with_its_dimension() -> None:
    doc = json.loads(emf({"BacklogPerWorker": 2.5, "JobSeconds": 1.25}, queue="jobs"))
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "infergw"
    assert directive["Dimensions"] == [["queue"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "BacklogPerWorker": "Count",
        "JobSeconds": "Seconds",
    }
    assert doc["queue"] == "jobs" and doc["BacklogPerWorker"] == 2.5
    assert isinstance(doc["_aws"]["Timestamp"], int)
