"""AWS goes away mid-traffic (the emulator frozen with SIGSTOP, as a partition would look):
the gateway keeps serving what it can from what it last knew (keys, policies; the limiter
fails open), answers 503 with Retry-After for what needs AWS now (async uploads), never
hangs past its timeouts, and recovers by itself. No job is lost."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx

from infergw.local.stack import LocalStack

ROW = [0.0] * 64


def test_the_gateway_degrades_and_recovers_when_aws_pauses(
    http: httpx.Client, stack: LocalStack
) -> None:
    emulator = stack.process("aws-emulator")
    results: list[tuple[str, int, float, str | None]] = []
    accepted: list[str] = []
    stop = threading.Event()

    def traffic(kind: str) -> None:
        with httpx.Client(
            base_url=str(http.base_url), headers=dict(http.headers), timeout=60
        ) as client:
            while not stop.is_set():
                headers = {"Prefer": "respond-async"} if kind == "async" else {}
                started = time.monotonic()
                response = client.post(
                    "/v1/models/digits/invocations", json={"inputs": [ROW]}, headers=headers
                )
                results.append(
                    (
                        kind,
                        response.status_code,
                        time.monotonic() - started,
                        response.headers.get("retry-after"),
                    )
                )
                if response.status_code == 202:
                    accepted.append(response.json()["job_id"])
                stop.wait(0.2)

    threads = [threading.Thread(target=traffic, args=(kind,)) for kind in ("sync", "sync", "async")]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)  # steady traffic first (the waits are the scenario, not syncs)
        emulator.send_signal(signal.SIGSTOP)
        time.sleep(15.0)  # AWS away for longer than every cache TTL and client timeout
    finally:
        emulator.send_signal(signal.SIGCONT)
    resumed = len(results)
    deadline = time.monotonic() + 40
    while not any(kind == "async" and status == 202 for kind, status, _, _ in results[resumed:]):
        assert time.monotonic() < deadline, results[resumed:]
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()

    print(
        "pause:",
        sorted(Counter((k, s) for k, s, _, _ in results).items()),
        "max s",
        round(max(x for _, _, x, _ in results), 1),
    )
    assert {status for _, status, _, _ in results} <= {200, 202, 503}, results
    assert all(retry for _, status, _, retry in results if status == 503), results
    assert max(seconds for _, _, seconds, _ in results) < 20, results  # bounded by timeouts
    sync_during = [s for kind, s, _, _ in results if kind == "sync"]
    assert sync_during.count(200) >= len(sync_during) - 2, results  # served from what it knew
    # Every job the gateway accepted finishes: none lost to the outage.
    for job_id in accepted:
        end = time.monotonic() + 60
        while (status := http.get(f"/v1/jobs/{job_id}").json()["status"]) != "COMPLETED":
            assert status in ("PENDING_UPLOAD", "QUEUED", "RUNNING"), (job_id, status)
            assert time.monotonic() < end, (job_id, status)
            time.sleep(0.2)
