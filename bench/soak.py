"""Soak: sustained mixed traffic (sync realtime, serverless spillover, async jobs) on the
local stack for --minutes; reports the rate held, latency percentiles, 5xx, memory growth
of every process and jobs lost.

    .venv/bin/python bench/soak.py --minutes 10            # search the highest rate held
    .venv/bin/python bench/soak.py --minutes 10 --rate 40  # or offer a chosen one

The load is open loop (each request due at its time, latency counted from then). The search
doubles the offered rate from --search-from in short probes until one fails (a 5xx, or sync
p99 over the 300 ms SLO), bisects three times, and soaks at 90% of the highest rate held.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergw.local import processes
from infergw.local.stack import EMULATOR_CREDENTIALS, LocalStack, StackConfig

ROW = [float(v % 16) for v in range(64)]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


SLO_MS = 300.0  # the digits policy's
THREADS = 64  # requests in flight at most: enough that the system, not this client, sets the rate


def offer(conn: Any, rate: float, seconds: float) -> tuple[list[tuple[str, int, float]], list[str]]:
    """The mix at ``rate`` requests/s for ``seconds``, open loop: request n is due at
    n / rate whatever the earlier ones are doing, and its latency counts from when it was
    due (a backlog shows as latency, not as a slower offer). Returns (kind, status, ms) per
    request and the async jobs accepted. 80% small sync, 10% 2,000-row batches (saturate
    realtime, spill to serverless), 10% async jobs."""
    results: list[tuple[str, int, float]] = []
    jobs: list[str] = []
    lock = threading.Lock()
    big = {"inputs": [ROW] * 2000}
    client = httpx.Client(
        base_url=conn.gateway_url,
        headers={"Authorization": f"Bearer {conn.api_key}"},
        timeout=30,
        limits=httpx.Limits(max_connections=THREADS, max_keepalive_connections=THREADS),
    )

    def one(kind: str, due: float) -> None:
        try:
            if kind == "async":
                r = client.post(
                    "/v1/models/digits/invocations",
                    json={"inputs": [ROW] * 10},
                    headers={"Prefer": "respond-async"},
                )
                if r.status_code == 202:
                    with lock:
                        jobs.append(r.json()["job_id"])
            else:
                body = big if kind == "big" else {"inputs": [ROW]}
                r = client.post("/v1/models/digits/invocations", json=body)
            status = r.status_code
        except httpx.HTTPError:
            status = 599
        with lock:
            results.append((kind, status, (time.monotonic() - due) * 1000))

    pool = ThreadPoolExecutor(THREADS)
    try:
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            due = start + n / rate
            time.sleep(max(0.0, due - time.monotonic()))
            kind = "async" if n % 10 == 0 else "big" if n % 10 == 5 else "sync"
            pool.submit(one, kind, due)
        pool.shutdown(wait=True)  # the backlog, if any, is answered and measured
    except BaseException:
        # Stopped (SIGTERM, Ctrl-C): drop what is queued, and end what is in flight by
        # closing the client under it, so that the stack can be stopped at once.
        pool.shutdown(wait=False, cancel_futures=True)
        client.close()
        raise
    client.close()
    return results, jobs


def sync_p(results: list[tuple[str, int, float]], q: float) -> float | None:
    sync = sorted(ms for kind, status, ms in results if kind == "sync" and status == 200)
    return round(sync[min(len(sync) - 1, int(len(sync) * q))], 1) if sync else None


def holds(results: list[tuple[str, int, float]]) -> bool:
    """Held: no 5xx and sync p99 (from when each request was due) inside the SLO."""
    p99 = sync_p(results, 0.99)
    return not any(status >= 500 for _, status, _ in results) and p99 is not None and p99 <= SLO_MS


def find_rate(conn: Any, start: float, probe_s: float, log: Any) -> tuple[float, list[dict]]:
    """The highest rate of a doubling-then-bisecting search that still holds."""
    probes: list[dict] = []

    def probe(rate: float) -> bool:
        results, _ = offer(conn, rate, probe_s)
        ok = holds(results)
        probes.append(
            {
                "rate": rate,
                "held": ok,
                "requests": len(results),
                "sync_p99_ms": sync_p(results, 0.99),
                "five_xx": sum(1 for _, status, _ in results if status >= 500),
            }
        )
        log(f"probe {rate:.0f}/s: {probes[-1]}")
        return ok

    good, bad = 0.0, None
    rate = start
    while bad is None:
        if probe(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
    if good == 0.0:
        return start, probes  # not even the first rate held: soak there and say so
    for _ in range(3):
        middle = (good + bad) / 2
        if probe(middle):
            good = middle
        else:
            bad = middle
    return good, probes


def drain(conn: Any, jobs: set[str], within_s: float) -> tuple[float, int]:
    """Wait for every accepted job to finish, reading the jobs table (one scan instead of a
    GET per job: thousands may be queued behind the emulator). Returns the seconds it took
    and how many never finished: the jobs lost."""
    table = boto3.client(
        "dynamodb",
        endpoint_url=conn.aws_endpoint_url,
        region_name=conn.region,
        **{k.lower(): v for k, v in EMULATOR_CREDENTIALS.items() if k.startswith("AWS_")},
    )
    started = time.monotonic()
    pending = set(jobs)
    while True:
        finished = set()
        for page in table.get_paginator("scan").paginate(
            TableName=conn.resources["INFERGW_JOBS_TABLE"],
            ProjectionExpression="job_id, #s",
            ExpressionAttributeNames={"#s": "status"},
        ):
            for item in page["Items"]:
                if item["status"]["S"] in ("COMPLETED", "FAILED"):
                    finished.add(item["job_id"]["S"])
        pending -= finished
        if not pending or time.monotonic() - started > within_s:
            return round(time.monotonic() - started, 1), len(pending)
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="requests/s offered (default: search)")
    parser.add_argument("--search-from", type=float, default=40.0)
    parser.add_argument("--probe-seconds", type=float, default=20.0)
    parser.add_argument(
        "--drain-minutes", type=float, default=10.0, help="for the accepted jobs to finish"
    )
    parser.add_argument("--json", default="bench/results/soak.json")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    config = StackConfig(
        state_dir=Path(tempfile.mkdtemp()),
        gateway_port=processes.free_port(),
        aws_port=processes.free_port(),
        endpoint_port=processes.free_port(),
        workers=2,
    )
    with LocalStack(config, report=lambda _: None) as stack:
        conn = stack.connection
        assert conn is not None
        probes: list[dict] = []
        rate = args.rate
        if rate is None:
            # Warm-up, not measured: first calls pay cold starts (serverless, caches, leases)
            # that would fail the first probe for reasons a soak is not about.
            offer(conn, args.search_from, args.probe_seconds)
            rate, probes = find_rate(conn, args.search_from, args.probe_seconds, log)
            # The soak runs a little below the edge the probes found: ten minutes at the
            # very edge measure the edge's noise, not the system.
            rate = round(0.9 * rate, 1)
            log(f"soaking at {rate}/s for {args.minutes} min ...")
        pids = {name: p.pid for name, p in stack._procs}
        for pid in tree(os.getpid()):
            pids.setdefault(f"pid-{pid}", pid)
        memory: dict[str, list[float]] = {name: [] for name in pids}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(30.0):
                for name, pid in pids.items():
                    memory[name].append(rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        start_rss = {name: rss_mb(pid) for name, pid in pids.items()}
        sampler.start()
        results, jobs = offer(conn, rate, args.minutes * 60)
        sampling.set()
        end_rss = {name: rss_mb(pid) for name, pid in pids.items()}
        drained_in, lost = drain(conn, set(jobs), args.drain_minutes * 60)
    seconds = args.minutes * 60
    grown = [k for k in start_rss if start_rss[k] and end_rss[k]]
    summary = {
        "minutes": args.minutes,
        "offered_rate": rate,
        "rate_search": probes,
        "held_rate": round(len(results) / seconds, 1),
        "held": holds(results),
        "requests": len(results),
        "statuses": dict(Counter(status for _, status, _ in results)),
        "five_xx": sum(1 for _, status, _ in results if status >= 500),
        "sync_p50_ms": sync_p(results, 0.5),
        "sync_p99_ms": sync_p(results, 0.99),
        "slo_ms": SLO_MS,
        "jobs": len(jobs),
        "jobs_lost": lost,
        "jobs_drained_in_s": drained_in,
        "rss_growth_mb": {k: round(end_rss[k] - start_rss[k], 1) for k in grown},
        # Growth over the second half only: warm-up (pools, caches) is over by then, so
        # what still grows there is a slope.
        "rss_growth_second_half_mb": {
            k: round(v[-1] - v[len(v) // 2], 1) for k, v in memory.items() if len(v) >= 4
        },
        "median_rss_growth_mb": round(
            statistics.median(end_rss[k] - start_rss[k] for k in grown), 1
        ),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the stack is stopped too
    main()
