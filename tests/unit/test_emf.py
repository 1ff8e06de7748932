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


def test_buffered_signals_sum_counts_and_keep_every_latency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The container front end's mode: per model and route, one line with the summed counts
    and the latencies as value arrays of at most 100 (CloudWatch's limit per line)."""
    from functions.api import invocation

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setattr(invocation, "_pending", {})  # buffered, without the flush thread
    for i in range(150):
        invocation.signals("digits", "realtime", 200, i / 10, Spillover=0, Fallback=int(i < 3))
    invocation.signals("digits", "realtime", 503, 99.0)
    invocation.signals("digits", "limited", 429, 0.25)

    lines = [json.loads(line) for line in invocation.drain_signals()]
    assert invocation.drain_signals() == []  # drained
    realtime = [doc for doc in lines if doc["route"] == "realtime"]
    assert [len(doc["Latency"]) for doc in realtime] == [100, 51]
    first = realtime[0]
    assert (first["Requests"], first["Errors"], first["Fallback"]) == (151, 1, 3)
    assert sorted(realtime[0]["Latency"] + realtime[1]["Latency"]) == sorted(
        [i / 10 for i in range(150)] + [99.0]
    )
    assert [m["Name"] for m in realtime[1]["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == [
        "Latency"
    ]
    [limited] = [doc for doc in lines if doc["route"] == "limited"]
    assert (limited["Requests"], limited["Limited"], limited["Latency"]) == (1, 1, [0.25])
