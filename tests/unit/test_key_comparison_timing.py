"""Key comparison takes the same time however much of a wrong key is right.

``ApiKeyAuthenticator`` never compares the stored secret with what a caller sent: it looks
the record up by the SHA-256 digest of the presented key and then compares the two digests
with ``hmac.compare_digest``. The structural tests pin that design down (they fail the
moment someone swaps in ``==`` or looks keys up by their plain text). The timing test
measures the authenticator itself on near and far misses, and runs the very same
measurement against a deliberately naive early-exit comparator as a control, so that a
pass means "no leak this measurement could see", not "the measurement sees nothing".

No absolute thresholds: every bound is relative to the control, measured in the same
rounds on the same machine, so a busy machine makes both slower but not the verdict.

What timing cannot see: ``==`` on two 64-character strings is a C ``memcmp`` whose early
exit is worth a few nanoseconds, far below the noise of a Python call on a shared machine.
That is why the structural tests exist; the AST test refuses ``==``/``!=`` on anything named
like a key or digest in the auth modules."""

from __future__ import annotations

import ast
import contextlib
import gc
import hashlib
import hmac
import inspect
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

import gateway.auth
from gateway.auth import ApiKeyAuthenticator, digest_key, key_id_of
from gateway.errors import UnauthenticatedError
from gateway.values import ApiKeyRecord
from tests.fakes import FakeKeyStore, issue_key

Comparator = Callable[[str, str], bool]
HEX = "0123456789abcdef"


class AnyDigestStore(FakeKeyStore):
    """A store that answers every lookup with the same record: the worst case the
    authenticator's comment guards against (a store with a prefix index, or a bug in one),
    where only the final comparison stands between a near miss and a valid key."""

    def __init__(self, record: ApiKeyRecord) -> None:
        super().__init__([record])
        self.record = record

    def get(self, key_digest: str) -> ApiKeyRecord | None:
        self.get_calls.append(key_digest)
        return self.record


def _record(digest: str) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_digest=digest,
        key_id=key_id_of(digest),
        tenant="tenant-a",
        scopes=frozenset({"invoke"}),
        created_at="2026-01-01T00:00:00Z",
    )


def _other(char: str) -> str:
    return HEX[(HEX.index(char) + 1) % len(HEX)]


def _flip_last(text: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[(alphabet.index(text[-1]) + 1) % len(alphabet)]


@dataclass
class Spy:
    calls: list[tuple[str, str]]
    answer: bool | None = None  # None: the real answer

    def compare_digest(self, a: str, b: str) -> bool:
        self.calls.append((a, b))
        real = hmac.compare_digest(a, b)
        return real if self.answer is None else self.answer


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    recorder = Spy(calls=[])
    monkeypatch.setattr(
        gateway.auth, "hmac", SimpleNamespace(compare_digest=recorder.compare_digest)
    )
    yield recorder


# --- structure: what is compared, with what ----------------------------------------------


def test_the_store_is_searched_by_the_digest_never_by_the_key() -> None:
    store = FakeKeyStore()
    key, record = issue_key(store)
    wrong = _flip_last(key)
    auth = ApiKeyAuthenticator(store, cache_ttl_s=0.0)

    assert auth.authenticate(f"Bearer {key}").key_id == record.key_id
    with pytest.raises(UnauthenticatedError):
        auth.authenticate(f"Bearer {wrong}")

    # SHA-256 of the whole presented key, computed here independently of the product.
    assert store.get_calls == [
        hashlib.sha256(key.encode()).hexdigest(),
        hashlib.sha256(wrong.encode()).hexdigest(),
    ]


def test_digests_are_compared_with_hmac_compare_digest_over_their_full_length(spy: Spy) -> None:
    store = FakeKeyStore()
    key, record = issue_key(store)
    auth = ApiKeyAuthenticator(store)

    auth.authenticate(f"Bearer {key}")

    assert spy.calls == [(record.key_digest, digest_key(key))]
    stored, presented = spy.calls[0]
    assert len(stored) == len(presented) == 64  # the whole digest, not a prefix of it
    secret = key.removeprefix("igw_test_")
    assert secret not in stored and secret not in presented  # never the key itself


def test_the_comparison_decides_a_near_miss_the_store_returned(spy: Spy) -> None:
    """Even when the store hands back a record for a digest that is 63/64 right, the
    constant-time comparison is what refuses it."""
    presented = "igw_test_" + "x" * 43
    digest = digest_key(presented)
    near = _record(digest[:-1] + _other(digest[-1]))
    auth = ApiKeyAuthenticator(AnyDigestStore(near))

    with pytest.raises(UnauthenticatedError):
        auth.authenticate(f"Bearer {presented}")
    assert spy.calls == [(near.key_digest, digest)]


def test_the_comparison_is_load_bearing(spy: Spy) -> None:
    """A valid key whose comparison says "different" is refused: the result is used."""
    store = FakeKeyStore()
    key, _ = issue_key(store)
    spy.answer = False
    with pytest.raises(UnauthenticatedError):
        ApiKeyAuthenticator(store).authenticate(f"Bearer {key}")
    assert len(spy.calls) == 1


def test_no_equality_operator_touches_a_key_or_digest_in_the_auth_modules() -> None:
    """``==`` / ``!=`` on a secret is an early-exit comparison: only compare_digest."""
    import gateway.authn

    suspicious = ("digest", "credential", "api_key", "secret")
    found = []
    for module in (gateway.auth, gateway.authn):
        source = inspect.getsource(module)
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            text = ast.unparse(node)
            if any(word in text for word in suspicious):
                found.append(f"{module.__name__}:{node.lineno}: {text}")
    assert not found, found


# --- timing: the authenticator against a control ---------------------------------------

ROUNDS = 300
CALLS_PER_BATCH = 60


def _naive_compare(a: str, b: str) -> bool:
    """What constant-time comparison is there to prevent: stop at the first difference."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):  # noqa: SIM110 - the early exit, spelled out
        if x != y:
            return False
    return True


def _batch_ns(auth: ApiKeyAuthenticator, header: str) -> float:
    started = time.perf_counter_ns()
    for _ in range(CALLS_PER_BATCH):
        with contextlib.suppress(UnauthenticatedError):
            auth.authenticate(header)
    return (time.perf_counter_ns() - started) / CALLS_PER_BATCH


@dataclass(frozen=True)
class Case:
    name: str
    near: tuple[ApiKeyAuthenticator, str]
    far: tuple[ApiKeyAuthenticator, str]
    comparator: Comparator


@dataclass(frozen=True)
class Result:
    median_diff_ns: float  # median over rounds of (near - far), per call
    near_slower: float  # share of rounds in which the near miss took longer
    median_call_ns: float


def _measure(cases: list[Case], seed: int = 20261101) -> dict[str, Result]:
    """Interleaved paired batches: every round times each case's near and far miss back
    to back in a shuffled order, so drift and bursts of load hit both sides alike."""
    rng = random.Random(seed)
    diffs: dict[str, list[float]] = {c.name: [] for c in cases}
    calls: dict[str, list[float]] = {c.name: [] for c in cases}
    namespace = vars(gateway.auth)  # the module's globals: where authenticate finds hmac
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(ROUNDS + 10):
            order = [(c, side) for c in cases for side in ("near", "far")]
            rng.shuffle(order)
            taken: dict[tuple[str, str], float] = {}
            for case, side in order:
                namespace["hmac"] = SimpleNamespace(compare_digest=case.comparator)
                auth, header = case.near if side == "near" else case.far
                taken[case.name, side] = _batch_ns(auth, header)
            if round_ < 10:
                continue  # warm-up: caches filled, code paths hot
            for case in cases:
                near, far = taken[case.name, "near"], taken[case.name, "far"]
                diffs[case.name].append(near - far)
                calls[case.name].extend((near, far))
    finally:
        namespace["hmac"] = hmac
        if gc_was_enabled:
            gc.enable()
    return {
        name: Result(
            median_diff_ns=statistics.median(d),
            near_slower=sum(x > 0 for x in d) / len(d),
            median_call_ns=statistics.median(calls[name]),
        )
        for name, d in diffs.items()
    }


def _digest_space_pair() -> tuple[tuple[ApiKeyAuthenticator, str], tuple[ApiKeyAuthenticator, str]]:
    """The same presented key against a stored digest that agrees on 63 of 64 characters,
    and one that differs in the first: the comparison's best and worst case."""
    presented = "igw_test_" + "q" * 43
    digest = digest_key(presented)
    near = _record(digest[:-1] + _other(digest[-1]))
    far = _record(_other(digest[0]) + digest[1:])
    header = f"Bearer {presented}"
    return (
        (ApiKeyAuthenticator(AnyDigestStore(near), cache_ttl_s=3600.0), header),
        (ApiKeyAuthenticator(AnyDigestStore(far), cache_ttl_s=3600.0), header),
    )


def test_verify_time_does_not_depend_on_how_much_of_a_wrong_key_is_right() -> None:
    near, far = _digest_space_pair()
    # Key space, through the real store: a wrong key that is right but for its last
    # character against one that shares nothing with the real key beyond the prefix.
    store = FakeKeyStore()
    key, _ = issue_key(store)
    stranger = "igw_test_" + "".join(
        "A" if c != "A" else "B" for c in key.removeprefix("igw_test_")
    )
    by_store = ApiKeyAuthenticator(store, cache_ttl_s=3600.0)

    results = _measure(
        [
            Case("compare_digest", near, far, hmac.compare_digest),
            Case("naive control", near, far, _naive_compare),
            Case(
                "key prefix via store",
                (by_store, f"Bearer {_flip_last(key)}"),
                (by_store, f"Bearer {stranger}"),
                hmac.compare_digest,
            ),
        ]
    )
    report = {name: vars(r) for name, r in results.items()}
    control = results["naive control"]

    # The control must be seen, clearly: otherwise this test proves nothing.
    assert control.near_slower >= 0.75, report
    assert control.median_diff_ns > 0, report
    # The real authenticator: no difference of even a quarter of the control's (the
    # control itself is 4x over this bound by construction, so it would fail here).
    bound = control.median_diff_ns / 4
    for name in ("compare_digest", "key prefix via store"):
        assert abs(results[name].median_diff_ns) < bound, (name, bound, report)
