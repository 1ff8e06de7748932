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
from gateway.models import InvocationOutcome, InvocationRequest


@dataclass(frozen=True, slots=True)
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
    timing = ", ".join(f"{name};dur={ms:.2f}" for name, ms in outcome.timings_ms.items())
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


_flush_each_line = True  # a Lambda may be frozen right after the answer: nothing waits


def buffer_signals(every_s: float = 0.5) -> None:
    """For a long-running process (the container front end): metric lines are written to
    stdout's buffer and flushed every ``every_s``, not one write per request."""
    global _flush_each_line
    if not _flush_each_line:
        return
    _flush_each_line = False

    def flush() -> None:
        while True:
            time.sleep(every_s)
            sys.stdout.flush()

    threading.Thread(target=flush, name="emf-flush", daemon=True).start()


def signals(model: str, route: str, status: int, latency_ms: float, **extra: int) -> None:
    """EMF, one line per invocation: traffic, errors, latency per model and route, and the
    router's spillover, fallback and cold-start counts."""
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() == "true":
        return
    print(
        emf(
            {
                "Requests": 1,
                "Errors": int(status >= 500),
                "Limited": int(status == 429),
                "Latency": round(latency_ms, 3),
                **extra,
            },
            model=model,
            route=route,
        ),
        flush=_flush_each_line,
    )
