"""X-Ray subsegments for the core's steps (auth, limit, route, backend), through the
powertools Tracer. Opt-in with ``INFERGW_XRAY_SUBSEGMENTS=true``: the X-Ray SDK costs a cold
start some 100 ms of imports, and Lambda's own trace segment is there without it. The Tracer
is imported only when subsegments are on."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from functools import cache
from typing import TYPE_CHECKING, Any

from gateway.ports import NoSpans

if TYPE_CHECKING:
    from gateway.ports import Spans


class XRaySpans:
    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def span(self, name: str) -> AbstractContextManager[object]:
        return self._tracer.provider.in_subsegment(f"## {name}")  # type: ignore[no-any-return]


def enabled() -> bool:
    return os.environ.get("INFERGW_XRAY_SUBSEGMENTS", "").lower() == "true"


@cache
def spans() -> Spans:
    if not enabled():
        return NoSpans()
    from aws_lambda_powertools import Tracer

    return XRaySpans(Tracer(service="infergw"))
