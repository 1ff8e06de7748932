"""X-Ray subsegments for the core's steps (auth, limit, route, backend), through the
powertools Tracer. Opt-in with ``INFERGW_XRAY_SUBSEGMENTS=true``: the X-Ray SDK costs a cold
start some 100 ms of imports, and Lambda's own trace segment is there without it."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from functools import cache
from typing import Any

from gateway.ports import Spans
from gateway.service import NoSpans


class XRaySpans:
    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def span(self, name: str) -> AbstractContextManager[object]:
        return self._tracer.provider.in_subsegment(f"## {name}")  # type: ignore[no-any-return]


@cache
def spans() -> Spans:
    if os.environ.get("INFERGW_XRAY_SUBSEGMENTS", "").lower() != "true":
        return NoSpans()
    from aws_lambda_powertools import Tracer

    return XRaySpans(Tracer(service="infergw"))
