"""One invocation's request and answer, the same for every front end: the Lambda handler's
(blocking) and the container front end's (on an event loop)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from functions.problems import PROBLEM_JSON, problem_body, problem_headers
from gateway import payload
from gateway.adapters.emf import emf
from gateway.errors import GatewayError
from gateway.hints import parse_hints
from gateway.values import InvocationOutcome, InvocationRequest


@dataclass(slots=True)  # not frozen: built per request (gateway/values.py)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


def parse_request(
    model: str, headers: Mapping[str, str], body: bytes, request_id: str
) -> InvocationRequest:
    """``headers`` with lower-case names. Raises a GatewayError for what the client got
    wrong (encoding, hints)."""
    payload.check_encoding(headers.get("content-encoding"))
    return InvocationRequest(
        model=model,
        body=body,
        content_type=headers.get("content-type", "application/json"),
        accept=headers.get("accept") or "application/json",
        hints=parse_hints(headers),
        correlation_id=request_id,
    )


def answer(model: str, outcome: InvocationOutcome, started: float) -> Answer:
    reason = outcome.decision.reason
    route = outcome.decision.backend.value
    signals(
        model,
        route,
        outcome.status,
        (time.perf_counter() - started) * 1000,
        Spillover=int(route == "serverless" and reason.startswith("realtime-")),
        Fallback=int(reason.startswith("fallback")),
        BackendColdStart=int("cold-start" in outcome.timings_ms),
    )
    timing = ", ".join([f"{name};dur={ms:.2f}" for name, ms in outcome.timings_ms.items()])
    return Answer(
        outcome.status,
        outcome.content_type,
        outcome.body,
        {
            **outcome.headers,
            "X-Inference-Route": outcome.decision.header(),
            "X-Model-Variant": outcome.decision.variant,
            "X-Model-Version": outcome.model_version,
            "Server-Timing": timing,
        },
    )


def problem(model: str, error: GatewayError, path: str, started: float) -> Answer:
    route = "limited" if error.status == 429 else "rejected" if error.status < 500 else "failed"
    signals(model, route, error.status, (time.perf_counter() - started) * 1000)
    return Answer(
        error.status,
        PROBLEM_JSON,
        problem_body(error, instance=path).encode(),
        problem_headers(error),
    )


_METRICS_OFF = "POWERTOOLS_METRICS_DISABLED"
# The container front end's signals since the last flush, by (model, route): counts and
# every latency. None: one line per invocation (a Lambda may be frozen right after its
# answer, so nothing may wait).
_pending: dict[tuple[str, str], tuple[dict[str, int], list[float]]] | None = None
_pending_lock = threading.Lock()
EMF_MAX_VALUES = 100  # values of one metric in one EMF line


def buffer_signals(every_s: float = 0.5) -> None:
    """For a long-running process (the container front end): invocations are summed per
    model and route, and every ``every_s`` one EMF line per model and route carries the
    counts and the latencies as a value array (CloudWatch computes percentiles over them),
    instead of a line - 700 bytes of JSON - per request."""
    global _pending
    with _pending_lock:
        if _pending is not None:
            return
        _pending = {}

    def flush() -> None:
        while True:
            time.sleep(every_s)
            for line in drain_signals():
                print(line)
            sys.stdout.flush()

    threading.Thread(target=flush, name="emf-flush", daemon=True).start()


def drain_signals() -> list[str]:
    """The EMF lines of the signals summed since the last call (buffered mode); none while
    metrics are disabled."""
    global _pending
    with _pending_lock:
        if not _pending:
            return []
        pending, _pending = _pending, {}
    if _metrics_off():
        return []
    lines = []
    for (model, route), (counts, latencies) in pending.items():
        for start in range(0, len(latencies), EMF_MAX_VALUES):
            metrics: dict[str, float | list[float]] = dict(counts) if start == 0 else {}
            metrics["Latency"] = latencies[start : start + EMF_MAX_VALUES]
            lines.append(emf(metrics, model=model, route=route))
    return lines


def signals(model: str, route: str, status: int, latency_ms: float, **extra: int) -> None:
    """EMF: traffic, errors, latency per model and route, and the router's spillover,
    fallback and cold-start counts."""
    latency = round(latency_ms, 3)
    errors, limited = int(status >= 500), int(status == 429)
    with _pending_lock:
        pending = _pending
        if pending is not None:
            # Buffered: summed in place; whether metrics are on is asked once per flush,
            # not per request.
            entry = pending.get((model, route))
            if entry is None:
                entry = pending[(model, route)] = ({"Requests": 0, "Errors": 0, "Limited": 0}, [])
            counts, latencies = entry
            counts["Requests"] += 1
            counts["Errors"] += errors
            counts["Limited"] += limited
            for name, value in extra.items():
                counts[name] = counts.get(name, 0) + value
            latencies.append(latency)
            return
    if _metrics_off():
        return
    line = {"Requests": 1, "Errors": errors, "Limited": limited, **extra, "Latency": latency}
    print(emf(line, model=model, route=route), flush=True)


def _metrics_off() -> bool:
    return os.environ.get(_METRICS_OFF, "").lower() == "true"
