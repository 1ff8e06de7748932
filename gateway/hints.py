"""Client hints from request headers (RFC 7240 ``Prefer`` and the gateway's own)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.errors import MalformedRequestError
from gateway.values import RequestHints

_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_VARIANT = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_MAX_BUDGET_MS = 3_600_000
_BUDGET = re.compile(r"^[0-9]{1,7}$")  # ASCII digits only: str.isdigit() admits '²'


_HINT_HEADERS = (
    "prefer",
    "x-latency-budget-ms",
    "idempotency-key",
    "x-target-variant",
    "x-session-id",
)
_NO_HINTS = RequestHints()


def parse_hints(headers: Mapping[str, str]) -> RequestHints:
    """``headers`` must have lower-case names (as API Gateway v2 delivers them)."""
    if not any(name in headers for name in _HINT_HEADERS):
        return _NO_HINTS  # most requests: nothing to parse, one shared (frozen) answer
    return RequestHints(
        prefer_async=_prefers_async(headers.get("prefer", "")),
        latency_budget_ms=_budget(headers.get("x-latency-budget-ms")),
        idempotency_key=_token(headers.get("idempotency-key"), _IDEMPOTENCY_KEY, "Idempotency-Key"),
        target_variant=_token(headers.get("x-target-variant"), _VARIANT, "X-Target-Variant"),
        sticky_key=_token(headers.get("x-session-id"), _IDEMPOTENCY_KEY, "X-Session-Id"),
    )


def _prefers_async(prefer: str) -> bool:
    # Prefer: respond-async, wait=10   (preferences are comma separated, params after ';')
    for preference in prefer.split(","):
        token = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
        if token == "respond-async":
            return True
    return False


def _budget(raw: str | None) -> int | None:
    if raw is None:
        return None
    value = raw.strip()
    if not _BUDGET.fullmatch(value) or not 0 < int(value) <= _MAX_BUDGET_MS:
        raise MalformedRequestError(
            f"X-Latency-Budget-Ms must be an integer between 1 and {_MAX_BUDGET_MS}.",
            header="X-Latency-Budget-Ms",
        )
    return int(value)


def _token(raw: str | None, pattern: re.Pattern[str], header: str) -> str | None:
    if raw is None:
        return None
    value = raw.strip()
    if not pattern.fullmatch(value):
        raise MalformedRequestError(f"{header} must match {pattern.pattern}.", header=header)
    return value
