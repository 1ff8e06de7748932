"""gateway.hints: what a client asks for in headers beyond the payload."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import MalformedRequestError
from gateway.hints import parse_hints
from gateway.values import RequestHints


def test_no_headers_means_default_hints() -> None:
    assert parse_hints({}) == RequestHints()


@pytest.mark.parametrize(
    ("prefer", "wants_async"),
    [
        ("respond-async", True),
        ("Respond-Async", True),
        ("RESPOND-ASYNC", True),
        ("  respond-async  ", True),
        ("respond-async, wait=10", True),
        ("wait=10, respond-async", True),
        ("return=minimal,respond-async", True),
        ("respond-async; foo=bar", True),
        ("handling=lenient; respond-async", False),  # a parameter, not a preference
        ("wait=10", False),
        ("return=representation", False),
        ("respond-asynchronously", False),
        ("", False),
    ],
)
def test_prefer_respond_async(prefer: str, wants_async: bool) -> None:
    assert parse_hints({"prefer": prefer}).prefer_async is wants_async


@pytest.mark.parametrize(
    ("raw", "value"), [("1", 1), ("250", 250), (" 90 ", 90), ("3600000", 3_600_000), ("007", 7)]
)
def test_latency_budget_valid(raw: str, value: int) -> None:
    assert parse_hints({"x-latency-budget-ms": raw}).latency_budget_ms == value


@pytest.mark.parametrize(
    "raw", ["0", "-5", "+5", "1.5", "abc", "", "  ", "1e3", "3600001", "99999999999", "10ms"]
)
def test_latency_budget_invalid_is_400_naming_the_header(raw: str) -> None:
    with pytest.raises(MalformedRequestError) as raised:
        parse_hints({"x-latency-budget-ms": raw})
    assert raised.value.status == 400
    assert raised.value.extensions == {"header": "X-Latency-Budget-Ms"}
    assert "between 1 and 3600000" in raised.value.detail


@pytest.mark.parametrize("raw", ["\u00b2", "1\u00b9", "1" * 5000, "0" * 5000 + "1"])
def test_latency_budget_odd_digits_are_400(raw: str) -> None:
    # Regression: str.isdigit() admitted these, then int() raised ValueError (a 500).
    with pytest.raises(MalformedRequestError):
        parse_hints({"x-latency-budget-ms": raw})


@pytest.mark.parametrize(
    "key",
    ["a", "req-123", "order:42.retry_1", "A" * 128, "550e8400-e29b-41d4-a716-446655440000"],
)
def test_idempotency_key_valid(key: str) -> None:
    assert parse_hints({"idempotency-key": key}).idempotency_key == key


def test_idempotency_key_is_trimmed() -> None:
    assert parse_hints({"idempotency-key": "  k1 "}).idempotency_key == "k1"


@pytest.mark.parametrize("key", ["", "A" * 129, "has space", "a/b", "ключ", "a\nb", "k;1"])
def test_idempotency_key_invalid(key: str) -> None:
    with pytest.raises(MalformedRequestError) as raised:
        parse_hints({"idempotency-key": key})
    assert raised.value.extensions == {"header": "Idempotency-Key"}


@pytest.mark.parametrize("variant", ["blue", "v2.1", "canary_A-1", "x" * 63])
def test_target_variant_valid(variant: str) -> None:
    assert parse_hints({"x-target-variant": variant}).target_variant == variant


@pytest.mark.parametrize("variant", ["", "x" * 64, "a:b", "a b", "a/b"])
def test_target_variant_invalid(variant: str) -> None:
    with pytest.raises(MalformedRequestError) as raised:
        parse_hints({"x-target-variant": variant})
    assert raised.value.extensions == {"header": "X-Target-Variant"}


def test_all_hints_together() -> None:
    hints = parse_hints(
        {
            "prefer": "respond-async",
            "x-latency-budget-ms": "500",
            "idempotency-key": "job-1",
            "x-target-variant": "green",
            "x-unrelated": "ignored",
        }
    )
    assert hints == RequestHints(
        prefer_async=True, latency_budget_ms=500, idempotency_key="job-1", target_variant="green"
    )


def test_header_names_must_be_lower_case() -> None:
    # API Gateway v2 lower-cases header names; the parser relies on it (documented).
    assert parse_hints({"X-Latency-Budget-Ms": "garbage"}) == RequestHints()


header_names = st.sampled_from(
    ["prefer", "x-latency-budget-ms", "idempotency-key", "x-target-variant"]
)


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(header_names, st.text(max_size=60)))
@example(headers={"x-latency-budget-ms": "\u0661\u0662"})  # Arabic-Indic digits
@example(headers={"x-latency-budget-ms": "\u00b9"})  # a digit int() refuses
@example(headers={"prefer": "respond-async;;;,,,="})
def test_parse_hints_only_raises_malformed_request(headers: dict[str, str]) -> None:
    try:
        hints = parse_hints(headers)
    except MalformedRequestError as exc:
        assert exc.status == 400
    else:
        if hints.latency_budget_ms is not None:
            assert 1 <= hints.latency_budget_ms <= 3_600_000


@given(st.integers(1, 3_600_000))
def test_every_budget_in_range_round_trips(budget: int) -> None:
    assert parse_hints({"x-latency-budget-ms": str(budget)}).latency_budget_ms == budget


@given(st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True))
def test_every_well_formed_idempotency_key_is_kept(key: str) -> None:
    assert parse_hints({"idempotency-key": key}).idempotency_key == key
