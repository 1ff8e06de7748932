"""A realtime endpoint's model server SIGKILLed under concurrent load, then replaced by the
endpoint host: callers get answers within their budget, the router falls back to
serverless, the breaker opens (and re-opens on a failed probe), and traffic returns to
realtime by itself.

The policy (``killed-under-load`` in conftest's TEST_ADDITIONS): slo_ms 1000, timeout_ms
2000, a realtime endpoint the endpoint host replaces 6 s after it dies (later than the
breaker's 5 s, so the first half-open probe meets a dead endpoint), a serverless spillover
with room for the whole load (8 callers: max concurrency 8, capacity 8), no async backend.

What callers may see, from the README: a failed call "falls back along the plan while the
latency budget lasts" (Routing 5), and "503 /problems/backend-unavailable: no backend can
meet the SLO now; Retry-After" (errors table, Routing 4). So the contract asserted is:
every answer is a 200, or that documented 503 (problem+json, Retry-After) during the
outage - never a 502/504/500, never a transport error - and at most one such 503 per
failed realtime attempt (a call the open breaker sends straight to the spillover must be
served). On this busy machine every answer was a 200 in all runs but the CPU-starved
ones, where a failed probe's fallback no longer fitted the 1 s SLO budget: one 503.

Two more faults, same promises: an instance that hangs (SIGSTOP) must hold no caller past
the budget it sent (X-Latency-Budget-Ms), and one that stalls for a moment under load must
get its traffic back once it is fast again (the live state lets a slow estimate fade
when no call measures it, gateway/live.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from infergw.demo.models import digits_split
from infergw.local.stack import Connection

MODEL = "killed-under-load"
REALTIME = "killed-realtime"
SERVERLESS = "killed-spillover"
CALLERS = 8
# The policy's hard timeout: what the gateway promises no request waits past.
TIMEOUT_MS = 2000
# The gateway's budget clock (Server-Timing limit + route + backend: policy lookup,
# admission, routing, backend calls and fallbacks) is held to TIMEOUT_MS exactly. What a
# caller waits on top of it, apart from the authorizer (below): the front end's read of
# the request and hand-off to a worker thread, building the Lambda event, writing the
# answer, and this process's 8 client threads sharing one GIL. Idle that is a few ms
# (README: the whole path's p99 is 59 ms at c=8); on this shared 2-core machine at load
# average 4-12, with a replacement model server starting (a CPU-bound Python start-up), it
# was measured at 0.2-0.4 s. 1 s is 2.5 times that; a request stuck on anything (a dead
# socket, a connect or read timeout, a lost thread) waits seconds and blows through it.
# (With three extra CPU-burning processes added on top, it reached ~2.5 s: this bound is
# for a busy machine, not a starved one.)
#
# The authorizer runs before the budget clock starts, by design (on AWS it is API
# Gateway's authorizer with its own cache). This test stack caches its verdicts for 1 s
# only, so every second all 8 callers pay a key-store read against moto, which under load
# took up to ~1 s (once ~5 s, moto starved of CPU). Its time, reported by the front end as
# Server-Timing "auth", is therefore left out of the caller's latency before comparing.
OVERHEAD_ALLOWANCE_MS = 1000
# conftest: the endpoint host replaces a dead killed-realtime instance after 6 s; the
# breaker stays open 5 s (gateway.live), so a realtime failure this long after the kill is
# a half-open probe, not a call that was in flight when the process died.
REPLACE_AFTER_S = 6.0
PROBE_AFTER_S = 4.0
WITHIN_SLO = "realtime; reason=within-slo"
FALLBACK = "serverless; reason=fallback-from-realtime"
UNHEALTHY = "serverless; reason=realtime-unhealthy"
UNAVAILABLE = "/problems/backend-unavailable"


@dataclass(frozen=True)
class Call:
    caller: int
    started: float  # monotonic, s
    latency_ms: float
    status: int | None = None  # None: a transport error
    route: str = ""
    content_type: str = ""
    retry_after: str | None = None
    label: int | None = None
    problem: str = ""  # a problem document's type
    error: str = ""
    timings: dict[str, float] | None = None  # Server-Timing: name -> ms

    def timing(self, name: str) -> float:
        return (self.timings or {}).get(name, 0.0)

    def budgeted_ms(self) -> float:
        """What the gateway's budget clock saw: admission, routing and backend calls."""
        return sum(self.timing(name) for name in ("limit", "route", "backend"))

    def waited_ms(self) -> float:
        """What the caller waited, less the authorizer (outside the budget by design)."""
        return self.latency_ms - self.timing("auth")

    def documented_503(self) -> bool:
        """README: 503 /problems/backend-unavailable, problem+json, with Retry-After."""
        retry_after = (self.retry_after or "").strip()
        return (
            self.status == 503
            and self.content_type.startswith("application/problem+json")
            and self.problem == UNAVAILABLE
            and retry_after.isdigit()
            and int(retry_after) >= 1
        )


def _server_timing(header: str) -> dict[str, float]:
    timings = {}
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                timings[name] = float(value)
    return timings


class Load:
    """``CALLERS`` threads, each with its own keep-alive client, invoking in a loop until
    stopped. Every call is recorded, in completion order."""

    def __init__(self, conn: Connection, body: dict[str, Any]) -> None:
        self._conn = conn
        self._body = json.dumps(body).encode()
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"caller-{i}", daemon=True)
            for i in range(CALLERS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            # Each thread finishes its current call: at most the client timeout.
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads), "a caller never returned"

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _run(self, caller: int) -> None:
        with httpx.Client(
            base_url=self._conn.gateway_url,
            headers={
                "Authorization": f"Bearer {self._conn.api_key}",
                "Content-Type": "application/json",
            },
            # Far above any budget: a hang shows up as a latency, not a client timeout.
            timeout=30,
        ) as client:
            while not self._stop.is_set():
                call = self._call(client, caller)
                with self._lock:
                    self.calls.append(call)

    def _call(self, client: httpx.Client, caller: int) -> Call:
        started = time.monotonic()
        try:
            response = client.post(f"/v1/models/{MODEL}/invocations", content=self._body)
        except httpx.TransportError as exc:
            return Call(
                caller,
                started,
                (time.monotonic() - started) * 1000,
                error=f"{type(exc).__name__}: {exc}",
            )
        latency_ms = (time.monotonic() - started) * 1000
        label, problem = None, ""
        if response.status_code == 200:
            label = int(response.json()["predictions"][0]["label"])
        else:
            try:
                problem = str(response.json().get("type", ""))
            except ValueError:
                problem = "(not JSON)"
        return Call(
            caller,
            started,
            latency_ms,
            status=response.status_code,
            route=response.headers.get("x-inference-route", ""),
            content_type=response.headers.get("content-type", ""),
            retry_after=response.headers.get("retry-after"),
            label=label,
            problem=problem,
            error="" if response.status_code == 200 else response.text[:300],
            timings=_server_timing(response.headers.get("server-timing", "")),
        )


def _endpoints(conn: Connection) -> dict[str, Any]:
    response = httpx.get(f"{conn.sagemaker_runtime_url}/endpoints", timeout=10)
    response.raise_for_status()
    endpoints: dict[str, Any] = response.json()
    return endpoints


def _backend_stats(http: httpx.Client, name: str) -> dict[str, Any]:
    response = http.get("/admin/stats")
    assert response.status_code == 200, response.text
    backend: dict[str, Any] = response.json()["backends"].get(name, {})
    return backend


def _warm_spillover(conn: Connection, body: dict[str, Any]) -> int:
    """Start the spillover's instance before the outage (the tests are about the realtime
    endpoint, not a cold start; the policy gives the router no idle timeout for the
    spillover, so the router takes it as warm). Returns the label it answers."""
    warm = httpx.post(
        f"{conn.sagemaker_runtime_url}/endpoints/{SERVERLESS}/invocations",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert warm.status_code == 200, warm.text
    assert _endpoints(conn)[SERVERLESS]["warm_instances"] >= 1
    return int(warm.json()["predictions"][0]["label"])


def _wait_for(
    what: str, condition: Callable[[], bool], timeout_s: float, describe: Callable[[], object]
) -> float:
    """Poll a real condition until it holds; fail with ``what`` and ``describe()`` at the
    deadline. Returns when it held (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, (
            f"timed out after {timeout_s} s waiting for {what}",
            describe(),
        )
        time.sleep(0.05)  # a polling interval, not a synchronisation
    return time.monotonic()


def _streak(calls: list[Call], route: str) -> int:
    """How many of the latest calls in a row took ``route``."""
    n = 0
    for call in reversed(calls):
        if call.route != route:
            break
        n += 1
    return n


def _brief(call: Call, since: float) -> tuple[object, ...]:
    timings = {k: round(v) for k, v in (call.timings or {}).items()}
    return (
        round(call.started - since, 2),
        round(call.latency_ms),
        call.status,
        call.route,
        timings,
        call.retry_after,
        call.error[:300],
    )


def _summary(calls: list[Call], at_kill: int, killed_at: float, **marks: float) -> dict[str, Any]:
    """Everything a failure (or the report) needs: routes after the kill, latencies, the
    slowest and failed calls, and a per-second timeline from the kill."""
    during = calls[at_kill:]
    latencies = sorted(c.latency_ms for c in calls) or [0.0]
    timeline: dict[int, Counter[str]] = {}
    for c in during:
        key = c.route.split("reason=")[-1] if c.status == 200 else f"status-{c.status}"
        timeline.setdefault(math.floor(c.started - killed_at), Counter())[key] += 1

    def most(values: list[float]) -> float:
        return round(max(values, default=0.0), 1)

    return {
        "calls": len(calls),
        "after_kill": len(during),
        "routes_after_kill": dict(Counter(c.route for c in during)),
        "max_latency_ms": round(latencies[-1], 1),
        "p50_latency_ms": round(statistics.median(latencies), 1),
        "p99_latency_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1),
        "max_waited_ms": most([c.waited_ms() for c in calls]),
        "max_budgeted_ms": most([c.budgeted_ms() for c in calls]),
        "max_outside_budget_ms": most([c.waited_ms() - c.budgeted_ms() for c in calls]),
        "max_auth_ms": most([c.timing("auth") for c in calls]),
        # Server-Timing "limit": policy lookup and admission, where the store's round trips
        # (policy cache refresh, rate-limit lease) land on the request path.
        "max_limit_ms": most([c.timing("limit") for c in calls]),
        "slowest": [_brief(c, killed_at) for c in sorted(calls, key=Call.waited_ms)[-3:]],
        "not_ok": [_brief(c, killed_at) for c in calls if c.status != 200][:10],
        "failed_probes_at_s": [
            round(c.started - killed_at, 2)
            for c in during
            if c.started >= killed_at + PROBE_AFTER_S and (c.route == FALLBACK or c.status == 503)
        ],
        **{name: round(at - killed_at, 2) for name, at in marks.items()},
        "timeline": {s: dict(c) for s, c in sorted(timeline.items())},
    }


def test_realtime_killed_under_load_falls_back_then_recovers_within_budget(
    http: httpx.Client, conn: Connection
) -> None:
    row = digits_split().x_test[0].tolist()
    body = {"inputs": [row]}

    expected_label = _warm_spillover(conn, body)

    before = _backend_stats(http, REALTIME)
    opened_before = int(before.get("breaker_opened", 0))
    failures_before = int(before.get("failures", 0))

    with Load(conn, body) as load:
        # Steady state first: the load is flowing, realtime is serving it.
        _wait_for(
            "realtime to serve the load",
            lambda: sum(c.route == WITHIN_SLO for c in load.snapshot()) >= 100,
            timeout_s=60,
            describe=lambda: _summary(load.snapshot(), 0, time.monotonic()),
        )
        killed = _endpoints(conn)[REALTIME]["pids"]
        assert killed
        killing_at = time.monotonic()
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        at_kill = len(load.snapshot())

        def so_far() -> dict[str, Any]:
            return {
                **_summary(load.snapshot(), at_kill, killed_at, now=time.monotonic()),
                "endpoint": _endpoints(conn)[REALTIME],
                "backend": _backend_stats(http, REALTIME),
            }

        # The endpoint host replaces the instance (new pids, serving) ...
        replaced_at = _wait_for(
            "the endpoint host to replace the killed instance",
            lambda: not set(_endpoints(conn)[REALTIME]["pids"]) & set(killed),
            timeout_s=90,
            describe=so_far,
        )
        # ... and the gateway returns to it by itself: the breaker's probe succeeds and
        # the latest 100 answers in a row (every caller, several rounds) came from realtime.
        recovered_at = _wait_for(
            "traffic to return to realtime",
            lambda: _streak(load.snapshot()[at_kill:], WITHIN_SLO) >= 100,
            timeout_s=60,
            describe=so_far,
        )

    calls = load.calls
    after = _backend_stats(http, REALTIME)
    during = calls[at_kill:]
    routes = Counter(c.route for c in during)
    # A half-open probe that met the dead endpoint: it fell back, or (when the fallback no
    # longer fitted the SLO budget) answered the documented 503.
    probes = [
        c
        for c in during
        if c.started >= killed_at + PROBE_AFTER_S and (c.route == FALLBACK or c.status == 503)
    ]
    summary = {
        **_summary(calls, at_kill, killed_at, replaced=replaced_at, recovered=recovered_at),
        "breaker_opened": [opened_before, after.get("breaker_opened")],
        "realtime_failures": int(after.get("failures", 0)) - failures_before,
        "breaker": after.get("breaker"),
    }
    print(summary)

    # What callers saw: answers, or the documented 503 during the outage - nothing else.
    transport = [c for c in calls if c.status is None]
    assert not transport, summary
    undocumented = [
        _brief(c, killed_at) for c in calls if c.status != 200 and not c.documented_503()
    ]
    assert not undocumented, (undocumented, summary)
    outside_outage = [  # the outage: from the kill to recovery, calls in flight included
        _brief(c, killed_at)
        for c in calls
        if c.status != 200
        and not (c.started + c.latency_ms / 1000 >= killing_at and c.started <= recovered_at)
    ]
    assert not outside_outage, (outside_outage, summary)
    # ... and only for a call that tried realtime and found it dead (a call the open
    # breaker sent straight to the spillover has room there and must be served): at most
    # one 503 per failed realtime attempt the gateway counted.
    unavailable = sum(c.status == 503 for c in calls)
    assert unavailable <= summary["realtime_failures"], summary
    assert {c.label for c in calls if c.status == 200} == {expected_label}, summary

    # Nobody waited past the budget: by the gateway's own clock (policy, admission,
    # routing, backend calls and fallbacks), and as the caller measured it, with the
    # allowance for the front end's overhead.
    over = [_brief(c, killed_at) for c in calls if c.budgeted_ms() > TIMEOUT_MS]
    assert not over, (over, summary)
    slow = [
        _brief(c, killed_at) for c in calls if c.waited_ms() > TIMEOUT_MS + OVERHEAD_ALLOWANCE_MS
    ]
    assert not slow, (slow, summary)

    # Realtime really was down: nothing started after the kill was answered by it before
    # the endpoint host could have replaced it (it waits replace_after_s, then starts one).
    early = [
        _brief(c, killed_at)
        for c in during
        if c.route == WITHIN_SLO
        and c.started > killed_at
        and c.started + c.latency_ms / 1000 < killed_at + REPLACE_AFTER_S
    ]
    assert not early, (early, summary)
    assert set(routes) <= {WITHIN_SLO, FALLBACK, UNHEALTHY, ""}, summary

    # The router fell back: calls that found realtime dead were served by serverless ...
    assert any(c.route == FALLBACK and c.started < killed_at + PROBE_AFTER_S for c in during), (
        summary
    )
    # ... the breaker opened, and while open realtime was not tried at all ...
    assert int(after["breaker_opened"]) > opened_before, summary
    assert routes[UNHEALTHY] >= 1, summary
    # ... after 5 s a probe tried it and failed (no replacement yet), and the breaker
    # opened again rather than letting the load through to a dead endpoint ...
    assert probes, summary
    first_probe_done = probes[0].started + probes[0].latency_ms / 1000
    assert any(c.route == UNHEALTHY and c.started > first_probe_done for c in during), summary
    # ... and once the replacement served, a probe closed it: traffic back on realtime.
    assert after["breaker"] == "closed", summary


# A per-request budget well under the policy's timeout, and not a whole number of seconds.
HINTED_BUDGET_MS = 1100
# Sequential calls: the gateway's own overhead outside its budget clock (authorizer time
# left out, as above) is a few ms (README: p50 added 4.1 ms at c=1), tens of ms on this
# busy machine; 400 ms is ten times that.
SEQUENTIAL_ALLOWANCE_MS = 400


def _realtime_serves(http: httpx.Client, body: dict[str, Any]) -> bool:
    response = http.post(f"/v1/models/{MODEL}/invocations", json=body)
    return bool(response.headers.get("x-inference-route") == WITHIN_SLO)


def _timed(http: httpx.Client, body: dict[str, Any]) -> Call:
    started = time.monotonic()
    response = http.post(
        f"/v1/models/{MODEL}/invocations",
        json=body,
        headers={"X-Latency-Budget-Ms": str(HINTED_BUDGET_MS)},
    )
    return Call(
        0,
        started,
        (time.monotonic() - started) * 1000,
        status=response.status_code,
        route=response.headers.get("x-inference-route", ""),
        content_type=response.headers.get("content-type", ""),
        error="" if response.status_code == 200 else response.text[:200],
        timings=_server_timing(response.headers.get("server-timing", "")),
    )


def test_a_hung_realtime_instance_holds_no_caller_past_its_budget(
    http: httpx.Client, conn: Connection
) -> None:
    """The same promise when the model server hangs (SIGSTOP) instead of dying: the
    gateway gives up on it when the caller's budget (X-Latency-Budget-Ms, which caps the
    timeout) runs out, not later; three timeouts open the breaker."""
    body = {"inputs": [digits_split().x_test[0].tolist()]}
    _warm_spillover(conn, body)
    _wait_for(
        "realtime to serve",
        lambda: _realtime_serves(http, body),
        timeout_s=60,
        describe=lambda: _backend_stats(http, REALTIME),
    )
    pids = _endpoints(conn)[REALTIME]["pids"]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        hung = [_timed(http, body) for _ in range(3)]  # three failures in a row ...
        after = _timed(http, body)  # ... and the breaker is open
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    report = [_brief(c, hung[0].started) for c in [*hung, after]]
    print(report)
    # Each waited out its budget, then got the documented 504 (no time left to fall back).
    assert all(c.status == 504 for c in hung), report
    assert all(c.waited_ms() <= HINTED_BUDGET_MS + SEQUENTIAL_ALLOWANCE_MS for c in hung), report
    # With the breaker open the next call does not wait for the hung instance at all.
    assert after.status == 200 and after.route == UNHEALTHY, report
    assert after.waited_ms() < HINTED_BUDGET_MS / 2, report

    # Leave realtime serving for whoever comes next (the breaker closes on its own).
    _wait_for(
        "realtime to serve again",
        lambda: _realtime_serves(http, body),
        timeout_s=60,
        describe=lambda: _backend_stats(http, REALTIME),
    )


STALLED_MODEL = "stalled-under-load"  # conftest: slo_ms 500, timeout_ms 3000
STALLED = "stalled-realtime"
STALL_S = 1.5  # three times the SLO, half the timeout: slow answers, not failures
RECOVERY_S = 15.0  # three times the breaker's open window


class SetupFailed(Exception):
    """The scenario did not come about as planned (not what the test asserts)."""


def test_realtime_that_stalled_under_load_gets_traffic_back_once_fast_again(
    http: httpx.Client, conn: Connection
) -> None:
    """The same recovery when realtime stalls instead of dying: its model server is
    stopped (SIGSTOP) for STALL_S with a full load in flight, then continues. Every caller
    is answered (slowly, within the timeout); after that realtime is as fast as before, and
    traffic must come back to it by itself, as it does after the breaker closes."""
    body = {"inputs": [digits_split().x_test[0].tolist()]}
    path = f"/v1/models/{STALLED_MODEL}/invocations"

    def route() -> str:
        response = http.post(path, json=body)
        if response.status_code != 200:
            raise SetupFailed(response.text)
        return str(response.headers.get("x-inference-route", ""))

    def wait_for(what: str, condition: Callable[[], bool]) -> None:
        try:
            _wait_for(what, condition, 60, lambda: _backend_stats(http, STALLED))
        except AssertionError as exc:
            raise SetupFailed(str(exc)) from exc

    _warm_spillover(conn, body)
    wait_for("realtime to serve", lambda: route() == WITHIN_SLO)
    pids = _endpoints(conn)[STALLED]["pids"]
    stalled: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(
            base_url=conn.gateway_url,
            headers={"Authorization": f"Bearer {conn.api_key}"},
            timeout=30,
        ) as client:
            stalled.append(client.post(path, json=body))

    callers = [threading.Thread(target=call) for _ in range(CALLERS)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for thread in callers:
            thread.start()
        wait_for(
            "the load to be in flight on realtime",
            lambda: _backend_stats(http, STALLED).get("in_flight") == CALLERS,
        )
        time.sleep(STALL_S)  # the fault itself: how long the instance stays stopped
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    for thread in callers:
        thread.join(timeout=60)
    answers = [(r.status_code, r.headers.get("x-inference-route")) for r in stalled]
    if answers != [(200, WITHIN_SLO)] * CALLERS:  # slow, but served
        raise SetupFailed(answers)

    # Realtime is fast again. Some traffic must come back to it by itself.
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline and not seen[WITHIN_SLO]:
        seen[route()] += 1
    backend = _backend_stats(http, STALLED)
    print(dict(seen), backend)
    assert seen[WITHIN_SLO], (dict(seen), backend)
