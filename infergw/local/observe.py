"""Local views of the gateway's live metrics: Prometheus text at /metrics and a status page
at /status. Both read the same in-process state the API handlers keep."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from functions import bootstrap


def snapshot(window_s: float = 300.0) -> dict[str, Any]:
    gateway = bootstrap.gateway()
    admission = bootstrap.services().admission
    jobs = []
    if gateway.jobs is not None:
        jobs = [
            {
                "job_id": j.job_id,
                "tenant": j.tenant,
                "model": j.model,
                "status": j.status.value,
                "done": j.records_done,
                "total": j.records_total,
                "created_at": j.created_at,
            }
            for j in gateway.jobs.recent(limit=20)
        ]
    return {
        "window_s": window_s,
        "routes": gateway.metrics.summary(window_s),
        "timeline": [
            {"at": s.at, "model": s.model, "route": s.route, "status": s.status, "ms": s.ms}
            for s in gateway.metrics.window(window_s)
        ],
        "backends": gateway.live.snapshot(),
        "fallbacks": gateway.dispatcher.fallbacks,
        "limiter": None if admission is None else vars(admission.stats),
        "shadow": {
            model: {**vars(s), "agreement": s.agreement()}
            for model, s in gateway.dispatcher.shadow.items()
        },
        "jobs": jobs,
        "queue": _queue(),
    }


def _queue() -> dict[str, int] | None:
    settings = bootstrap.settings()
    if not settings.jobs_queue_url:
        return None
    from gateway.adapters import aws

    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    try:
        sqs = aws.client("sqs", read_timeout=2)
        waiting = sqs.get_queue_attributes(QueueUrl=settings.jobs_queue_url, AttributeNames=names)
        dead = sqs.get_queue_attributes(QueueUrl=settings.jobs_dlq_url, AttributeNames=names[:1])
    except Exception:
        return None
    return {
        "backlog": int(waiting["Attributes"]["ApproximateNumberOfMessages"]),
        "in_flight": int(waiting["Attributes"]["ApproximateNumberOfMessagesNotVisible"]),
        "dead_letters": int(dead["Attributes"]["ApproximateNumberOfMessages"]),
    }


def _labels(**labels: object) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in labels.items())
    return "{" + inner + "}"


def prometheus() -> tuple[int, str, bytes]:
    gateway = bootstrap.gateway()
    lines = [
        "# HELP infergw_requests_total Invocations by model, route and status.",
        "# TYPE infergw_requests_total counter",
    ]
    for (model, route, status), count in sorted(gateway.metrics.counts.items()):
        lines.append(
            f"infergw_requests_total{_labels(model=model, route=route, status=status)} {count}"
        )
    lines += [
        "# HELP infergw_request_latency_ms Latency over the last 5 minutes.",
        "# TYPE infergw_request_latency_ms summary",
    ]
    for row in gateway.metrics.summary(300):
        for q, key in (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms")):
            if row[key] is not None:
                labels = _labels(model=row["model"], route=row["route"], quantile=q)
                lines.append(f"infergw_request_latency_ms{labels} {row[key]}")
    lines += [
        "# HELP infergw_backend_in_flight Calls in flight per backend endpoint.",
        "# TYPE infergw_backend_in_flight gauge",
        "# HELP infergw_backend_breaker_open 1 while the breaker is open.",
        "# TYPE infergw_backend_breaker_open gauge",
    ]
    for name, stats in sorted(gateway.live.snapshot().items()):
        lines.append(f"infergw_backend_in_flight{_labels(endpoint=name)} {stats['in_flight']}")
        lines.append(
            f"infergw_backend_breaker_open{_labels(endpoint=name)} "
            f"{int(stats['breaker'] != 'closed')}"
        )
        lines.append(
            f"infergw_backend_cold_starts_total{_labels(endpoint=name)} {stats['cold_starts']}"
        )
    lines.append(f"infergw_fallbacks_total {gateway.dispatcher.fallbacks}")
    admission = bootstrap.services().admission
    if admission is not None:
        limiter = admission.stats
        lines += [
            "# TYPE infergw_limiter_decisions_total counter",
            f'infergw_limiter_decisions_total{{decision="allowed"}} {limiter.allowed}',
            f'infergw_limiter_decisions_total{{decision="limited"}} {limiter.limited}',
            f"infergw_limiter_store_failures_total {limiter.store_failures}",
        ]
    for model, shadow in sorted(gateway.dispatcher.shadow.items()):
        agreement = shadow.agreement()
        if agreement is not None:
            lines.append(f"infergw_shadow_agreement{_labels(model=model)} {agreement}")
    return 200, "text/plain; version=0.0.4", ("\n".join(lines) + "\n").encode()


def status_json() -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(snapshot()).encode()


def status_page() -> tuple[int, str, bytes]:
    page = resources.files("infergw.local").joinpath("status.html").read_bytes()
    return 200, "text/html; charset=utf-8", page
