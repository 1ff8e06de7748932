"""The one place where errors become HTTP: RFC 9457 problem+json documents."""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.errors import GatewayError

PROBLEM_JSON = "application/problem+json"


def problem_document(error: GatewayError, instance: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": error.type_uri,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    if instance:
        doc["instance"] = instance
    for key, value in error.extensions.items():
        doc.setdefault(key, value)
    return doc


def problem_headers(error: GatewayError) -> dict[str, str]:
    headers = {**error.headers, "Content-Type": PROBLEM_JSON}
    if error.retry_after_s is not None:
        # Whole seconds, rounded up: retrying after the advertised time must succeed.
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return headers


def problem_body(error: GatewayError, instance: str | None = None) -> str:
    return json.dumps(problem_document(error, instance))
